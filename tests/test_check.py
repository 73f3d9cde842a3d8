"""data check: exact line numbers and reasons on hand-made bad files; counts that reconcile."""

import gzip
import json
import sys

import pytest

from heal_jax.data import check

BAD_JSONL = b"\n".join([
    b'{"text": "a good document"}',   # 1 valid
    b'{"text": "unterminated"',       # 2 malformed JSON
    b"",                              # 3 blank, skipped
    b'{"txt": "wrong key"}',          # 4 missing field
    b'{"text": "   "}',               # 5 empty text
    b'{"text": "caf\xe9"}',           # 6 invalid UTF-8 (Latin-1 e-acute)
    b"[1, 2]",                        # 7 not an object
    b'{"text": 7}',                   # 8 not a string
    b'{"text": "\\ud800 lone"}',      # 9 lone surrogate escape
    b'{"text": "second good one"}',   # 10 valid
]) + b"\n"
BAD_JSONL_PROBLEMS = [
    {"line": 2, "reason": "malformed JSON: Expecting ',' delimiter (column 24)"},
    {"line": 4, "reason": "missing field text"},
    {"line": 5, "reason": "empty text in field text"},
    {"line": 6, "reason": "invalid UTF-8 (byte 0xe9 at column 14)"},
    {"line": 7, "reason": "expected a JSON object, got list"},
    {"line": 8, "reason": "field text is not a string (got int)"},
    {"line": 9, "reason": "invalid UTF-8 or a lone surrogate in field text"},
]


def test_jsonl_documents(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_bytes(BAD_JSONL)
  assert check.check_file(path, "document") == {
      "read": 9, "valid": 2, "invalid": 7, "problems": BAD_JSONL_PROBLEMS}
  records = [(n, r) for n, r, reason in check.iter_records(path, "document") if reason is None]
  assert records == [(1, {"text": "a good document"}), (10, {"text": "second good one"})]


def test_gzip_and_zstd_read_the_same(tmp_path):
  gz = tmp_path / "docs.jsonl.gz"
  gz.write_bytes(gzip.compress(BAD_JSONL))
  assert check.check_file(gz, "document")["problems"] == BAD_JSONL_PROBLEMS
  zstandard = pytest.importorskip("zstandard", reason="zstandard not installed")
  zst = tmp_path / "docs.jsonl.zst"
  zst.write_bytes(zstandard.ZstdCompressor().compress(BAD_JSONL))
  assert check.check_file(zst, "document")["problems"] == BAD_JSONL_PROBLEMS


def test_truncated_corrupt_or_foreign_zstd_is_a_file_error(tmp_path):
  """zstandard's stream_reader ends quietly where a cut file ends; the frames' layout is walked before
  reading, so a copy cut short is refused whole instead of read as a shorter corpus. Corrupt data
  inside a frame stops reading after the records before it. Two frames read as one file."""
  zstandard = pytest.importorskip("zstandard", reason="zstandard not installed")
  records = b"".join(b'{"text": "record %d of the corpus"}\n' % i for i in range(20000))
  frame = zstandard.ZstdCompressor().compress(records)
  second = zstandard.ZstdCompressor(write_checksum=True).compress(b'{"text": "last"}\n' * 3000)
  two = tmp_path / "two.jsonl.zst"
  two.write_bytes(frame + second)
  assert check.check_file(two, "document")["valid"] == 23000
  for cut in (len(frame) // 2, len(frame) - 1, len(frame) + 3):
    path = tmp_path / f"cut{cut}.jsonl.zst"
    path.write_bytes((frame + second)[:cut])
    with pytest.raises(check.FileError, match=r":1: corrupt or truncated compressed data .the file ends inside a "
                                              r"zstd frame. before the first record"):
      list(check.iter_records(path, "document"))
  corrupt = bytearray(frame + second)
  corrupt[len(frame) + len(second) // 2] ^= 0xFF  # inside the second frame's compressed block
  path = tmp_path / "corrupt.jsonl.zst"
  path.write_bytes(bytes(corrupt))
  read = []
  with pytest.raises(check.FileError, match=r"corrupt zstd data: .* after the record at line"):
    for n, _, _ in check.iter_records(path, "document"):
      read.append(n)
  assert read[:20000] == list(range(1, 20001))  # the first frame's records all came through
  foreign = tmp_path / "foreign.jsonl.zst"
  foreign.write_bytes(b'{"text": "not compressed"}\n')
  with pytest.raises(check.FileError, match=r"foreign.jsonl.zst:1: corrupt .*not zstd data.* before the first record"):
    check.check_file(foreign, "document")


def test_json_documents_and_pathological_lines(tmp_path):
  """A pretty-printed JSON document or a one-line array of objects is named as not JSON Lines (not one
  "malformed JSON" per line); a line nested past the stack or with an integer past Python's digit
  limit is one bad record, and the records around it are read."""
  pretty = tmp_path / "pretty.json"
  pretty.write_text(json.dumps({"1": {"text": "a"}}, indent=2))
  array = tmp_path / "array.json"
  array.write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
  for path in (pretty, array):
    with pytest.raises(check.FileError, match=f"{path}:1: this is .*not JSON Lines"):
      check.check_file(path, "document")
  odd = tmp_path / "odd.jsonl"
  odd.write_text('{"text": "one"}\n' + "[" * 100000 + "\n" + '{"text": "x", "n": ' + "9" * 5000 + "}\n"
                 + '[{"text": "an array line after the first is one bad record"}]\n{"text": "two"}\n')
  result = check.check_file(odd, "document")
  assert (result["read"], result["valid"], result["invalid"]) == (5, 2, 3)
  assert [p["line"] for p in result["problems"]] == [2, 3, 4]
  assert result["problems"][0]["reason"].startswith("malformed JSON: RecursionError")
  assert result["problems"][1]["reason"].startswith("malformed JSON: ValueError: Exceeds the limit")
  assert result["problems"][2]["reason"] == "expected a JSON object, got list"
  # A JSON Lines file whose first line alone looks like a document's start is one bad line, not refused.
  for first in ("{", '[{"text": "an array"}]'):
    lines = tmp_path / "lines.jsonl"
    lines.write_text(first + '\n{"text": "one"}\n{"text": "two"}\n')
    result = check.check_file(lines, "document")
    assert (result["read"], result["valid"], [p["line"] for p in result["problems"]]) == (3, 2, [1])


def test_zstd_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
  zst = tmp_path / "docs.jsonl.zst"
  zst.write_bytes(b"\x28\xb5\x2f\xfd")
  monkeypatch.setitem(sys.modules, "zstandard", None)  # makes `import zstandard` raise ImportError
  with pytest.raises(ImportError, match="needs the zstandard package"):
    check.check_file(zst, "document")


def test_conversation_field_map_and_instruction_explanations(tmp_path):
  path = tmp_path / "conv.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in [
      {"dialogue": "[doctor] hi\r\n[patient] hello", "note": "CC: none."},
      {"dialogue": "[doctor] hi"},
      {"note": "orphan"},
      {"dialogue": "", "note": "x"},
  ]) + "\n", encoding="utf-8")
  result = check.check_file(path, "conversation", fields={"conversation": "dialogue"})
  assert result == {"read": 4, "valid": 1, "invalid": 3, "problems": [
      {"line": 2, "reason": "missing field note"},
      {"line": 3, "reason": "missing field dialogue (for conversation)"},
      {"line": 4, "reason": "empty text in field dialogue (for conversation)"}]}
  first = next(check.iter_records(path, "conversation", "jsonl", {"conversation": "dialogue"}))
  assert first == (1, {"conversation": "[doctor] hi\n[patient] hello", "note": "CC: none."}, None)

  path = tmp_path / "inst.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in [
      {"prompt": "p", "response": "r"},
      {"prompt": "p", "response": "r", "explanation": "because"},
      {"prompt": "p", "response": "r", "explanation": " "},
      {"prompt": "p", "response": "r", "explanation": 3},
      {"prompt": "p"},
  ]), encoding="utf-8")
  got = list(check.iter_records(path, "instruction"))
  assert got == [
      (1, {"prompt": "p", "response": "r", "explanation": None}, None),
      (2, {"prompt": "p", "response": "r", "explanation": "because"}, None),
      (3, {"prompt": "p", "response": "r", "explanation": None}, None),
      (4, None, "field explanation is not a string (got int)"),
      (5, None, "missing field response")]


def test_csv_rows_spanning_lines(tmp_path):
  path = tmp_path / "notes.csv"
  path.write_bytes(b"".join([
      b"id,dialogue,note\n",                          # 1 header
      b'1,"[doctor] hi\n[patient] hello",fine\n',     # 2-3 valid
      b"2,[doctor] hi,\n",                            # 4 empty note
      b"3,only two\n",                                # 5 wrong column count
      b'4,"[doctor] caf\xe9",x\n',                    # 6 invalid UTF-8
      b"\n",                                          # 7 blank, skipped
      b'5,"multi\nline\ndialogue","note"\n',          # 8-10 valid
  ]))
  fields = {"conversation": "dialogue"}
  result = check.check_file(path, "conversation", fields=fields)
  assert result.pop("conversations_without_turns")["lines"] == [8]  # "multi\nline\ndialogue": no speaker
  assert result == {
      "read": 5, "valid": 2, "invalid": 3, "problems": [
          {"line": 4, "reason": "empty text in field note"},
          {"line": 5, "reason": "row has 2 columns, header has 3"},
          {"line": 6, "reason": "invalid UTF-8 or a lone surrogate in field dialogue (for conversation)"}]}
  valid = [(n, r) for n, r, _ in check.iter_records(path, "conversation", "csv", fields) if r]
  assert valid == [(2, {"conversation": "[doctor] hi\n[patient] hello", "note": "fine"}),
                   (8, {"conversation": "multi\nline\ndialogue", "note": "note"})]


# (file name, bytes, line, reason): problems with the file as a whole, which stop reading it.
FILE_ERRORS = [
    ("wrong.csv", b"id,transcript,summary\n1,a,b\n2,c,d\n", 1,
     "CSV missing columns: dialogue, note (header: id, transcript, summary)"),
    # A stray quote opens a field that would swallow the next rows: 5 data rows, not 3.
    ("stray.csv", b'dialogue,note\n"[doctor] a",n1\n"[doctor] stray quote,n2\nx,y\n"z",w\n"[doctor] r5",n5\n', 3,
     "malformed CSV in the record starting here: ',' expected after '\"'"),
    ("open.csv", b'dialogue,note\n"[doctor] a",n1\n"[doctor] never closed,n2\nx,y\n', 3,
     "malformed CSV in the record starting here: unexpected end of data"),
    ("cut.jsonl.gz", gzip.compress(b"".join(b'{"conversation": "[doctor] hi", "note": "n"}\n' for _ in range(3000)))[:-400],
     None, "corrupt or truncated compressed data"),
    ("plain.jsonl.gz", b'{"conversation": "[doctor] hi", "note": "n"}\n', 1, "corrupt or truncated compressed data"),
]


@pytest.mark.parametrize("name, data, line, reason", FILE_ERRORS)
def test_a_problem_with_the_whole_file_names_file_and_line(tmp_path, name, data, line, reason):
  path = tmp_path / name
  path.write_bytes(data)
  fields = {"conversation": "dialogue"} if name.endswith(".csv") else None
  with pytest.raises(check.FileError) as e:
    check.check_file(path, "conversation", fields=fields)
  assert str(e.value).startswith(f"{path}:") and reason in e.value.reason
  if line is not None:
    assert e.value.line == line
  else:  # Truncated: the lines before the damage are read, then the error names where it starts.
    read = [n for n, _, _ in _records_until_error(path)]
    assert read and e.value.line == read[-1] + 1 and e.value.reason.endswith(f"after the record at line {read[-1]}")


def _records_until_error(path):
  out = []
  try:
    for item in check.iter_records(path, "conversation"):
      out.append(item)
  except check.FileError:
    pass
  return out


def test_csv_fields_longer_than_the_csv_module_default(tmp_path):
  path = tmp_path / "long.csv"
  long = "[doctor] " + "word " * 40_000  # 200 KB, past csv's default 128 KiB field limit
  path.write_text(f'dialogue,note\n"{long}",n\n', encoding="utf-8")
  ((line, record, reason),) = check.iter_records(path, "conversation", fields={"conversation": "dialogue"})
  assert (line, reason, record["conversation"]) == (2, None, long)


def test_text_is_one_document_per_line(tmp_path):
  path = tmp_path / "docs.txt"
  path.write_bytes(b"first document\r\n\nsecond \xff\xfe\n   \nthird\n")
  assert list(check.iter_records(path, "document")) == [
      (1, {"text": "first document"}, None),
      (3, None, "invalid UTF-8 (byte 0xff at column 8)"),
      (5, {"text": "third"}, None)]
  with pytest.raises(ValueError, match="one document a line"):
    check.check_file(path, "conversation")


def test_problems_are_capped_but_counts_are_not(tmp_path):
  path = tmp_path / "many.jsonl"
  path.write_text('{"text": ""}\n' * 150 + '{"text": "ok"}\n', encoding="utf-8")
  result = check.check_file(path, "document")
  assert (result["read"], result["valid"], result["invalid"]) == (151, 1, 150)
  assert len(result["problems"]) == check.MAX_PROBLEMS
  assert result["problems"][-1] == {"line": 100, "reason": "empty text in field text"}


def test_format_detection_and_bad_options(tmp_path):
  assert [check.detect_format(n) for n in ("a.jsonl", "a.JSON.gz", "b.txt.zst", "c.csv")] == [
      "jsonl", "jsonl", "text", "csv"]
  with pytest.raises(ValueError, match="cannot tell the format"):
    check.detect_format("data.parquet")
  assert check.parse_fields("conversation=dialogue, note=note") == {
      "conversation": "dialogue", "note": "note"}
  with pytest.raises(ValueError, match="OURS=THEIRS"):
    check.parse_fields("conversation")
  path = tmp_path / "a.jsonl"
  path.write_text('{"text": "x"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match="not fields of kind"):
    check.check_file(path, "document", fields={"dialogue": "text"})


def test_main_prints_json_and_returns_exit_codes(tmp_path, capsys):
  good, bad, empty = tmp_path / "good.jsonl", tmp_path / "bad.jsonl", tmp_path / "empty.jsonl"
  good.write_text('{"prompt": "p", "response": "r"}\n', encoding="utf-8")
  bad.write_text('{"prompt": "p"}\n', encoding="utf-8")
  empty.write_text("", encoding="utf-8")
  assert check.main([str(good), "--kind", "instruction"]) == 0
  assert json.loads(capsys.readouterr().out) == {"read": 1, "valid": 1, "invalid": 0, "problems": []}
  assert check.main([str(bad), "--kind", "instruction", "--format", "jsonl"]) == 1
  assert json.loads(capsys.readouterr().out)["problems"] == [
      {"line": 1, "reason": "missing field response"}]
  assert check.main([str(empty), "--kind", "document"]) == 1
  assert capsys.readouterr().err == f"error: {empty}: no records (the file is empty or holds only blank lines)\n"
  assert check.main([str(tmp_path / "missing.jsonl"), "--kind", "document"]) == 2
  assert capsys.readouterr().err == f"error: {tmp_path / 'missing.jsonl'}: no such file\n"
  assert check.main([str(tmp_path), "--kind", "document"]) == 2  # used to be "cannot tell the format"
  assert capsys.readouterr().err == f"error: {tmp_path}: a directory, not a file (give its files, e.g. {tmp_path}/*.jsonl)\n"


def test_several_files_are_each_checked_and_summed(tmp_path, capsys):
  """A shell glob over a source's shards: every file is reported, a missing one among them does not
  stop the others, and the sums are over the files read (1 + 2 records, 1 invalid)."""
  a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  a.write_text('{"text": "one"}\n', encoding="utf-8")
  b.write_text('{"text": "two"}\n{"txt": "wrong key"}\n', encoding="utf-8")
  assert check.main([str(a), str(b), "--kind", "document"]) == 1
  out = json.loads(capsys.readouterr().out)
  assert out["files"][str(b)]["problems"] == [{"line": 2, "reason": "missing field text"}]
  assert (out["read"], out["valid"], out["invalid"], out["unreadable"]) == (3, 2, 1, [])
  missing = tmp_path / "missing.jsonl"
  assert check.main([str(missing), str(a), "--kind", "document"]) == 2
  captured = capsys.readouterr()
  out = json.loads(captured.out)
  assert out["unreadable"] == [str(missing)] and "missing.jsonl" in out["files"][str(missing)]["error"]
  assert (out["read"], out["valid"], out["invalid"]) == (1, 1, 0)
  assert captured.err.startswith("error: ") and "missing.jsonl" in captured.err
  assert check.main([str(a), str(a), "--kind", "document"]) == 0


def test_aci_bench_train_csv(shared_data, capsys):
  path = shared_data / "aci-bench" / "challenge_data" / "train.csv"
  if not path.is_file():
    pytest.skip(f"ACI-Bench train split not found at {path}")
  argv = [str(path), "--kind", "conversation", "--format", "csv",
          "--fields", "conversation=dialogue,note=note"]
  assert check.main(argv) == 0
  assert json.loads(capsys.readouterr().out) == {"read": 67, "valid": 67, "invalid": 0, "problems": []}


def test_problems_past_the_cap_are_counted_and_bad_fields_are_explained(tmp_path, capsys):
  path = tmp_path / "many.jsonl"
  path.write_text('{"txt": "wrong key"}\n' * (check.MAX_PROBLEMS + 7))
  result = check.check_file(path, "document")
  assert (result["invalid"], len(result["problems"]), result["problems_not_listed"]) == (
      check.MAX_PROBLEMS + 7, check.MAX_PROBLEMS, 7)
  with pytest.raises(SystemExit):
    check.main([str(path), "--kind", "document", "--fields", "bogus"])
  assert "bad field mapping 'bogus': expected OURS=THEIRS" in capsys.readouterr().err


def test_conversations_without_recognised_turns_are_reported(tmp_path, capsys):
  """`DR:`/`PT:` labels are not speaker turns (only [speaker], Doctor:, Patient:, Guest_*: are: a lab
  line such as 'PT: 12.1 s' must stay text): such records are valid but reported, since training
  shows them as written and generate refuses them."""
  path = tmp_path / "c.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in (
      {"conversation": "[doctor] hello\n[patient] cough", "note": "n"},
      {"conversation": "DR: hello\nPT: cough", "note": "n"},
      {"conversation": "Doctor: hi\nPatient: fever\nBP: 120/80", "note": "n"},
      {"conversation": "just text", "note": "n"})) + "\n", encoding="utf-8")
  result = check.check_file(path, "conversation")
  assert (result["read"], result["valid"], result["invalid"]) == (4, 4, 0)
  assert result["conversations_without_turns"]["count"] == 2
  assert result["conversations_without_turns"]["lines"] == [2, 4]
  assert check.main([str(path), "--kind", "conversation"]) == 0
  assert json.loads(capsys.readouterr().out)["conversations_without_turns"]["count"] == 2


@pytest.mark.parametrize("first_line, message", [
    ('{"text": "Mrs Jones, 54, reports chest pain since Monday, worse on exertion"}', "the first line is JSON"),
    ("Patient reports chest pain since Monday, worse on exertion, no fever, took aspirin this morning",
     "the first line does not look like a CSV header"),
    ("Patient chest pain since Monday;Jones", "(semicolon-separated? this reader takes commas)"),
])
def test_a_file_that_is_not_csv_is_named_without_its_text(tmp_path, first_line, message):
  """Read as CSV, a JSON or text file's first line is no header: the error gives its shape, never its
  words (an error message goes to logs, and data here is patient text)."""
  path = tmp_path / "notes.csv"
  path.write_text(first_line + "\n")
  with pytest.raises(check.FileError) as e:
    list(check.iter_records(path, "document"))
  assert message in str(e.value) and f"{path}:1" in str(e.value)
  assert not any(word in str(e.value) for word in ("Jones", "chest", "Monday", "aspirin"))


def test_a_real_header_with_punctuation_is_listed(tmp_path):
  path = tmp_path / "notes.csv"
  path.write_text("ID, Patient's Age (years), Visit date: first?, [Dept] & Unit, % Dose\n1,2,3,4,5\n")
  with pytest.raises(check.FileError, match=r"CSV missing columns: text \(header: ID,  Patient's Age \(years\), "
                     r" Visit date: first\?,  \[Dept\] & Unit,  % Dose\)"):
    list(check.iter_records(path, "document"))


def test_a_null_field_is_named_null_not_missing(tmp_path):
  path = tmp_path / "conv.jsonl"
  path.write_text('{"conversation": null, "note": "n"}\n{"note": "n"}\n')
  assert check.check_file(path, "conversation")["problems"] == [
      {"line": 1, "reason": "field conversation is null"}, {"line": 2, "reason": "missing field conversation"}]


@pytest.mark.parametrize("line,column", [
    ('{"id": "c", "text": "x"\n', 24),    # cut short: the ',' or '}' is wanted after its 23 characters
    ('{"id": "c", "text": "x"\r\n', 24),  # not column 1 of a next line, as the terminator made it
    ('{"id": 1,, "x": 2}', 10),           # the second comma
])
def test_a_malformed_json_line_names_the_column_on_that_line(line, column):
  value, reason = check.parse_json(line)
  assert value is None and reason.endswith(f"(column {column})"), reason
