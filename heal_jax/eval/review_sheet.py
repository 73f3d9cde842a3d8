"""Human review sheets: HEAL's clinician rubric filled in by hand, in a spreadsheet.

Used by `heal-jax eval notes` (`heal_jax.eval.notes`):
  `... --review-sheet FILE.csv` also writes a sheet, one row per predicted note: id, conversation,
  reference_note, generated_note, reference_facts, generated_facts (the automatic fact counts of
  `heal_jax.eval.notes`, the denominators of its rates), and empty missed_count, incorrect_count, irrelevant_count, comments; the
  rubric goes to FILE.instructions.txt beside it (the CSV holds data only, so spreadsheets open it cleanly).
  `heal-jax eval notes --read-review FILE.csv [--output ROWS.jsonl]` reads a filled-in sheet and prints
  the automatic summary's rubric keys, defined the same way per note: missed_rate = missed_count /
  reference_facts, incorrect_rate = incorrect_count / generated_facts, irrelevant_rate = irrelevant_count /
  generated_facts (0 for a zero denominator; a clinician who counts more items than the fact count can
  push a rate over 1), their means over filled rows, the mean counts (missed, incorrect, irrelevant,
  reference_facts, generated_facts), notes (filled rows), and rows_read, rows_filled, rows_blank. A row
  is filled when its three counts are given, blank when none is; anything else is an error naming the
  row as a spreadsheet numbers it (the header is row 1).
"""

from __future__ import annotations

import csv
import math
import pathlib
import sys
from typing import Any, Mapping

from heal_jax.eval import facts as facts_lib
from heal_jax.eval import output
from heal_jax.eval import records
from heal_jax.eval import rouge as rouge_lib

InputError = records.InputError


REVIEW_COLUMNS = ("id", "conversation", "reference_note", "generated_note", "reference_facts", "generated_facts",
                  "missed_count", "incorrect_count", "irrelevant_count", "comments")
_COUNTS = ("missed_count", "incorrect_count", "irrelevant_count")
_EXCEL_CELL_LIMIT = 32767

REVIEW_INSTRUCTIONS = """\
HEAL note review: instructions for {sheet}

Each row of the sheet is one generated clinical note. Read the conversation (when present) and the reference
note, then the generated note, and fill in three whole numbers (0 or more) per row:

  missed_count      pieces of information in the reference note (or the conversation) that belong in the
                    note but are missing from the generated note
  incorrect_count   pieces of information in the generated note that contradict the conversation or the
                    reference (wrong value, side, drug, negation, sex, ...)
  irrelevant_count  pieces of information in the generated note that are not wrong but are not supported by
                    the conversation or the reference, or do not belong in the note
  comments          optional free text

A piece of information is one clinical statement (about one clause: "denies fever", "lisinopril 20 mg
daily"). reference_facts and generated_facts are the automatic counts of such statements in each note; the
summary divides by them (missed by reference_facts, incorrect and irrelevant by generated_facts) so human
and automatic rates are comparable. Leave them as they are unless a count is clearly wrong. A row whose
missed_count exceeds reference_facts, or incorrect_count + irrelevant_count exceeds generated_facts, is
refused as a likely typo; where the statements really are more (missed information that only the
conversation holds, say), raise reference_facts or generated_facts to the number you counted from.

Leave all three counts empty to skip a note; fill all three or none. Do not edit the id, the texts or the
header row. Save as CSV (comma or semicolon separated) and read it back with:
  heal-jax eval notes --read-review {sheet}
Errors name the row as your spreadsheet numbers it (the header is row 1).
"""


class ReviewError(InputError):
  """A malformed review sheet; the message names the row."""


def write_review_sheet(path: pathlib.Path, predictions: Mapping[str, str], references: Mapping[str, str],
                       conversations: Mapping[str, str] | None = None) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes the blank review sheet and PATH.instructions.txt beside it; returns both paths."""
  path = pathlib.Path(path)
  long_cells = 0
  # Whole or not at all: a failed run leaves no half sheet that would block the rerun.
  with output.whole_file(path, encoding="utf-8-sig", newline="") as f:  # the BOM makes Excel read UTF-8
    writer = csv.writer(f)
    writer.writerow(REVIEW_COLUMNS)
    for key, prediction in predictions.items():
      conversation = conversations[key] if conversations is not None else ""
      texts = (conversation, references[key], prediction)
      long_cells += sum(len(t) > _EXCEL_CELL_LIMIT for t in texts)
      writer.writerow([key, *texts, len(facts_lib.note_facts(references[key]).facts),
                       len(facts_lib.note_facts(prediction).facts), "", "", "", ""])
  if long_cells:
    print(f"heal-jax eval notes: warning: {long_cells} cell(s) of {path} exceed {_EXCEL_CELL_LIMIT} characters, "
          "which Excel truncates; use LibreOffice or another CSV editor", file=sys.stderr)
  instructions = path.with_suffix(".instructions.txt")
  instructions.write_text(REVIEW_INSTRUCTIONS.format(sheet=path.name), encoding="utf-8")
  return path, instructions


def _count(cell: str, where: str, column: str) -> float:
  try:
    value = float(cell)
  except ValueError:
    value = math.nan
  if not math.isfinite(value) or value < 0 or value != int(value):
    raise ReviewError(f"{where}: {column} must be a whole number >= 0, got {cell[:40]!r}")
  return value


def read_review_sheet(path: pathlib.Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """A filled-in sheet -> (summary, one row per filled note); see the module docstring."""
  path = pathlib.Path(path)
  with open(path, encoding="utf-8-sig", newline="") as f:
    header = f.readline()
    f.seek(0)
    reader = csv.DictReader(f, delimiter=max(",;\t", key=header.count))  # Excel may save with ";"
    columns = reader.fieldnames or []
    missing = [c for c in ("id", "reference_facts", "generated_facts", *_COUNTS) if c not in columns]
    if missing:
      raise ReviewError(f"{path}: row 1 (header) lacks column(s) {missing}")
    rows, seen, blank, read = [], set(), 0, 0
    for n, record in enumerate(reader, 2):
      read += 1
      key = (record.get("id") or "").strip()
      cells = {c: (record.get(c) or "").strip() for c in _COUNTS}
      if key and key in seen:
        raise ReviewError(f"{path}: row {n}: duplicate id {key!r}")
      seen.add(key)
      if not any(cells.values()):
        blank += 1
        continue
      if not key:
        raise ReviewError(f"{path}: row {n}: counts filled in a row without an id")
      empty = [c for c, v in cells.items() if not v]
      if empty:
        raise ReviewError(f"{path}: row {n} (id {key!r}): {', '.join(empty)} empty while other counts are filled; "
                          "fill all three counts or none")
      where = f"{path}: row {n} (id {key!r})"
      counts = {c: _count(v, where, c) for c, v in cells.items()}
      n_ref = _count((record.get("reference_facts") or "").strip(), where, "reference_facts")
      n_gen = _count((record.get("generated_facts") or "").strip(), where, "generated_facts")
      missed, incorrect, irrelevant = (counts[c] for c in _COUNTS)
      for column, count, facts, of in (("missed_count", missed, n_ref, "reference_facts"),
                                        ("incorrect_count + irrelevant_count", incorrect + irrelevant, n_gen,
                                         "generated_facts")):
        if count > facts:  # a typo (99999), or a fact count the reviewer found too low
          raise ReviewError(f"{where}: {column} {count:g} exceeds {of} {facts:g}, the statements there to count "
                            f"from; correct the count, or {of} where the automatic count missed statements")
      rows.append({"id": key, "missed_rate": missed / n_ref if n_ref else 0.0,
                   "incorrect_rate": incorrect / n_gen if n_gen else 0.0,
                   "irrelevant_rate": irrelevant / n_gen if n_gen else 0.0,
                   "reference_facts": n_ref, "generated_facts": n_gen,
                   "missed": missed, "incorrect": incorrect, "irrelevant": irrelevant})
  summary = rouge_lib.mean_scores([{k: v for k, v in r.items() if k != "id"} for r in rows]) if rows else {}
  summary.update(notes=float(len(rows)), rows_read=float(read), rows_filled=float(len(rows)), rows_blank=float(blank))
  return summary, rows
