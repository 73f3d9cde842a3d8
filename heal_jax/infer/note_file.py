"""Notes for a file of conversations, resumable: `heal-jax generate --conversations C.jsonl --output P.jsonl`.

C is JSONL of {"id": ..., "text": conversation} (`eval.records`; the same file `eval notes
--conversations` reads), each text in a form `generate --conversation` accepts. P gets one row per
conversation, in C's order: {"id", "text", "new_tokens", "ended"} (see `generate.Note`), which is the
predictions file of `heal-jax eval notes`.

Resuming: each finished batch is appended to P.jsonl.partial (fsynced), whose first line holds the
run's settings (model, a SHA-256 of C, the token limit, sampling, seed, batch size, dtype). A run started again
with the same settings keeps the notes of the batches that were finished and generates the rest; its
notes equal an uninterrupted run's, sampling included (`generate.generate_batches`). A changed setting
is an error naming it, so notes of two settings never mix; remove the partial file to start over.
At the end P is written in one step (a temporary file renamed) and the partial file removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from heal_jax.checkpoint.restore import LoadedModel
from heal_jax.data import templates
from heal_jax.eval import records
from heal_jax.infer import generate

PARTIAL_SUFFIX = ".partial"


@dataclasses.dataclass(frozen=True)
class Counts:
  """read = kept + generated = written."""
  read: int
  kept: int
  generated: int
  written: int


def partial_path(output: pathlib.Path) -> pathlib.Path:
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


def file_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _check_settings(partial: pathlib.Path, saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
  changed = [f"{key} {saved.get(key)!r} (now {value!r})" for key, value in now.items() if saved.get(key) != value]
  if changed:
    raise records.InputError(f"{partial} holds notes of an earlier run made with {'; '.join(changed)}: rerun with "
                             "its settings to continue it, or remove the file to start over")


def read_partial(partial: pathlib.Path, settings: Mapping[str, Any],
                 rows: Sequence[records.Record]) -> dict[int, generate.Note]:
  """The notes an earlier run left in `partial` ({} when there is none), by conversation index.

  The settings line must agree with `settings` on every key `settings` has (the model is compared
  once it is loaded). A last line cut short by a kill is dropped; any other bad line is an InputError
  naming it.
  """
  if not partial.exists():
    return {}
  lines = partial.read_bytes().split(b"\n")
  complete, last = lines[:-1], lines[-1]  # `last` is b"" unless a write was cut short
  del last
  if not complete:
    return {}
  try:
    head = json.loads(complete[0])
    saved = head["settings"]
  except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
    raise records.InputError(f"{partial}:1: not the settings line of a heal-jax generate run: remove the file "
                             "to start over") from None
  _check_settings(partial, saved, settings)
  notes: dict[int, generate.Note] = {}
  for n, line in enumerate(complete[1:], 2):
    try:
      row = json.loads(line)
      index = row["index"]
      note = generate.Note(row["text"], row["new_tokens"], row["ended"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
      raise records.InputError(f"{partial}:{n}: not a note row: remove the file to start over") from None
    if not (isinstance(index, int) and 0 <= index < len(rows) and str(row.get("id")) == rows[index].key):
      raise records.InputError(f"{partial}:{n}: conversation {index!r} with id {row.get('id')!r} is not in the "
                               "conversations file: remove the file to start over")
    notes[index] = note
  return notes


def _note_row(row: records.Record, note: generate.Note) -> dict[str, Any]:
  return {"id": row.id, "text": note.text, "new_tokens": note.new_tokens, "ended": note.ended}


def _append(f, lines: Sequence[Mapping[str, Any]]) -> None:
  f.write("".join(json.dumps(line) + "\n" for line in lines))
  f.flush()
  os.fsync(f.fileno())


def _write_at_once(path: pathlib.Path, lines: Sequence[Mapping[str, Any]]) -> None:
  staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(staging, "w", encoding="utf-8") as f:
    _append(f, lines)
  os.replace(staging, path)


def write_notes(loaded: LoadedModel, rows: Sequence[records.Record], output: pathlib.Path, *,
                settings: Mapping[str, Any], max_new_tokens: int, sampling: generate.Sampling, seed: int,
                batch_size: int, source: pathlib.Path,
                log: Callable[[str], None]) -> Counts:
  """Generates the notes of `rows` into `output`, continuing `output`.partial (see the module doc).

  settings: what the partial file must agree with, less the model (`loaded.source` is added here).
  source: C's path, for messages.
  """
  partial = partial_path(output)
  settings = {**settings, "model": loaded.source}
  kept = read_partial(partial, settings, rows)
  labels = [f"{source}:{row.line} (id {row.key!r})" for row in rows]
  plan = generate.plan_notes(loaded, [row.text for row in rows], max_new_tokens=max_new_tokens,
                             batch_size=min(batch_size, len(rows)), labels=labels, log=log)
  done = {b for b, batch in enumerate(plan.batches) if all(i in kept for i in batch)}
  notes = {i: kept[i] for b in done for i in plan.batches[b]}
  kept_count = len(notes)
  if notes:
    log(f"keeping {len(notes)} note(s) of an earlier run from {partial}; {len(rows) - len(notes)} to generate")
  head = {"settings": settings}
  _write_at_once(partial, [head] + [{"index": i, **_note_row(rows[i], n)} for i, n in sorted(notes.items())])
  with open(partial, "a", encoding="utf-8") as f:
    for b, batch in generate.generate_batches(loaded, plan, sampling=sampling, seed=seed, skip=done):
      _append(f, [{"index": i, **_note_row(rows[i], note)} for i, note in batch])
      notes.update(batch)
      log(f"batch {b + 1} of {len(plan.batches)}: {len(notes)} of {len(rows)} notes")
  generate.warn_unfinished(list(notes.values()), log)
  _write_at_once(output, [_note_row(row, notes[i]) for i, row in enumerate(rows)])
  partial.unlink()
  return Counts(read=len(rows), kept=kept_count, generated=len(rows) - kept_count, written=len(rows))
