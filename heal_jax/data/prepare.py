"""`heal-jax data prepare`: raw sources -> normalised, deduplicated, tokenized ArrayRecord, once, offline.

For every source of `config.data.sources` (in name order), every record is read (bad records raise or
are skipped and counted, per `config.data.on_error`), its text fields are put in Unicode NFC, it is
checked for exact and near duplicates (`dedup.Deduplicator` with `config.data.dedup`) against every
record kept before it, in this source and in the sources before it (dedup is across sources: a
record of `pubmed` that repeats one of `meddialog` is dropped from `pubmed`), and each kept record
becomes one example `examples.encode(tokenizer, *examples.texts(record, kind))` written through the
TFDS builder of `tfds_builder` (ArrayRecord, random access, no TensorFlow).

Output (default `config.data.prepared_dir`):
  OUT/report.json                                per source and in total: read, invalid,
                                                 duplicates_exact, duplicates_near, written,
                                                 tokens_written, target_tokens; read = written +
                                                 invalid + duplicates_exact + duplicates_near;
                                                 per source also "skipped": the first 20 invalid
                                                 records as {"where": "FILE:LINE", "reason"}, and
                                                 "files": [[path, bytes], ...] it was read from;
                                                 the tokenizer's path, vocab_size and sha256.
  OUT/<source>/heal_prepared/1.0.0/...           the TFDS dataset of that source (split "train").
The output appears all at once: everything is written to a hidden sibling directory that is renamed
to OUT at the end and removed if anything fails, so a failed prepare leaves no half-written OUT.
Training reads it with `open_prepared(OUT, name)` (set `config.data.prepared_dir` to OUT), after
`check_prepared`: the run's tokenizer must be the one that encoded it, each source's raw files (where
they are present: the raw data need not be copied to the cluster) must be the ones it was read from
(same names and sizes), and every shard file must hold the records its dataset_info.json lists.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
import hashlib
import json
import os
import pathlib
import signal
import sys
import threading
from typing import Any

import numpy as np

from heal_jax import atomic_dir
from heal_jax.data import check, dedup, examples, sources, tfds_builder
from heal_jax.data import tokenizer as tokenizer_lib

REPORT = "report.json"
COUNT_KEYS = ("read", "invalid", "duplicates_exact", "duplicates_near", "written", "tokens_written",
              "target_tokens")
DataError = sources.DataError


def _resolve(path: str | os.PathLike, workdir: str | os.PathLike | None, key: str) -> pathlib.Path:
  if not str(path):
    raise DataError(f"{key} is empty: give a directory")
  return pathlib.Path(sources.with_workdir(str(path), workdir, key))


class Stopped(Exception):
  """`prepare` was asked to stop (its `stop` event was set, e.g. by SIGTERM) before it finished."""


def _examples(source: sources.Source, on_error: str, deduplicator: dedup.Deduplicator,
              tokenizer: tokenizer_lib.Tokenizer, counts: dict[str, int],
              skipped: list[dict[str, str]], stop: threading.Event | None) -> Iterator[dict[str, np.ndarray]]:
  """Encoded kept records of `source`; fills `counts` (COUNT_KEYS) and `skipped` as it goes.
  Raises Stopped once `stop` is set."""
  for record in sources.kept_records(source, on_error, deduplicator, counts, skipped):
    if stop is not None and stop.is_set():
      raise Stopped(f"stopped in data.sources.{source.name} after {counts['read']} records")
    tokens_N, loss_mask_N = examples.encode(tokenizer, *examples.texts(record, source.kind))
    counts["written"] += 1
    counts["tokens_written"] += len(tokens_N)
    counts["target_tokens"] += int(loss_mask_N.sum())
    yield {"tokens": tokens_N, "loss_mask": loss_mask_N}


def _prepare_source(source: sources.Source, data_dir: pathlib.Path, on_error: str,
                    deduplicator: dedup.Deduplicator, tokenizer: tokenizer_lib.Tokenizer,
                    stop: threading.Event | None) -> dict[str, Any]:
  counts = dict.fromkeys(COUNT_KEYS, 0)
  skipped: list[dict[str, str]] = []
  stream = _examples(source, on_error, deduplicator, tokenizer, counts, skipped, stop)
  first = next(stream, None)
  if first is None:
    raise DataError(f"data.sources.{source.name}: no records left to write ({json.dumps(counts)})")

  def all_examples():
    yield first
    yield from stream

  data_dir.mkdir(parents=True)
  tfds_builder.write(all_examples(), data_dir, description=f"heal-jax prepared source {source.name} "
                     f"({source.kind})")
  duplicates = counts["duplicates_exact"] + counts["duplicates_near"]
  assert counts["read"] == counts["written"] + counts["invalid"] + duplicates, counts
  return {**counts, "kind": source.kind, "weight": source.weight,
          "files": [[str(p), _size(p)] for p in sources.files(source)], "skipped": skipped}


def _size(path: pathlib.Path) -> int:
  """Bytes of a file; of every file under a directory (a TFDS source's version directory)."""
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def tokenizer_sha256(tokenizer_dir: pathlib.Path) -> str:
  return hashlib.sha256((tokenizer_dir / tokenizer_lib.MODEL_FILE).read_bytes()).hexdigest()


def prepare(config: Any, out_dir: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None,
            *, overwrite: bool = False, log: Callable[[str], None] | None = None,
            stop: threading.Event | None = None) -> dict[str, Any]:
  """Prepares every source of `config` into `out_dir` (default config.data.prepared_dir); the report.

  Reads config.data.{sources, tokenizer, on_error, dedup}; `{workdir}` in paths is replaced by
  `workdir`. An existing non-empty `out_dir` is an error unless `overwrite`, when it is replaced
  (only once the new output is complete). Raises DataError (a ValueError) for bad config or data, and
  Stopped when `stop` is set before the end (checked at every record; nothing is written then).
  """
  log = log or (lambda message: None)
  data = config.data
  out = _resolve(out_dir or data.prepared_dir, workdir, "--out / data.prepared_dir")
  if out.is_symlink():  # a link to big storage: the output goes where it points, and the link stays
    try:
      target = out.resolve(strict=False)
    except RuntimeError as e:  # a symlink loop
      raise DataError(f"--out / data.prepared_dir {out}: {e}") from None
    if not target.parent.is_dir():  # e.g. storage that is not mounted: never create it here
      raise DataError(f"--out / data.prepared_dir {out} is a link to {target}, whose folder {target.parent} "
                      "does not exist")
    out = target
  if out.exists() and not out.is_dir():
    raise DataError(f"output {out} is a file, not a directory")
  if out.is_dir() and any(out.iterdir()):
    if not (out / REPORT).is_file():
      raise DataError(f"{out} is not empty and not a `data prepare` output (no {REPORT}); refusing to replace it")
    if not overwrite:
      raise DataError(f"{out} already exists and is not empty; pass --overwrite to replace it")
  sources.check_config(config, workdir)
  source_list = sources.from_config(data.sources, None if workdir is None else str(workdir))
  tok_dir = sources.tokenizer_dir(config, workdir)
  if not (tok_dir / tokenizer_lib.MODEL_FILE).is_file():
    raise DataError(f"data.tokenizer: no {tokenizer_lib.MODEL_FILE} in {tok_dir}")
  tokenizer = tokenizer_lib.Tokenizer(tok_dir)
  try:
    deduplicator = dedup.Deduplicator.from_config(data.dedup)
  except ValueError as e:
    raise DataError(str(e)) from None
  for name, empty in sources.check_openings(source_list).items():
    log(f"note: data.sources.{name}: no records in {sources.name_files(empty)} (empty, blank lines only, or a "
        "CSV header alone); its other files are prepared")

  with atomic_dir.staged(out) as partial:
    per_source = {}
    for source in source_list:
      per_source[source.name] = _prepare_source(source, partial / source.name, data.on_error, deduplicator,
                                                tokenizer, stop)
      log(f"prepared {source.name}: " + ", ".join(f"{k} {per_source[source.name][k]}" for k in COUNT_KEYS))
      for item in per_source[source.name]["skipped"][:3]:
        log(f"  skipped {item['where']}: {item['reason']}")
    totals = {k: sum(r[k] for r in per_source.values()) for k in COUNT_KEYS}
    assert totals["read"] == (totals["written"] + totals["invalid"] + totals["duplicates_exact"] +
                              totals["duplicates_near"]), totals
    report = {
        "out_dir": str(out), "tokenizer": str(tok_dir), "vocab_size": tokenizer.vocab_size,
        "tokenizer_sha256": tokenizer_sha256(tok_dir),
        "on_error": data.on_error, "normalization": "NFC", "text_format": examples.TEXT_FORMAT,
        "dedup": {**data.dedup.to_dict(), "scope": "across sources, in source-name order; first kept"},
        "sources": per_source, "totals": totals,
    }
    (partial / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if stop is not None and stop.is_set():  # after the last record: still nothing published
      raise Stopped("stopped after the last record, before publishing")
  return report


class PreparedSource:
  """Random-access prepared examples of one source: `len`, `[i]` -> {"tokens": int32[n],
  "loss_mask": int32[n]}. Opened lazily and picklable (the reader is reopened in each process), so it
  can be given to `grain.MapDataset.source` with worker processes."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = str(directory)
    self._data = None
    self._len = len(self._source())

  def _source(self):
    if self._data is None:
      self._data = tfds_builder.open_split(self.directory)
    return self._data

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = self._source()[index]
    return {"tokens": np.asarray(example["tokens"], np.int32),
            "loss_mask": np.asarray(example["loss_mask"], np.int32)}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    return [self[i] for i in indices]

  def __getstate__(self) -> dict[str, Any]:
    return {"directory": self.directory, "_data": None, "_len": self._len}

  def __repr__(self) -> str:
    return f"PreparedSource({self.directory!r}, len={self._len})"


def read_report(out_dir: pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(out_dir) / REPORT
  try:
    report = json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise DataError(f"data.prepared_dir={out_dir}: no {REPORT}; not a `heal-jax data prepare` output") from None
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
  if not isinstance(report, dict) or not isinstance(report.get("sources"), dict):
    raise DataError(f"{path}: no \"sources\" object")
  return report


_REDO = "; run `heal-jax data prepare` again (or point data.prepared_dir elsewhere)"


def _current_report(out_dir: pathlib.Path) -> dict[str, Any]:
  """`out_dir`'s report, of examples made as this version makes them; DataError otherwise."""
  report = read_report(out_dir)
  if report.get("text_format") != examples.TEXT_FORMAT:
    raise DataError(f"data.prepared_dir={out_dir} holds examples made as {report.get('text_format') or 'before 2026-11-27'}"
                    f", not as {examples.TEXT_FORMAT!r} (how generation shows conversations to the model){_REDO}")
  return report


def check_prepared_dir(out_dir: pathlib.Path, source_names: Sequence[str]) -> None:
  """What can be checked of `out_dir` before a run writes anything (the tokenizer may not exist yet):
  its report is readable, its examples are of this version, and each of `source_names` is prepared
  with whole shard files. DataError naming the file otherwise."""
  _current_report(out_dir)
  for name in source_names:
    open_prepared(out_dir, name)


def check_prepared(out_dir: pathlib.Path, tokenizer_dir: pathlib.Path, vocab_size: int,
                   raw_files: Mapping[str, list[pathlib.Path] | None]) -> None:
  """`out_dir` holds examples of this version, prepared with this tokenizer and, for each source of
  `raw_files` whose files are present (None: not on this machine, not compared), from files of the
  same names and sizes (each source's shard files are checked as `open_prepared` opens them).
  DataError saying what differs and to re-run `heal-jax data prepare` otherwise."""
  report = _current_report(out_dir)
  sha = report.get("tokenizer_sha256")
  if (sha is not None and sha != tokenizer_sha256(tokenizer_dir)) or report.get("vocab_size") != vocab_size:
    raise DataError(f"data.prepared_dir={out_dir} was tokenized with {report.get('tokenizer')} "
                    f"({report.get('vocab_size')} pieces), not with config.data.tokenizer {tokenizer_dir} "
                    f"({vocab_size} pieces, different file){_REDO}")
  for name, files in raw_files.items():
    recorded = report["sources"].get(name, {}).get("files")
    if files is None or recorded is None:
      continue
    then = sorted((pathlib.Path(f[0]).name, f[1]) if isinstance(f, list) else (pathlib.Path(f).name, None)
                  for f in recorded)
    now = sorted((p.name, _size(p) if then and then[0][1] is not None else None) for p in files)
    if then != now:
      gone, new = sorted((Counter(then) - Counter(now)).elements()), sorted((Counter(now) - Counter(then)).elements())
      raise DataError(f"data.prepared_dir={out_dir}: source {name!r} was prepared from other files than "
                      f"data.sources.{name}.paths matches now (prepared only: {gone[:3]}; now only: {new[:3]}, "
                      f"as (name, bytes)){_REDO}")


def open_prepared(out_dir: str | os.PathLike, source_name: str) -> PreparedSource:
  """The prepared examples of `source_name` in `out_dir` (a `prepare` output), its shard files checked.
  DataError if absent or damaged."""
  out_dir = pathlib.Path(out_dir)
  directory = tfds_builder.version_dir(out_dir / source_name)
  if not (directory / "dataset_info.json").is_file():
    report = out_dir / REPORT
    names = sorted(json.loads(report.read_text(encoding="utf-8"))["sources"]) if report.is_file() else []
    raise DataError(f"data.prepared_dir={out_dir}: no prepared source {source_name!r} "
                    f"(prepared: {', '.join(names) or 'none'}); run `heal-jax data prepare`")
  try:
    tfds_builder.check_shards(directory)
  except ValueError as e:
    raise DataError(f"data.prepared_dir={out_dir}, source {source_name!r}: {e}; run `heal-jax data prepare` "
                    "again") from None
  return PreparedSource(directory)


def _apply_fields(config: Any, spec: str) -> list[str]:
  """Sets data.sources.NAME.fields = spec on every source with empty fields whose kind has all the
  named fields; returns their names. ConfigError if there is none."""
  from heal_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  try:
    mapping = check.parse_fields(spec)
  except ValueError as e:
    raise config_lib.ConfigError(f"--fields: {e}") from None
  names = []
  for name in sorted(config.data.sources.keys()):
    src = config.data.sources[name]
    required, optional = check.KIND_FIELDS.get(src.kind, ((), ()))
    if not src.fields and set(mapping) <= set(required + optional):
      config_lib.apply_override(config, f"data.sources.{name}.fields", spec)
      names.append(name)
  if not names:
    raise config_lib.ConfigError(f"--fields {spec}: no source has empty fields and a kind with fields "
                                 f"{', '.join(mapping)}")
  return names


def main(argv: Sequence[str] | None = None) -> int:
  """`heal-jax data prepare --config CONFIG [--config.k=v ...] [--out DIR] [--workdir DIR]
  [--fields ours=theirs,...] [--overwrite]`: prints the JSON report.

  A config with data.bootstrap (configs/tiny.py) first writes its corpus and tokenizer in --workdir,
  as `heal-jax train` would. --fields sets the field map of every source that has none and whose
  kind has all the named fields (e.g. conversation=dialogue,note=note reaches the conversation
  sources only). Returns 0 on success, 2 on a config or data error (printed to stderr; no output
  directory is left behind).
  """
  from heal_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="heal-jax data prepare", description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py; then --config.x=y overrides")
  parser.add_argument("--out", type=pathlib.Path, default=None, help="default: config.data.prepared_dir")
  parser.add_argument("--workdir", type=pathlib.Path, default=None, help="replaces {workdir} in config paths")
  parser.add_argument("--fields", default="", help="OURS=THEIRS,... for sources without a field map")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
  argv = list(sys.argv[1:] if argv is None else argv)
  # SIGTERM unwinds like an error, so the hidden staging directory is removed (exit status 143). The
  # event stops the record loop too: a SystemExit raised while a gc callback runs (jax installs one)
  # is swallowed there.
  stop = threading.Event()

  def on_sigterm(signum, frame):
    del frame
    stop.set()
    sys.exit(128 + signum)

  try:
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    installed = True
  except ValueError:  # not the main thread
    previous, installed = None, False
  try:
    overrides, rest = config_lib.split_overrides(argv)
    args = parser.parse_args(rest)
    config = config_lib.load_config(args.config, overrides)
    if args.fields:
      _apply_fields(config, args.fields)
    log = lambda m: print(m, file=sys.stderr)  # pylint: disable=unnecessary-lambda-assignment
    if config.data.bootstrap and args.workdir is not None:  # e.g. configs/tiny.py: its corpus and tokenizer first
      from heal_jax.data import mixture  # pylint: disable=import-outside-toplevel  # (it imports jax)
      mixture.bootstrap(config, args.workdir, log)
    report = prepare(config, args.out, args.workdir, overwrite=args.overwrite, log=log, stop=stop)
  except Stopped as e:
    print(f"heal-jax data prepare: SIGTERM: {e}; nothing written", file=sys.stderr)
    return 128 + signal.SIGTERM
  except (ValueError, OSError) as e:
    print(f"heal-jax data prepare: error: {e}", file=sys.stderr)
    return 2
  finally:
    if installed:  # (None: a handler not set from Python, which cannot be put back; the default then)
      signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
  print(json.dumps(report, indent=2))
  return 0
