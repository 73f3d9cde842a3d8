"""`heal-jax data check`: read a raw file the way preparation does, write nothing, report what is wrong.

Formats (from the suffix unless given; `.gz` and `.zst` compression for all three, `.zst` needs the
`zstandard` package):
  jsonl  one JSON object a line (`.jsonl`, `.json`, `.ndjson`); blank lines are skipped.
  text   one document a line (`.txt`); blank lines are skipped; documents only.
  csv    a header row, then one record a row (`.csv`); quoted fields may span lines, and a record's
         line number is the physical line it starts on (the header is line 1).
Record kinds and their fields: document {text}; conversation {conversation, note}; instruction
{prompt, response, explanation (optional)}. A field map {"conversation": "dialogue"} reads our field
`conversation` from the file's field or column `dialogue`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping, Sequence
import csv
import gzip
import io
import json
import os
import pathlib
import re
import sys
from typing import Any, BinaryIO
import zlib

from heal_jax.data import templates

KIND_FIELDS = {  # kind: (required fields, optional fields)
    "document": (("text",), ()),
    "conversation": (("conversation", "note"), ()),
    "instruction": (("prompt", "response"), ("explanation",)),
}
FORMATS = ("jsonl", "text", "csv")
MAX_PROBLEMS = 100
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".txt": "text", ".text": "text",
                   ".csv": "csv"}
_SURROGATE = re.compile("[\ud800-\udfff]")

Record = dict[str, str | None]


class FileError(ValueError):
  """A problem with a file as a whole, which stops reading it: a CSV header without the needed
  columns, a CSV quote that swallows the rows after it, corrupt or truncated compressed data, a JSON
  document where JSON Lines belong. The
  records after it cannot be delimited, so it is never skipped and counted like a bad record."""

  def __init__(self, path: str | os.PathLike, line: int, reason: str):
    super().__init__(f"{path}:{line}: {reason}")
    self.path, self.line, self.reason = path, line, reason


def detect_format(path: str | os.PathLike) -> str:
  """"jsonl", "text" or "csv" from the file name, looking through a .gz/.zst suffix."""
  suffixes = [s.lower() for s in pathlib.Path(path).suffixes]
  if suffixes and suffixes[-1] in (".gz", ".zst"):
    suffixes = suffixes[:-1]
  if not suffixes or suffixes[-1] not in _SUFFIX_FORMATS:
    raise ValueError(f"{path}: cannot tell the format from the name; give one of {', '.join(FORMATS)}")
  return _SUFFIX_FORMATS[suffixes[-1]]


def open_binary(path: str | os.PathLike) -> BinaryIO:
  """The file's bytes, decompressed for `.gz` and `.zst` names."""
  path = pathlib.Path(path)
  if path.suffix.lower() == ".gz":
    return gzip.open(path, "rb")
  if path.suffix.lower() == ".zst":
    try:
      import zstandard  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"{path}: reading .zst files needs the zstandard package "
                        "(pip install zstandard)") from e
    return io.BufferedReader(_ZstdReader(path, zstandard))
  return open(path, "rb")


class _ZstdReader(io.RawIOBase):
  """A .zst file's decompressed bytes, frame after frame, in bounded pieces (zstandard's
  stream_reader). That reader ends quietly where a cut file ends, as if the file were whole, so the
  frames' layout is walked first (`check_zstd_frames`); and its ZstdError (corrupt data) is neither
  an OSError nor a ValueError: both come out as EOFError, which `iter_records` names with the line."""

  def __init__(self, path: pathlib.Path, zstandard):
    super().__init__()
    self._file = open(path, "rb")  # pylint: disable=consider-using-with  # closed by close()
    self._zstd = zstandard
    try:
      check_zstd_frames(self._file)
    except EOFError:
      self._file.close()
      raise
    self._file.seek(0)
    self._reader = zstandard.ZstdDecompressor().stream_reader(self._file, read_across_frames=True, closefd=False)

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    try:
      return self._reader.readinto(buffer)
    except self._zstd.ZstdError as e:
      raise EOFError(f"corrupt zstd data: {e}") from None

  def close(self) -> None:
    if not self.closed:
      self._reader.close()
      self._file.close()
    super().close()


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = range(0x184D2A50, 0x184D2A60)


def check_zstd_frames(f: BinaryIO) -> None:
  """Walks the zstd frames of an open file (headers only: 3 bytes a block of at most 128 KiB) and
  raises EOFError where the file ends inside a frame or bytes are not a frame. RFC 8878 section 3.1."""
  size = os.fstat(f.fileno()).st_size
  pos = 0

  def read(at: int, n: int) -> bytes:
    f.seek(at)
    data = f.read(n)
    if len(data) < n:
      raise EOFError("the file ends inside a zstd frame")
    return data

  while pos < size:
    magic = int.from_bytes(read(pos, 4), "little")
    if magic in _ZSTD_SKIPPABLE:
      pos += 8 + int.from_bytes(read(pos + 4, 4), "little")
    elif magic == _ZSTD_MAGIC:
      descriptor = read(pos + 4, 1)[0]
      single_segment = (descriptor >> 5) & 1
      pos += 5 + (1 - single_segment) + (0, 1, 2, 4)[descriptor & 3] + (single_segment, 2, 4, 8)[descriptor >> 6]
      last = False
      while not last:
        header = int.from_bytes(read(pos, 3), "little")
        last, kind = bool(header & 1), (header >> 1) & 3
        if kind == 3:
          raise EOFError(f"corrupt zstd data: reserved block type at byte {pos}")
        pos += 3 + (1 if kind == 1 else header >> 3)  # an RLE block stores one byte
      pos += 4 * ((descriptor >> 2) & 1)  # content checksum
    else:
      raise EOFError("not zstd data" if pos == 0 else f"corrupt zstd data: no frame starts at byte {pos}")
    if pos > size:
      raise EOFError("the file ends inside a zstd frame")


def parse_pairs(spec: str, what: str = "item", expected: str = "name=value") -> dict[str, str]:
  """"a=x, b=y" -> {"a": "x", "b": "y"}: the comma-separated name=value lists of configs and flags."""
  pairs = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
      raise ValueError(f"bad {what} {item!r}: expected {expected}")
    if name.strip() in pairs:
      raise ValueError(f"{name.strip()!r} is given twice")
    pairs[name.strip()] = value.strip()
  return pairs


def parse_fields(spec: str) -> dict[str, str]:
  """"conversation=dialogue,note=note" -> {"conversation": "dialogue", "note": "note"}."""
  return parse_pairs(spec, "field mapping", "OURS=THEIRS")


def _columns(kind: str, fields: Mapping[str, str] | None) -> dict[str, str]:
  """{our field: the file's field} for every field of `kind`."""
  if kind not in KIND_FIELDS:
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KIND_FIELDS)}")
  ours = KIND_FIELDS[kind][0] + KIND_FIELDS[kind][1]
  unknown = set(fields or {}) - set(ours)
  if unknown:
    raise ValueError(f"fields {sorted(unknown)} are not fields of kind {kind!r} ({', '.join(ours)})")
  return {f: (fields or {}).get(f, f) for f in ours}


def _label(ours: str, theirs: str) -> str:
  return ours if ours == theirs else f"{theirs} (for {ours})"


def _record(obj: Mapping[str, Any], kind: str,
            columns: Mapping[str, str]) -> tuple[Record | None, str | None]:
  """Our record from one parsed row or object, or the first reason it is invalid."""
  required, optional = KIND_FIELDS[kind]
  record = {}
  for ours in required + optional:
    theirs = columns[ours]
    value = obj.get(theirs)
    if value is None or (ours in optional and isinstance(value, str) and not value.strip()):
      if ours in optional:
        record[ours] = None
        continue
      return None, (f"field {_label(ours, theirs)} is null" if theirs in obj else f"missing field {_label(ours, theirs)}")
    if not isinstance(value, str):
      return None, f"field {_label(ours, theirs)} is not a string (got {type(value).__name__})"
    if _SURROGATE.search(value):
      return None, f"invalid UTF-8 or a lone surrogate in field {_label(ours, theirs)}"
    if not value.strip():
      return None, f"empty text in field {_label(ours, theirs)}"
    record[ours] = value.replace("\r\n", "\n")
  return record, None


def numbered_lines(path: pathlib.Path) -> Iterator[tuple[int, str | None, str | None]]:
  """(line number, decoded line without its newline, or None and the UTF-8 problem); skips blank lines.

  Lines end at b"\n" only (U+2028 or U+0085 inside a JSON string do not end one), a leading byte-order
  mark is dropped, and .gz/.zst files are decompressed (`open_binary`)."""
  with open_binary(path) as f:
    for n, raw in enumerate(f, 1):
      if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield n, None, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
        continue
      line = line.rstrip("\r\n")
      if line.strip():
        yield n, line, None


LONE_SURROGATE = "a \\ud800-\\udfff escape without its pair (a lone surrogate): no text can hold it"


def has_lone_surrogate(value: Any) -> bool:
  """Whether a parsed JSON value holds a string or key with a lone surrogate, which JSON's escapes can
  make but UTF-8 (and so a tokenizer) cannot encode. Iterative: any depth json parsed is fine."""
  todo = [value]
  while todo:
    item = todo.pop()
    if isinstance(item, str):
      if _SURROGATE.search(item):
        return True
    elif isinstance(item, dict):
      todo.extend(item.keys())
      todo.extend(item.values())
    elif isinstance(item, list):
      todo.extend(item)
  return False


class RepeatedKey(ValueError):
  """A key given twice in one JSON object: json alone keeps the last value, silently."""

  def __init__(self, key: str):
    super().__init__(key)
    self.key = key


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  """A `json` object_pairs_hook: the object, or RepeatedKey for a key given twice."""
  out: dict[str, Any] = {}
  for key, value in pairs:
    if key in out:
      raise RepeatedKey(key)
    out[key] = value
  return out


def parse_json(text: str, unique_keys: bool = False) -> tuple[Any, str | None]:
  """(value, None), or (None, reason) for text that is not one JSON value: malformed, an integer
  past Python's 4300 digits, nesting deeper than the stack; with `unique_keys`, an object that gives a
  key twice (the reason then starts "key"). A bad record, never a crash."""
  text = text.rstrip("\r\n")  # a reader's line terminator: an error at the end is on this line, not the next
  try:
    return json.loads(text, object_pairs_hook=unique_object if unique_keys else None), None
  except RepeatedKey as e:
    return None, f"key {e.key!r} appears twice in one object; which one is meant?"
  except json.JSONDecodeError as e:
    return None, f"malformed JSON: {e.msg} (column {e.colno})"
  except (ValueError, RecursionError) as e:
    return None, f"malformed JSON: {type(e).__name__}: {str(e)[:200]}"


def _iter_jsonl(path, kind, columns):
  held = None  # the first line, when it looks like the start of one JSON document: (n, reason)
  first = True
  for n, line, problem in numbered_lines(path):
    if problem:
      yield n, None, problem
      continue
    obj, reason = parse_json(line)
    if reason is None and not isinstance(obj, dict):
      reason = f"expected a JSON object, got {type(obj).__name__}"
    if first:
      first = False
      document = line.strip() in ("[", "{") or (isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj))
      if document:  # decided by the next line: an object there means JSON Lines with one bad line
        held = (n, reason)
        continue
    if held is not None:
      if not isinstance(obj, dict):
        raise FileError(path, held[0], "this is one JSON document (an object or array over several lines, or an "
                        "array on one), not JSON Lines (one object per line); convert it, e.g. jq -c '.[]'")
      yield held[0], None, held[1]
      held = None
    if reason is not None:
      yield n, None, reason
      continue
    yield (n, *_record(obj, kind, columns))
  if held is not None:  # the document's only line
    raise FileError(path, held[0], "this is a JSON array on one line, not JSON Lines (one object per line); "
                    "convert it, e.g. jq -c '.[]'")


def _iter_text(path, kind, columns):
  for n, line, problem in numbered_lines(path):
    yield (n, None, problem) if problem else (n, *_record({columns["text"]: line}, kind, columns))


_COLUMN_NAME = re.compile(r"^[\w .#()/:?&'%+\[\]-]{0,60}$")


def _describe_header(header: list[str]) -> str:
  """The header's column names, unless the first line does not look like a header (a JSON record, a
  line of text): then only its shape, since an error message must not carry a record's text."""
  if header and header[0].lstrip().startswith(("{", "[")) and not _COLUMN_NAME.match(header[0]):
    return "the first line is JSON, not a CSV header: is this a JSON Lines file (format jsonl)?"
  if len(header) <= 100 and all(_COLUMN_NAME.match(name) and len(name.split()) <= 4 for name in header):
    return f"header: {', '.join(header)}"
  delimiter = next((f" ({name}-separated? this reader takes commas)" for d, name in ((";", "semicolon"), ("\t", "tab"))
                    if len(header) == 1 and header[0].count(d) >= 1), "")
  return (f"the first line does not look like a CSV header: {len(header)} field(s), the longest "
          f"{max(len(name) for name in header)} characters (not shown: it may be a record's text){delimiter}")


def _iter_csv(path, kind, columns):
  required = [columns[f] for f in KIND_FIELDS[kind][0]]
  csv.field_size_limit(2**31 - 1)  # process-wide; the default 128 KiB is shorter than a long transcript
  with open_binary(path) as fb:
    # strict: a stray quote is an error instead of a field that silently swallows the rows after it.
    reader = csv.reader(io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline=""),
                        strict=True)
    start = 1
    try:
      header = next(reader, None)
      if header is None:
        return
      missing = [c for c in required if c not in header]
      if missing:
        raise FileError(path, 1, f"CSV missing columns: {', '.join(missing)} ({_describe_header(header)})")
      start = reader.line_num + 1
      for row in reader:
        n, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
          continue
        if len(row) != len(header):
          yield n, None, f"row has {len(row)} columns, header has {len(header)}"
          continue
        yield (n, *_record(dict(zip(header, row)), kind, columns))
    except csv.Error as e:
      raise FileError(path, start, f"malformed CSV in the record starting here: {e}") from None


def iter_records(
    path: str | os.PathLike, kind: str, fmt: str | None = None,
    fields: Mapping[str, str] | None = None) -> Iterator[tuple[int, Record | None, str | None]]:
  """Reads `path` record by record: (line number, record or None, reason or None), exactly one None.

  Records hold our field names (see the module docstring) with string values, "\\r\\n" turned into "\\n";
  an instruction's missing or blank explanation is None. Reasons are specific ("malformed JSON: ...",
  "missing field dialogue (for conversation)", "empty text in field note", "invalid UTF-8 ...").
  Raises FileError ("FILE:LINE: reason") for a problem with the file as a whole (see FileError), after
  yielding the records before it; ValueError for an unknown kind, format or field, or text with a
  non-document kind; ImportError for .zst without zstandard; OSError if the file cannot be opened.
  """
  path = pathlib.Path(path)
  fmt = fmt or detect_format(path)
  columns = _columns(kind, fields)
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
  if fmt == "text" and kind != "document":
    raise ValueError(f"text files hold one document a line; kind {kind!r} needs jsonl or csv")
  line = 0
  try:
    for line, record, reason in {"jsonl": _iter_jsonl, "text": _iter_text, "csv": _iter_csv}[fmt](
        path, kind, columns):
      yield line, record, reason
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # EOFError also from _ZstdReader
    where = f"after the record at line {line}" if line else "before the first record"
    raise FileError(path, line + 1, f"corrupt or truncated compressed data ({e}) {where}") from None


def check_file(path: str | os.PathLike, kind: str, fmt: str | None = None,
               fields: Mapping[str, str] | None = None) -> dict[str, Any]:
  """{"read", "valid", "invalid", "problems": [{"line", "reason"}]}; read = valid + invalid; for
  conversations whose speaker turns are not recognised (valid, but trained as written, see
  templates.normalize_conversation) also "conversations_without_turns": {"count", "lines", "note"}.

  Problems keep the first `MAX_PROBLEMS` (then "problems_not_listed" counts the rest); the counts are
  never capped. Writes nothing. Raises FileError
  for a problem with the file as a whole (see `iter_records`).
  """
  read = valid = untaken = 0
  problems, as_written = [], []
  for line, record, reason in iter_records(path, kind, fmt, fields):
    read += 1
    if reason is None:
      valid += 1
      if kind == "conversation" and not _has_turns(record["conversation"]):
        untaken += 1
        if len(as_written) < MAX_PROBLEMS:
          as_written.append(line)
    elif len(problems) < MAX_PROBLEMS:
      problems.append({"line": line, "reason": reason})
  result = {"read": read, "valid": valid, "invalid": read - valid, "problems": problems}
  if read - valid > len(problems):
    result["problems_not_listed"] = read - valid - len(problems)
  if untaken:
    result["conversations_without_turns"] = {
        "count": untaken, "lines": as_written,
        "note": "valid, but no speaker turns were recognised ('[speaker] ...' lines, or 'Doctor:', 'Patient:', "
                "'Guest_*:' labels): training shows them as written and `heal-jax generate` refuses such text; "
                "rewrite the labels as [doctor] / [patient] turns"}
  return result


def _has_turns(conversation: str) -> bool:
  try:
    templates.normalize_conversation(conversation)
  except ValueError:
    return False
  return True


def _fields_arg(spec: str) -> dict[str, str]:
  try:
    return parse_fields(spec)
  except ValueError as e:  # argparse would print only "invalid parse_fields value"
    raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
  """`heal-jax data check PATH... --kind K [--format F] [--fields a=b,...]`: prints the JSON report.

  One PATH: its report. Several (a shell glob over a source's shards): {"files": {PATH: report or
  {"error": ...}}, "read", "valid", "invalid" (sums over the files read), "unreadable": [PATH, ...]};
  every file is checked, whatever the others hold. Returns 0 when every record is valid and every
  file has at least one, 1 otherwise, 2 when a file cannot be read at all (missing file, bad options,
  .zst without zstandard) or has a problem as a whole (`FileError`: printed as FILE:LINE: reason).
  """
  parser = argparse.ArgumentParser(prog="heal-jax data check", description=__doc__.splitlines()[0])
  parser.add_argument("path", type=pathlib.Path, nargs="+")
  parser.add_argument("--kind", required=True, choices=tuple(KIND_FIELDS))
  parser.add_argument("--format", dest="fmt", choices=FORMATS, default=None)
  parser.add_argument("--fields", type=_fields_arg, default=None,
                      help="OURS=THEIRS, comma separated: conversation=dialogue,note=note")
  args = parser.parse_args(argv)
  reports: dict[str, dict[str, Any]] = {}
  status = 0
  for path in args.path:
    try:
      if path.is_dir():
        raise ValueError(f"{path}: a directory, not a file (give its files, e.g. {path}/*.jsonl)")
      if not path.exists():
        raise ValueError(f"{path}: no such file")
      reports[str(path)] = check_file(path, args.kind, args.fmt, args.fields)
    except (OSError, ValueError, ImportError) as e:
      print(f"error: {e}", file=sys.stderr)
      reports[str(path)] = {"error": str(e)}
      status = 2
      continue
    if reports[str(path)]["read"] == 0:
      print(f"error: {path}: no records (the file is empty or holds only blank lines)", file=sys.stderr)
    if reports[str(path)]["read"] == 0 or reports[str(path)]["invalid"]:
      status = max(status, 1)
  if len(args.path) == 1:
    if "error" not in reports[str(args.path[0])]:
      print(json.dumps(reports[str(args.path[0])], indent=2))
    return status
  read = [r for r in reports.values() if "error" not in r]
  total = {k: sum(r[k] for r in read) for k in ("read", "valid", "invalid")}
  if any("conversations_without_turns" in r for r in read):
    total["conversations_without_turns"] = sum(r.get("conversations_without_turns", {}).get("count", 0) for r in read)
  print(json.dumps({"files": reports, **total, "unreadable": [p for p, r in reports.items() if "error" in r]},
                   indent=2))
  return status
