"""Notes for a file of conversations, resumable: `heal-jax generate --conversations C.jsonl --output P.jsonl`.

C is JSONL of {"id": ..., "text": conversation} (`eval.records`; the same file `eval notes
--conversations` reads), each text in a form `generate --conversation` accepts. P gets one row per
conversation, in C's order: {"id", "text", "new_tokens", "ended"} (see `generate.Note`), which is the
predictions file of `heal-jax eval notes`.

Resuming: each finished batch is appended to P.partial (fsynced), whose first line holds the run's
settings (`run_settings`: a SHA-256 of C, the token limit, sampling, batch size, dtype, and
`model_fingerprint`: its weights, config and tokenizer, whatever path named it). A run started again
with the same settings keeps the batches that were finished and generates the rest; its notes equal
an uninterrupted run's, sampling included (`generate.generate_batches`). A changed setting is an
error naming it, so notes of two settings never mix; remove the partial file to start over. The run
holds an flock on P.partial (`open_partial`, taken by the command before it loads the model), so a
second run on the same output stops at once. At the end P is
written in one step (a temporary file renamed) and P.partial removed; a finished P is replaced by a
rerun, and an existing P that is not a notes file is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import threading
import time
from typing import Any, BinaryIO

import jax

from heal_jax.checkpoint import fingerprint
from heal_jax.checkpoint.restore import LoadedModel
from heal_jax.data import templates
from heal_jax.data.tokenizer import Tokenizer
from heal_jax.eval import output as eval_output
from heal_jax.eval import records
from heal_jax.infer import generate
from heal_jax.infer.sampling import Sampling
from heal_jax.train.metrics import format_eta

PARTIAL_SUFFIX = ".partial"
_ROW_KEYS = ("id", "text", "new_tokens", "ended")


@dataclasses.dataclass(frozen=True)
class Counts:
  """read = kept + generated = written."""
  read: int
  kept: int
  generated: int
  written: int


class Interrupted(Exception):
  """The run was asked to stop (SIGTERM) between batches; the finished ones are in the partial file."""


def partial_path(output: pathlib.Path) -> pathlib.Path:
  """Where a run writing `output` keeps its finished batches."""
  return output.with_name(output.name + PARTIAL_SUFFIX)


def read_conversations(path: pathlib.Path) -> list[records.Record]:
  """The records of C, each checked to be a conversation; InputError names the line and id."""
  rows = records.read(path)
  for row in rows:
    try:
      templates.normalize_conversation(row.text)
    except ValueError as e:
      raise records.InputError(f"{path}:{row.line} (id {row.key!r}): {e}") from None
  return rows


def check_output(output: pathlib.Path) -> None:
  """InputError for an output that would destroy something: a name ending in .partial (another run's
  progress) or an existing file that is not a notes file of this command (e.g. a checkpoint's manifest)."""
  if output.name.endswith(PARTIAL_SUFFIX):
    raise records.InputError(f"{output}: choose a name not ending in {PARTIAL_SUFFIX} (the name of a run's progress)")
  if not eval_output.is_rows_file(output, _ROW_KEYS):
    raise records.InputError(f"{output} exists and is not a notes file of heal-jax generate: remove it or choose "
                             "another --output")


def file_sha256(path: pathlib.Path) -> str:
  """Hex SHA-256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def run_settings(conversations: pathlib.Path, rows: Sequence[records.Record], *, max_new_tokens: int,
                 sampling: Sampling, seed: int, batch_size: int, dtype: str | None) -> dict[str, Any]:
  """What decides the notes, less the model (`model_fingerprint`, added once it is loaded). Greedy
  runs record no seed, top_k or top_p (they change nothing); the batch size is at most len(rows)."""
  greedy = sampling.temperature == 0
  return {"conversations_sha256": file_sha256(conversations), "max_new_tokens": max_new_tokens,
          "temperature": sampling.temperature, "top_k": None if greedy else sampling.top_k,
          "top_p": None if greedy else sampling.top_p, "seed": None if greedy else seed,
          "batch_size": min(batch_size, len(rows)), "dtype": dtype}


def weights_digest(loaded: LoadedModel) -> str:
  """`loaded.weights_digest` (the checksums stored with the weights, which the load checked); without
  one, a SHA-256 of `fingerprint.fingerprints(loaded.params)`: for host arrays summed with NumPy
  (~150M values/s a core, no device memory), so take it before the weights are placed on devices
  (weights `placement.load` read onto a mesh are summed there, in one call)."""
  return loaded.weights_digest or hashlib.sha256(
      json.dumps(fingerprint.fingerprints(loaded.params), sort_keys=True).encode()).hexdigest()


def model_fingerprint(loaded: LoadedModel) -> str:
  """A digest of the weights (`weights_digest`), the model config and the tokenizer model file: the
  same for one model however its path is written."""
  # scan_layers is how the layers are laid out (`--mesh` reads a converted checkpoint per layer), not the model
  config = {k: v for k, v in dataclasses.asdict(loaded.cfg).items() if k != "scan_layers"}
  digest = hashlib.sha256(json.dumps({"weights": weights_digest(loaded), "config": config},
                                     sort_keys=True, default=str).encode())
  if loaded.tokenizer_dir is not None:
    digest.update(file_sha256(loaded.tokenizer_dir / "tokenizer.model").encode())
  return digest.hexdigest()[:32]


def _check_settings(partial: pathlib.Path, head: Mapping[str, Any], now: Mapping[str, Any]) -> None:
  saved = head["settings"]
  changed = [f"{key} {saved.get(key)!r} (now {value!r})" for key, value in now.items() if saved.get(key) != value]
  if changed:
    raise records.InputError(f"{partial} holds notes of an earlier run (model {head.get('model')}) made with "
                             f"{'; '.join(changed)}: rerun with its settings to continue it, or remove the file to "
                             "start over")


def _parse_partial(partial: pathlib.Path, data: bytes, settings: Mapping[str, Any],
                   rows: Sequence[records.Record]) -> tuple[int, list[tuple[int, int, generate.Note]]]:
  """(end offset of the settings line, [(end offset of the line, index, note)] of the complete lines
  after it)."""
  lines = data.split(b"\n")[:-1]  # the last piece is b"" unless a write was cut short: dropped
  try:
    head = json.loads(lines[0]) if lines else None
    if not (isinstance(head, dict) and isinstance(head.get("settings"), dict)):
      raise ValueError
  except (UnicodeDecodeError, ValueError):
    raise records.InputError(f"{partial}:1: not the settings line of a heal-jax generate run: remove the file "
                             "to start over") from None
  _check_settings(partial, head, settings)
  out, offset = [], len(lines[0]) + 1
  for n, line in enumerate(lines[1:], 2):
    offset += len(line) + 1
    try:
      row = json.loads(line)
      index, note = row["index"], generate.Note(row["text"], row["new_tokens"], row["ended"])
      valid = (type(index) is int and type(note.new_tokens) is int and isinstance(note.text, str)  # pylint: disable=unidiomatic-typecheck
               and note.ended in generate.ENDINGS and note.new_tokens >= 0)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
      valid = False
    if not valid:
      raise records.InputError(f"{partial}:{n}: not a note row: remove the file to start over")
    if not (0 <= index < len(rows) and str(row.get("id")) == rows[index].key):
      raise records.InputError(f"{partial}:{n}: conversation {index!r} with id {row.get('id')!r} is not in the "
                               "conversations file: remove the file to start over")
    out.append((offset, index, note))
  return len(lines[0]) + 1, out


def read_partial(partial: pathlib.Path, settings: Mapping[str, Any],
                 rows: Sequence[records.Record]) -> dict[int, generate.Note]:
  """The notes an earlier run left in `partial` ({} when there is none), by conversation index.

  The settings line must agree with `settings` on every key `settings` has (so the CLI can check
  everything but the model before loading it). A last line cut short by a kill is dropped; any
  other bad line is an InputError naming it.
  """
  if not partial.exists() or partial.stat().st_size == 0:
    return {}
  return {index: note for _, index, note in _parse_partial(partial, partial.read_bytes(), settings, rows)[1]}


@contextlib.contextmanager
def open_partial(output: pathlib.Path) -> Iterator[BinaryIO]:
  """`output`.partial opened for reading and appending (created if missing) and flock-ed for the
  block: InputError at once when another run holds it. Where the filesystem has no locks, unlocked."""
  partial = partial_path(output)
  with open(partial, "ab+") as f:
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise records.InputError(f"{partial}: another heal-jax generate is writing this output") from None
    try:
      yield f
    finally:  # nothing written (e.g. the model failed to load): no empty file left behind
      if os.fstat(f.fileno()).st_size == 0:
        partial.unlink(missing_ok=True)


def _append(f: BinaryIO, lines: Sequence[Mapping[str, Any]]) -> None:
  f.write("".join(json.dumps(line) + "\n" for line in lines).encode())
  f.flush()
  os.fsync(f.fileno())


def _note_row(row: records.Record, note: generate.Note) -> dict[str, Any]:
  return {"id": row.id, "text": note.text, "new_tokens": note.new_tokens, "ended": note.ended}


def write_notes(loaded: LoadedModel, rows: Sequence[records.Record], output: pathlib.Path, *,
                conversations: pathlib.Path, max_new_tokens: int, sampling: Sampling, seed: int,
                batch_size: int, dtype: str | None, log: Callable[[str], None],
                stop: threading.Event | None = None, partial_file: BinaryIO | None = None,
                width: int | None = None, lookahead: int = 0) -> Counts:
  """Generates the notes of `rows` (read from `conversations`) into `output`, continuing
  `output`.partial (see the module doc). Raises Interrupted when `stop` is set between batches.

  partial_file: `open_partial(output)`'s file when the caller took the lock already (before loading
  the model, so that a second run stops at once); None: taken here.
  width: rows of each decode program (`generate.generate_batches`; a multiple of the mesh's data x fsdp).
  The mesh and `lookahead` (`generate.generate_batches`) are not settings: a rerun on other devices or
  with other drafts continues the file (its float sums may round differently, so a greedy near-tie can
  go the other way in the notes made there).
  """
  check_output(output)
  if partial_file is None:
    with open_partial(output) as f:
      return write_notes(loaded, rows, output, conversations=conversations, max_new_tokens=max_new_tokens,
                         sampling=sampling, seed=seed, batch_size=batch_size, dtype=dtype, log=log, stop=stop,
                         partial_file=f, width=width, lookahead=lookahead)
  f, partial = partial_file, partial_path(output)
  settings = run_settings(conversations, rows, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                          batch_size=batch_size, dtype=dtype)
  settings["model_fingerprint"] = model_fingerprint(loaded)
  loaded = dataclasses.replace(loaded, params=jax.device_put(loaded.params))
  labels = [f"{conversations}:{row.line} (id {row.key!r})" for row in rows]
  plan = generate.plan_notes(loaded, [row.text for row in rows], max_new_tokens=max_new_tokens,
                             batch_size=settings["batch_size"], labels=labels, log=log)
  f.seek(0)
  data = f.read()
  keep_to, found = _parse_partial(partial, data, settings, rows) if data else (0, [])
  kept = {index: note for _, index, note in found}
  done = {b for b, batch in enumerate(plan.batches) if all(i in kept for i in batch)}
  notes = {i: kept[i] for b in done for i in plan.batches[b]}
  for offset, index, _ in found:  # whole batches are appended in turn: only the last can be torn
    if index not in notes:
      break
    keep_to = offset
  f.truncate(keep_to)  # the rows of an unfinished batch (and a torn line) go: they are made again
  if keep_to == 0:
    _append(f, [{"settings": settings, "model": loaded.source}])
  kept_count = len(notes)
  if notes:
    log(f"keeping {kept_count} note(s) of an earlier run from {partial}; {len(rows) - kept_count} to generate")
  start = time.monotonic()
  for b, batch in generate.generate_batches(loaded.cfg, loaded.params, Tokenizer(loaded.tokenizer_dir), plan,
                                            sampling=sampling, seed=seed, skip=done, width=width,
                                            lookahead=lookahead):
    _append(f, [{"index": i, **_note_row(rows[i], note)} for i, note in batch])
    notes.update(batch)
    elapsed = time.monotonic() - start  # the first batch's time includes compiling: a pessimistic start
    left = elapsed / (len(notes) - kept_count) * (len(rows) - len(notes))
    log(f"batch {b + 1} of {len(plan.batches)}: {len(notes)} of {len(rows)} notes, {format_eta(elapsed)} elapsed, "
        f"about {format_eta(left)} left")
    if stop is not None and stop.is_set() and len(notes) < len(rows):
      raise Interrupted(f"{len(notes)} of {len(rows)} notes are kept in {partial}")
  generate.warn_unfinished(list(notes.values()), log)
  with eval_output.whole_file(output, "wb") as out:
    _append(out, [_note_row(row, notes[i]) for i, row in enumerate(rows)])
  partial.unlink()
  return Counts(read=len(rows), kept=kept_count, generated=len(rows) - kept_count, written=len(rows))
