"""Data sources of a run config (`config.data.sources`): validation, their files, and reading records.

A source is a named set of raw files (or a TFDS dataset on disk) of one record kind (see
`check.KIND_FIELDS`) with a mixture weight. Formats: jsonl, text and csv (read by `check.iter_records`,
`.gz`/`.zst` allowed); arrayrecord (ArrayRecord files whose records are JSON objects as UTF-8 bytes,
`*.array_record` or `*.array_record-00000-of-00008`); tfds (`paths` = "NAME[:SPLIT]@DATA_DIR", a
dataset already prepared on disk as ArrayRecord, read with `tfds.builder_from_directory`: nothing is
ever downloaded; split defaults to train). Every bad record is located as "FILE:LINE" (for
arrayrecord the 1-based record number, for tfds "DIR[SPLIT]#INDEX").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import glob
import math
import os
import pathlib
import re
from typing import Any

from heal_jax.data import check, dedup, examples

FORMATS = ("jsonl", "text", "csv", "arrayrecord", "tfds")
ON_ERROR = ("raise", "skip")
MAX_LISTED = 20  # skipped records listed by place and reason (all are counted)
_ARRAYRECORD_NAME = re.compile(r"\.array_?record(-\d+-of-\d+)?$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_AR_CHUNK = 1024  # arrayrecord records read at a time

Record = dict[str, str | None]


class DataError(ValueError):
  """Bad data or data config; the message names the file and line, or the source / config key."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One validated source. paths: globs ({workdir} already replaced), or for tfds one
  "NAME[:SPLIT]@DATA_DIR". format: one of FORMATS, or "" to tell each file's format by its name.
  fields: {our field: the file's field}, only for renamed fields."""
  name: str
  paths: tuple[str, ...]
  kind: str
  weight: float
  format: str
  fields: dict[str, str]

  def __post_init__(self):
    key = f"data.sources.{self.name}"
    if not _NAME.match(self.name):
      raise DataError(f"{key}: a source name must be letters, digits, '_', '.' or '-'")
    if self.kind not in check.KIND_FIELDS:
      raise DataError(f"{key}.kind: unknown kind {self.kind!r}; expected one of {', '.join(check.KIND_FIELDS)}")
    if self.format not in FORMATS + ("",):
      raise DataError(f"{key}.format: unknown format {self.format!r}; expected one of {', '.join(FORMATS)} "
                      "or '' (from the file names)")
    if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight <= 0:
      what = "zero-weight source" if self.weight == 0 else "weight must be a positive number"
      raise DataError(f"{key}.weight: {what} (got {self.weight!r}); remove the source or give it a weight > 0")
    required, optional = check.KIND_FIELDS[self.kind]
    unknown = sorted(set(self.fields) - set(required + optional))
    if unknown:
      raise DataError(f"{key}.fields: {unknown} are not fields of kind {self.kind!r} "
                      f"({', '.join(required + optional)})")
    if not self.paths:
      raise DataError(f"{key}.paths: empty")
    if self.format == "tfds" and len(self.paths) != 1:
      raise DataError(f"{key}.paths: a tfds source is one NAME[:SPLIT]@DATA_DIR")


def _file_format(source: Source, path: pathlib.Path) -> str:
  if source.format:
    return source.format
  if _ARRAYRECORD_NAME.search(path.name):
    return "arrayrecord"
  try:
    return check.detect_format(path)
  except ValueError as e:
    raise DataError(f"data.sources.{source.name}.format: {e}") from None


def _tfds_spec(source: Source) -> tuple[str, str, pathlib.Path]:
  """(NAME, SPLIT, DATA_DIR) of a tfds source."""
  spec = source.paths[0]
  name_split, at, data_dir = spec.rpartition("@")
  if not at or not name_split or not data_dir:
    raise DataError(f"data.sources.{source.name}.paths: {spec!r} is not NAME[:SPLIT]@DATA_DIR")
  name, _, split = name_split.partition(":")
  return name, split or "train", pathlib.Path(data_dir)


def _tfds_dir(source: Source) -> pathlib.Path:
  """The directory with dataset_info.json of a tfds source (its newest version if several)."""
  name, _, data_dir = _tfds_spec(source)
  root = data_dir / name
  if (root / "dataset_info.json").is_file():
    return root
  versions = [p for p in root.glob("*") if (p / "dataset_info.json").is_file()] if root.is_dir() else []
  if not versions:
    raise DataError(f"data.sources.{source.name}.paths: no TFDS dataset {name!r} prepared under {data_dir} "
                    f"(expected {root}/VERSION/dataset_info.json; nothing is downloaded)")

  def version_key(p: pathlib.Path):
    return tuple(int(x) if x.isdigit() else -1 for x in p.name.split("."))
  return max(versions, key=version_key)


def files(source: Source) -> list[pathlib.Path]:
  """The source's files, sorted; for tfds the dataset's version directory. DataError if a glob matches
  nothing."""
  if source.format == "tfds":
    return [_tfds_dir(source)]
  found = set()
  for pattern in source.paths:
    if pathlib.Path(pattern).is_file():  # a name holding glob characters, e.g. "export [2024].jsonl"
      matches = [pathlib.Path(pattern)]
    else:
      matches = [pathlib.Path(p) for p in glob.glob(pattern, recursive=True) if pathlib.Path(p).is_file()]
    if not matches:
      hint = f" (a directory: give a glob such as {pattern.rstrip('/')}/*.jsonl)" if pathlib.Path(pattern).is_dir() else ""
      raise DataError(f"data.sources.{source.name}.paths: {pattern!r} matches no file{hint}")
    found.update(matches)
  return sorted(found)


def with_workdir(value: str, workdir: str | os.PathLike | None, key: str) -> str:
  """`value` (of config key `key`) with "{workdir}" replaced by the run's work directory; DataError
  naming the key when it uses one and none was given."""
  if "{workdir}" not in value:
    return value
  if workdir is None:
    raise DataError(f"{key}={value!r} uses {{workdir}} but no work directory was given (--workdir)")
  return value.replace("{workdir}", str(workdir))


def from_config(sources_cfg: Mapping[str, Any], workdir: str | None = None,
                require_files: bool = True) -> list[Source]:
  """Validated sources of `config.data.sources`, sorted by name, each with at least one file (unless
  not `require_files`: training from prepared data needs no raw file).

  `{workdir}` in paths is replaced by `workdir`. Raises DataError naming `data.sources.NAME.FIELD`
  for no sources, empty paths, an unknown kind or format, a weight <= 0 (a zero-weight source), a bad
  field map, a glob that matches no file or a file whose format cannot be told from its name.
  """
  if sources_cfg is None or not list(sources_cfg.keys()):
    raise DataError("data.sources: no sources configured")
  out = []
  for name in sorted(sources_cfg.keys()):
    cfg = sources_cfg[name]
    key = f"data.sources.{name}"
    paths = with_workdir(str(cfg.get("paths", "") or ""), workdir, f"{key}.paths")
    if not paths.replace(",", " ").strip():  # only commas and whitespace
      raise DataError(f"{key}.paths is empty: give the source's files as comma-separated globs "
                      f"(--config.{key}.paths=/data/notes/*.jsonl)")
    fmt = str(cfg.get("format", "") or "")
    whole = fmt == "tfds" or pathlib.Path(paths.strip()).is_file()  # one file whose name has a comma
    globs = (paths.strip(),) if whole else tuple(p.strip() for p in paths.split(",") if p.strip())
    try:
      fields = check.parse_fields(str(cfg.get("fields", "") or ""))
    except ValueError as e:
      raise DataError(f"{key}.fields: {e}") from None
    source = Source(name=name, paths=globs, kind=str(cfg.get("kind", "")), weight=cfg.get("weight", 0.0),
                    format=fmt, fields=fields)
    for path in files(source) if require_files else ():
      fmt = _file_format(source, path)
      if fmt == "text" and source.kind != "document":
        raise DataError(f"{key}.format: {path} is a text file (one document a line) but kind is {source.kind!r}")
    out.append(source)
  return out


def tokenizer_dir(config: Any, workdir: str | os.PathLike | None) -> pathlib.Path:
  """config.data.tokenizer's directory (the single reader of the field); DataError if it is empty."""
  if not config.data.tokenizer:
    raise DataError("config.data.tokenizer is empty: give the directory holding tokenizer.model "
                    "(LLaMA's, or one trained with `heal-jax data train-tokenizer`)")
  return pathlib.Path(with_workdir(config.data.tokenizer, workdir, "data.tokenizer"))


def _bootstrap_target(directory: pathlib.Path, done: str, key: str) -> None:
  """The bootstrap writes `directory` only when it is absent or empty: one holding other files than the
  bootstrap's (which it writes whole, `done` last among them) is someone's, and is never replaced."""
  if directory.exists() and not (directory / done).is_file() and (not directory.is_dir() or any(directory.iterdir())):
    raise DataError(
        f"{key} {directory} holds other files than the bootstrap's (no {done}): data.bootstrap='synthetic' "
        "writes only into a new or empty directory; point it elsewhere, or set data.bootstrap='' to use yours")


def check_config(config: Any, workdir: str | os.PathLike | None) -> None:
  """config.data checked before a run locks, writes or reads anything: bootstrap, tokenizer, every
  source's fields (files are looked for later: the bootstrap may still write them), on_error, dedup.
  DataError naming the key."""
  if config.data.bootstrap not in ("", "synthetic"):
    raise DataError(f"config.data.bootstrap={config.data.bootstrap!r}: expected '' or 'synthetic'")
  tok_dir = tokenizer_dir(config, workdir)
  if config.data.bootstrap and workdir is not None:  # (`data prepare` bootstraps only with --workdir)
    _bootstrap_target(pathlib.Path(workdir) / "corpus", "instructions.jsonl", "the bundled corpus's folder")
    _bootstrap_target(tok_dir, "tokenizer.model", "config.data.tokenizer")
  from_config(config.data.sources, workdir=None if workdir is None else str(workdir), require_files=False)
  if config.data.on_error not in ON_ERROR:
    raise DataError(f"config.data.on_error={config.data.on_error!r}; expected one of {', '.join(ON_ERROR)}")
  try:
    dedup.Deduplicator.from_config(config.data.dedup)
  except ValueError as e:
    raise DataError(str(e)) from None


def _check_record(obj: Any, source: Source) -> tuple[Record | None, str | None]:
  if not isinstance(obj, dict):
    return None, f"expected a JSON object, got {type(obj).__name__}"
  columns = check._columns(source.kind, source.fields)  # pylint: disable=protected-access
  return check._record(obj, source.kind, columns)  # pylint: disable=protected-access


def _iter_arrayrecord(path: pathlib.Path, source: Source) -> Iterator[tuple[int, Record | None, str | None]]:
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  reader = array_record_module.ArrayRecordReader(str(path))
  try:
    total = reader.num_records()
    for start in range(0, total, _AR_CHUNK):
      for n, raw in enumerate(reader.read(start, min(start + _AR_CHUNK, total)), start + 1):
        try:
          text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          yield n, None, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
          continue
        obj, reason = check.parse_json(text)
        if reason is not None:
          yield n, None, reason
          continue
        yield (n, *_check_record(obj, source))
  finally:
    reader.close()


def _tfds_value(value: Any) -> Any:
  """A decoded TFDS feature as a str where it is text (bytes are decoded; bad UTF-8 stays bytes)."""
  if hasattr(value, "item") and getattr(value, "shape", None) == ():
    value = value.item()
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return "\ud800"  # check._record reports a lone surrogate as invalid UTF-8
  return value


def _iter_tfds(source: Source) -> Iterator[tuple[str, Record | None, str | None]]:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  _, split, _ = _tfds_spec(source)
  directory = _tfds_dir(source)
  try:
    data = tfds.builder_from_directory(str(directory)).as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"data.sources.{source.name}.paths: cannot open TFDS dataset {directory} split {split!r} "
                    f"as a random-access (ArrayRecord) source: {e}") from e
  for start in range(0, len(data), _AR_CHUNK):
    indices = list(range(start, min(start + _AR_CHUNK, len(data))))
    for i, example in zip(indices, data.__getitems__(indices)):
      obj = {k: _tfds_value(v) for k, v in example.items()}
      yield (f"{directory}[{split}]#{i}", *_check_record(obj, source))


def iter_records(source: Source) -> Iterator[tuple[str, Record | None, str | None]]:
  """Every record of `source` in file order: ("FILE:LINE", record or None, reason or None).

  Raises DataError if a file cannot be read at all (missing, unreadable, .zst without zstandard) or has
  a problem as a whole (`check.FileError`: never skipped like a bad record).
  """
  if source.format == "tfds":
    yield from _iter_tfds(source)
    return
  for path in files(source):
    yield from _file_records(source, path)


def check_openings(source_list: Sequence[Source]) -> dict[str, list[pathlib.Path]]:
  """Reads the first record of every file of every source (a CSV's header, the start of a compressed
  stream): DataError for a file that cannot be read as a whole, or a source whose files hold no
  record, before any source is processed (they are processed in name order, which can take hours).
  Returns the files without a record (empty, blank lines only, a CSV header alone) of the sources
  that have other records, by source name, for the callers to say."""
  empty = {}
  for source in source_list:
    if source.format == "tfds":
      continue
    paths = files(source)
    found = [_has_a_record(source, path) for path in paths]  # a list: every file is opened
    if not any(found):
      raise DataError(f"data.sources.{source.name}: no records in {name_files(paths)} (empty files, blank lines "
                      "only, or a CSV header alone)")
    if not all(found):
      empty[source.name] = [path for path, has in zip(paths, found) if not has]
  return empty


def name_files(paths: Sequence[pathlib.Path], most: int = 3) -> str:
  """The first `most` paths, and how many more, for a message."""
  return ", ".join(map(str, paths[:most])) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _has_a_record(source: Source, path: pathlib.Path) -> bool:
  records = _file_records(source, path)
  try:
    return next(records, None) is not None
  finally:
    records.close()


def _file_records(source: Source, path: pathlib.Path) -> Iterator[tuple[str, Record | None, str | None]]:
  """The records of one file of `source`, as `iter_records` gives them."""
  fmt = _file_format(source, path)
  try:
    if fmt == "arrayrecord":
      rows = _iter_arrayrecord(path, source)
    else:
      rows = check.iter_records(path, source.kind, fmt, source.fields)
    for line, record, reason in rows:
      yield f"{path}:{line}", record, reason
  except (OSError, ImportError, RuntimeError) as e:
    raise DataError(f"{path}: cannot read (source {source.name}): {e}") from e
  except check.FileError as e:
    raise DataError(f"{e} (source {source.name}; a problem with the whole file, which"
                    " data.on_error=skip cannot skip)") from e
  except ValueError as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"{path}: {e} (source {source.name})") from e


def valid_records(source: Source, on_error: str, counts: dict[str, int],
                  skipped: list[dict[str, str]] | None = None) -> Iterator[Record]:
  """The valid records of `source`; counts["read"] and counts["invalid"] grow as they are read.

  on_error "raise": DataError "FILE:LINE: reason" at the first bad record; "skip": bad records are
  counted in counts["invalid"] and left out, and the first `MAX_LISTED` of them go to `skipped` as
  {"where": "FILE:LINE", "reason": ...} (when a list is given).
  """
  if on_error not in ON_ERROR:
    raise DataError(f"data.on_error: {on_error!r}; expected one of {', '.join(ON_ERROR)}")
  counts.setdefault("read", 0)
  counts.setdefault("invalid", 0)
  for where, record, reason in iter_records(source):
    counts["read"] += 1
    if reason is not None:
      if on_error == "raise":
        raise DataError(f"{where}: {reason} (source {source.name}; data.on_error=skip skips bad records)")
      counts["invalid"] += 1
      if skipped is not None and len(skipped) < MAX_LISTED:
        skipped.append({"where": where, "reason": reason})
      continue
    yield record


def record_text(record: Record, kind: str) -> str:
  """The record's own text (its fields in KIND_FIELDS order), without any template: what dedup compares."""
  required, optional = check.KIND_FIELDS[kind]
  return "\n\n".join(record[f] for f in required + optional if record.get(f))


def kept_records(source: Source, on_error: str, deduplicator: dedup.Deduplicator | None,
                 counts: dict[str, int], skipped: list[dict[str, str]] | None = None) -> Iterator[Record]:
  """The valid records of `source` (`valid_records`), text fields in Unicode NFC, minus those
  `deduplicator` (shared across a run's sources, taken in name order; None: keep all) finds to
  repeat one kept before; counts["duplicates_exact"] and counts["duplicates_near"] count those.
  The one path from records to examples: `data prepare` and online training both read it."""
  counts.setdefault("duplicates_exact", 0)
  counts.setdefault("duplicates_near", 0)
  for record in valid_records(source, on_error, counts, skipped):
    record = {k: None if v is None else dedup.normalize_text(v) for k, v in record.items()}
    if deduplicator is not None:
      decision = deduplicator.add(record_text(record, source.kind))
      if not decision.keep:
        counts[f"duplicates_{decision.reason}"] += 1
        continue
    yield record


def load_texts(source: Source, on_error: str, skipped: list[dict[str, str]] | None = None,
               deduplicator: dedup.Deduplicator | None = None) -> tuple[list[tuple[str, str]], dict[str, int]]:
  """(prompt_text, target_text) of every kept record (`kept_records`, `examples.texts`), and
  {"read", "invalid", "duplicates_exact", "duplicates_near"}.

  read = len(pairs) + invalid + duplicates. See `valid_records` for `on_error` and `skipped`.
  """
  counts = {"read": 0, "invalid": 0, "duplicates_exact": 0, "duplicates_near": 0}
  pairs = [examples.texts(record, source.kind)
           for record in kept_records(source, on_error, deduplicator, counts, skipped)]
  assert counts["read"] == (len(pairs) + counts["invalid"] + counts["duplicates_exact"] +
                            counts["duplicates_near"]), counts
  return pairs, counts
