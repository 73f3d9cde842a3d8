"""TensorBoard scalar event files, written without TensorFlow (the GPU image has none).

An event file is a TFRecord file: each record is the data's length (uint64, little-endian), the
masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data. The data are
serialized `tensorflow.Event` protos: first one with `file_version = "brain.Event:2"`, then one per
`write` holding wall_time, step and a Summary of scalar values. Only these fields are encoded, by
hand (numbers from TensorBoard's event.proto and summary.proto):

  Event:   wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5 (Summary),
           session_log = 7 (SessionLog)
  Summary: value = 1 (repeated Value)      Value: tag = 1 (string), simple_value = 2 (float)
  SessionLog: status = 1 (enum; START = 1), written when a run restarts from a checkpoint

TensorBoard reads every file named `*tfevents*` in a run directory.
"""

from __future__ import annotations

import math
import pathlib
import socket
import struct
import time
from typing import Mapping

_F32_MAX = 3.4028234663852886e38
_CRC_TABLE = []
for _n in range(256):
  _c = _n
  for _ in range(8):
    _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1  # CRC-32C (Castagnoli), reflected
  _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
  """CRC-32C of `data` (crc32c(b"123456789") == 0xE3069283)."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1  # int64 fields encode negatives as 10-byte two's complement
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _f32(value: float) -> float:
  """simple_value is a float32: finite values beyond its range become +-inf instead of failing."""
  return value if abs(value) <= _F32_MAX or value != value else math.copysign(math.inf, value)


def scalar_event(step: int, scalars: Mapping[str, float], wall_time: float) -> bytes:
  """A serialized Event with one simple_value per tag."""
  values = b"".join(
      _bytes_field(1, _bytes_field(1, tag.encode("utf-8")) + _varint(2 << 3 | 5) + struct.pack("<f", _f32(value)))
      for tag, value in scalars.items())
  return (_varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(int(step))
          + _bytes_field(5, values))


def session_start_event(step: int, wall_time: float) -> bytes:
  """A serialized Event with session_log = 7 {status = 1: START} at `step`: TensorBoard then drops
  the events it read before with step >= `step` (orphaned by a restart from an earlier checkpoint)."""
  return (_varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(int(step))
          + _bytes_field(7, _varint(1 << 3 | 0) + _varint(1)))


def version_event(wall_time: float) -> bytes:
  return _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _bytes_field(3, b"brain.Event:2")


def record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, data, the data's masked CRC."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


class EventFileWriter:
  """Appends scalar summaries to a new event file in `logdir` (one file per writer)."""

  def __init__(self, logdir: str | pathlib.Path):
    logdir = pathlib.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    self.path = logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.heal-jax"
    n = 0
    while self.path.exists():  # a second writer within the same second (a quick restart): its own file,
      n += 1                   # named to sort after the first
      self.path = logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.heal-jax.{n}"
    self._f = open(self.path, "ab")
    self._f.write(record(version_event(now)))
    self._f.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._f.write(record(scalar_event(step, {k: float(v) for k, v in scalars.items()}, time.time())))
    self._f.flush()

  def restart_at(self, step: int) -> None:
    """Marks a restart: events of earlier files or records with step >= `step` are orphaned."""
    self._f.write(record(session_start_event(step, time.time())))
    self._f.flush()

  def close(self) -> None:
    self._f.close()
