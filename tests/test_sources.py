"""sources: config validation naming data.sources keys; every format; bad records by FILE:LINE or counted."""

import gzip
import json

import ml_collections
import numpy as np
import pytest

from heal_jax import config as config_lib
from heal_jax.data import examples, sources

DataError = sources.DataError


def _cfg(**entries):
  cfg = ml_collections.ConfigDict()
  for name, args in entries.items():
    cfg[name] = config_lib.source_config(*args[:3], **args[3] if len(args) > 3 else {})
  return cfg


def _jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return path


def test_from_config_resolves_workdir_sorts_and_lists_files(tmp_path):
  (tmp_path / "b").mkdir()
  for name in ("2.jsonl", "1.jsonl.gz"):
    (tmp_path / "b" / name).write_bytes(b"")
  _jsonl(tmp_path / "a.jsonl", [{"conversation": "c", "note": "n"}])
  cfg = _cfg(zed=("{workdir}/b/*.jsonl,{workdir}/b/*.gz", "document", 2.0),
             alpha=("{workdir}/a.jsonl", "conversation", 0.5, dict(fields="note=note")))
  srcs = sources.from_config(cfg, workdir=str(tmp_path))
  assert [s.name for s in srcs] == ["alpha", "zed"]
  assert srcs[0] == sources.Source("alpha", (f"{tmp_path}/a.jsonl",), "conversation", 0.5, "", {"note": "note"})
  assert sources.files(srcs[1]) == [tmp_path / "b" / "1.jsonl.gz", tmp_path / "b" / "2.jsonl"]


def test_file_names_with_glob_characters_or_commas_are_taken_as_they_are(tmp_path):
  """An existing file is named by itself even when its name would glob to nothing ("[2024]" is a
  character class) or split at its comma; a directory is refused with a glob to give instead."""
  for name in ("export [2024].jsonl", "notes,v2.jsonl", "plain.jsonl"):
    _jsonl(tmp_path / name, [{"text": "x"}])
  cfg = _cfg(a=("{workdir}/export [2024].jsonl, {workdir}/plain.jsonl", "document", 1.0),
             b=("{workdir}/notes,v2.jsonl", "document", 1.0))
  a, b = sources.from_config(cfg, workdir=str(tmp_path))
  assert sources.files(a) == [tmp_path / "export [2024].jsonl", tmp_path / "plain.jsonl"]
  assert sources.files(b) == [tmp_path / "notes,v2.jsonl"]
  with pytest.raises(DataError, match=rf"data.sources.d.paths: '{tmp_path}' matches no file \(a directory: give a "
                                      rf"glob such as {tmp_path}/\*.jsonl\)"):
    sources.from_config(_cfg(d=(str(tmp_path), "document", 1.0)))


@pytest.mark.parametrize("entries, key, message", [
    ({}, "data.sources", "no sources"),
    ({"x": ("{workdir}/a.jsonl", "essay", 1.0)}, "data.sources.x.kind", "unknown kind 'essay'"),
    ({"x": ("{workdir}/a.jsonl", "document", 0.0)}, "data.sources.x.weight", "zero-weight source"),
    ({"x": ("{workdir}/a.jsonl", "document", -1.0)}, "data.sources.x.weight", "positive"),
    ({"x": ("{workdir}/a.jsonl", "document", 1.0, dict(format="parquet"))}, "data.sources.x.format",
     "unknown format 'parquet'"),
    ({"x": ("{workdir}/nope/*.jsonl", "document", 1.0)}, "data.sources.x.paths", "matches no file"),
    ({"x": ("{workdir}/a.jsonl", "document", 1.0, dict(fields="note=body"))}, "data.sources.x.fields",
     "not fields of kind 'document'"),
    ({"x": ("{workdir}/a.jsonl", "document", 1.0, dict(fields="oops"))}, "data.sources.x.fields", "OURS=THEIRS"),
    ({"x": ("{workdir}/a.parquet", "document", 1.0)}, "data.sources.x.format", "cannot tell the format"),
    ({"x": ("{workdir}/a.txt", "conversation", 1.0)}, "data.sources.x.format", "text file"),
    ({"x": ("c4/en:train@{workdir}", "document", 1.0, dict(format="tfds"))}, "data.sources.x.paths",
     "no TFDS dataset 'c4/en'"),
])
def test_config_errors_name_the_key(tmp_path, entries, key, message):
  for name in ("a.jsonl", "a.parquet", "a.txt"):
    (tmp_path / name).write_text('{"text": "x"}\n', encoding="utf-8")
  with pytest.raises(DataError, match=message) as e:
    sources.from_config(_cfg(**entries), workdir=str(tmp_path))
  assert str(e.value).startswith(key + ":") or str(e.value).startswith(key + " ")


def test_workdir_needed():
  with pytest.raises(DataError, match=r"data.sources.x.paths=.*uses \{workdir\} but no work directory was given"):
    sources.from_config(_cfg(x=("{workdir}/a.jsonl", "document", 1.0)))


# (file name, bytes, kind, fields, line of the bad record, reason)
BAD_INPUTS = [
    ("a.jsonl", b'{"text": "good one"}\n{"text": "unterminated"\n{"text": "good two"}\n', "document", "", 2,
     "malformed JSON"),
    ("a.jsonl", b'{"text": "good one"}\n\n{"txt": "x"}\n{"text": "good two"}\n', "document", "", 3,
     "missing field text"),
    ("a.jsonl", b'{"text": "good one"}\n{"text": "  "}\n{"text": "good two"}\n', "document", "", 2,
     "empty text in field text"),
    ("a.txt", b"good one\ncaf\xe9 au lait\ngood two\n", "document", "", 2, "invalid UTF-8"),
    ("a.csv", b'dialogue,note\n"[doctor] hi\n[patient] hello",fine\nonly one column\n"[doctor] bye",ok\n',
     "conversation", "conversation=dialogue", 4, "row has 1 columns, header has 2"),
]


@pytest.mark.parametrize("name, data, kind, fields, line, reason", BAD_INPUTS)
def test_bad_records_raise_or_are_counted(tmp_path, name, data, kind, fields, line, reason):
  path = tmp_path / name
  path.write_bytes(data)
  (src,) = sources.from_config(_cfg(s=(str(path), kind, 1.0, dict(fields=fields))))
  with pytest.raises(DataError, match=f"^{path}:{line}: {reason}"):
    sources.load_texts(src, "raise")
  skipped = []
  pairs, counts = sources.load_texts(src, "skip", skipped)
  assert counts["invalid"] == 1 and counts["read"] == len(pairs) + 1 and len(pairs) == 2
  assert len(skipped) == 1 and skipped[0]["where"] == f"{path}:{line}" and skipped[0]["reason"].startswith(reason)


@pytest.mark.parametrize("name, data, line, reason", [
    ("a.csv", b"dialog,note\nx,y\n", 1, "CSV missing columns: dialogue"),
    ("a.csv", b'dialogue,note\n"[doctor] a",n1\n"[doctor] stray,n2\nx,y\n"z",w\n', 3, "malformed CSV"),
    ("a.jsonl.gz", b'{"conversation": "[doctor] a", "dialogue": "x", "note": "n"}\n', 1, "corrupt or truncated"),
])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_problem_with_the_whole_file_is_never_skipped(tmp_path, name, data, line, reason, on_error):
  path = tmp_path / name
  path.write_bytes(data)
  (src,) = sources.from_config(_cfg(s=(str(path), "conversation", 1.0, dict(fields="conversation=dialogue"))))
  with pytest.raises(DataError, match=f"^{path}:{line}: {reason}.*source s; a problem with the whole file"):
    sources.load_texts(src, on_error)


def test_unknown_on_error(tmp_path):
  (src,) = sources.from_config(_cfg(s=(str(_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])), "document", 1.0)))
  with pytest.raises(DataError, match="data.on_error"):
    sources.load_texts(src, "ignore")


def test_texts_of_every_kind_and_gzip(tmp_path):
  inst = {"prompt": "Name a drug.", "response": "Aspirin.", "explanation": ""}
  conv = {"dialogue": "[doctor] hi\n[patient] cough", "note": "CHIEF COMPLAINT\n\nCough."}
  with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
    f.write(json.dumps({"text": "doc one"}) + "\n")
  _jsonl(tmp_path / "i.jsonl", [inst])
  _jsonl(tmp_path / "c.jsonl", [conv])
  cfg = _cfg(d=(f"{tmp_path}/d.jsonl.gz", "document", 1.0), i=(f"{tmp_path}/i.jsonl", "instruction", 1.0),
             c=(f"{tmp_path}/c.jsonl", "conversation", 1.0, dict(fields="conversation=dialogue")))
  got = {s.name: sources.load_texts(s, "raise") for s in sources.from_config(cfg)}
  assert got["d"] == ([("", "doc one")], {"read": 1, "invalid": 0, "duplicates_exact": 0, "duplicates_near": 0})
  assert got["i"][0] == [examples.texts({**inst, "explanation": None}, "instruction")]
  assert got["c"][0] == [examples.texts({"conversation": conv["dialogue"], "note": conv["note"]}, "conversation")]


def test_arrayrecord_json_records(tmp_path):
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  path = tmp_path / "part.array_record-00000-of-00001"
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for raw in (b'{"text": "first"}', b'{"text": ', b'\xff\xfe', b'{"text": "second"}', b"[" * 100000,
              b'{"text": "x", "n": ' + b"9" * 5000 + b"}"):
    writer.write(raw)
  writer.close()
  (src,) = sources.from_config(_cfg(a=(str(tmp_path / "*.array_record*"), "document", 1.0)))
  with pytest.raises(DataError, match=f"^{path}:2: malformed JSON"):
    sources.load_texts(src, "raise")
  pairs, counts = sources.load_texts(src, "skip")  # nesting past the stack, a 5000-digit number: bad records
  assert pairs == [("", "first"), ("", "second")] and counts == {"read": 6, "invalid": 4, "duplicates_exact": 0,
                                                                 "duplicates_near": 0}


def test_tfds_dataset_on_disk(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class TinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.2.0")
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text(), "id": np.int32}), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(["alpha doc", "beta doc"]),
              "test": self._generate_examples(["gamma doc", " "])}

    def _generate_examples(self, items):
      for i, text in enumerate(items):
        yield i, {"text": text, "id": i}

  TinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare(
      download_dir=str(tmp_path / "dl"))
  cfg = _cfg(t=(f"tiny_text@{tmp_path}", "document", 1.0, dict(format="tfds")),
             u=(f"tiny_text:test@{tmp_path}", "document", 1.0, dict(format="tfds")))
  t, u = sources.from_config(cfg)
  assert sources.files(t) == [tmp_path / "tiny_text" / "1.2.0"]
  assert sources.load_texts(t, "raise") == ([("", "alpha doc"), ("", "beta doc")],
                                            {"read": 2, "invalid": 0, "duplicates_exact": 0, "duplicates_near": 0})
  with pytest.raises(DataError, match=r"\[test\]#1: empty text in field text"):
    sources.load_texts(u, "raise")
  assert sources.load_texts(u, "skip") == ([("", "gamma doc")],
                                           {"read": 2, "invalid": 1, "duplicates_exact": 0, "duplicates_near": 0})


@pytest.mark.parametrize("paths", ["", " , ", "\t\n"])
def test_empty_paths_are_named_with_the_flag_to_give(paths):
  cfg = ml_collections.ConfigDict({"notes": dict(paths=paths, kind="document", weight=1.0, format="", fields="")})
  with pytest.raises(sources.DataError, match=r"data.sources.notes.paths is empty: .*--config.data.sources.notes.paths="):
    sources.from_config(cfg, require_files=False)
