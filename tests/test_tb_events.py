"""train/tb_events: event files decoded by the protobuf runtime from TensorBoard's message definitions."""

import struct

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from heal_jax.train import metrics, tb_events


def _event_class():
  """tensorflow.Event / Summary built from their .proto field definitions (TensorBoard's numbers)."""
  f = descriptor_pb2.FileDescriptorProto(name="event_for_test.proto", package="tensorflow", syntax="proto3")
  T = descriptor_pb2.FieldDescriptorProto  # pylint: disable=invalid-name
  summary = f.message_type.add(name="Summary")
  value = summary.nested_type.add(name="Value")
  value.field.add(name="tag", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
  value.field.add(name="simple_value", number=2, type=T.TYPE_FLOAT, label=T.LABEL_OPTIONAL)
  summary.field.add(name="value", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                    type_name=".tensorflow.Summary.Value")
  event = f.message_type.add(name="Event")
  event.field.add(name="wall_time", number=1, type=T.TYPE_DOUBLE, label=T.LABEL_OPTIONAL)
  event.field.add(name="step", number=2, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
  event.field.add(name="file_version", number=3, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
  event.field.add(name="summary", number=5, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                  type_name=".tensorflow.Summary")
  session_log = f.message_type.add(name="SessionLog")
  session_log.field.add(name="status", number=1, type=T.TYPE_INT32, label=T.LABEL_OPTIONAL)  # enum on the wire
  event.field.add(name="session_log", number=7, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                  type_name=".tensorflow.SessionLog")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Event"))


def _tfrecord_masked_crc(data: bytes) -> int:
  """TFRecord's masked CRC (tensorflow/core/lib/hash/crc32c.h: rotate right by 15, add 0xa282ead8)
  over the CRC-32C that test_crc32c_known_vectors checks."""
  crc = tb_events.crc32c(data)
  return ((crc >> 15 | crc << 17) + 0xa282ead8) & 0xffffffff


def _records(path):
  data = path.read_bytes()
  out, pos = [], 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    body = data[pos + 12:pos + 12 + n]
    (body_crc,) = struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])
    assert len_crc == _tfrecord_masked_crc(data[pos:pos + 8])
    assert body_crc == _tfrecord_masked_crc(body)
    out.append(body)
    pos += 16 + n
  return out


def test_crc32c_known_vectors():
  assert tb_events.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
  assert tb_events.crc32c(b"") == 0
  assert tb_events.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def test_metric_writer_event_file_decodes_to_the_scalars_written(tmp_path):
  writer = metrics.MetricWriter(tmp_path)
  writer.write(3, {"loss": 2.5, "lr": 1e-4})
  writer.write(2**40, {"loss/clinical": -0.125}, kind="eval")
  writer.close()
  (path,) = (tmp_path / "tensorboard").glob("*tfevents*")
  event_cls = _event_class()
  events = [event_cls.FromString(r) for r in _records(path)]
  assert events[0].file_version == "brain.Event:2"
  assert [e.step for e in events[1:]] == [3, 2**40]
  got = [{v.tag: v.simple_value for v in e.summary.value} for e in events[1:]]
  assert got[0]["train/loss"] == 2.5 and got[0]["train/lr"] == pytest.approx(1e-4, rel=1e-7)  # float32
  assert got[1] == {"eval/loss/clinical": -0.125}
  assert all(e.wall_time > 1.7e9 for e in events)


def test_negative_step_and_unicode_tag_round_trip(tmp_path):
  w = tb_events.EventFileWriter(tmp_path)
  w.write_scalars(-1, {"héal/é": np.float32(3.0)})
  w.write_scalars(2, {"ppl": 1e39, "nll": float("nan"), "low": -1e39})  # beyond float32: +-inf, not a crash
  w.close()
  records = _records(w.path)
  event = _event_class().FromString(records[1])
  assert event.step == -1 and event.summary.value[0].tag == "héal/é" and event.summary.value[0].simple_value == 3.0
  values = {v.tag: v.simple_value for v in _event_class().FromString(records[2]).summary.value}
  assert values["ppl"] == np.inf and values["low"] == -np.inf and np.isnan(values["nll"])


def test_a_half_written_metrics_row_is_dropped_on_resume(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  writer = metrics.MetricWriter(tmp_path)
  writer.write(1, {"loss": 2.0})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 2, "kind": "tra')  # a run killed inside a write
  writer = metrics.MetricWriter(tmp_path)  # as a resumed run opens it
  writer.write(2, {"loss": 1.5})
  writer.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 2.0), (2, 1.5)]


def test_a_restart_drops_the_rows_and_events_of_the_attempt_it_replaces(tmp_path):
  """A run killed after step 6's checkpoint but at step 9 left rows 7-9, which a resume from 6 trains
  again: they are dropped from metrics.jsonl (the report counted them, giving a dead attempt's final
  loss), and TensorBoard gets SessionLog START at step 7, on which it drops events at steps >= 7."""
  import json  # pylint: disable=import-outside-toplevel
  writer = metrics.MetricWriter(tmp_path)
  for step in range(1, 10):
    writer.write(step, {"loss": 10.0 - step})
  writer.write(6, {"loss/general": 3.0}, kind="eval")
  writer.close()
  writer = metrics.MetricWriter(tmp_path)  # the resumed run, from the checkpoint of step 6
  writer.restart_at(6)
  writer.write(7, {"loss": 0.5, "grad_norm": float("nan")})  # strict JSON: NaN is written as null
  writer.close()
  text = (tmp_path / "metrics.jsonl").read_text()
  rows = [json.loads(line) for line in text.splitlines()]
  assert [(r["step"], r["kind"]) for r in rows] == [(s, "train") for s in range(1, 7)] + [(6, "eval"), (7, "train")]
  assert rows[-1]["loss"] == 0.5 and rows[-1]["grad_norm"] is None and "NaN" not in text
  second = sorted((tmp_path / "tensorboard").glob("*tfevents*"))[-1]
  events = [_event_class().FromString(r) for r in _records(second)]
  starts = [e for e in events if e.HasField("session_log")]
  assert [(e.step, e.session_log.status) for e in starts] == [(7, 1)]  # START = 1
  assert events.index(starts[0]) < events.index(next(e for e in events if e.HasField("summary")))
