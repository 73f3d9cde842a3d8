"""The note rubric's precision side on planted errors, a development set kept apart from the correlation study.

`bench/rubric_correlation.py` measures the rubric against people on 200 summaries of MTS-Dialog's
*validation* dialogues; tuning the rubric by reading those rows would overfit them. This bench builds its own
cases from MTS-Dialog's *training* split (1201 dialogues, none in the correlation study) and asks the question
the correlation study's AUC asks: does incorrect_rate + irrelevant_rate rank notes with a wrong or
unsupported statement above notes without one?

For each training row, the "generated note" is the human-written section text itself (a correct clinical
paraphrase of the dialogue: the negative case) or a copy with one planted error (a positive case), scored by
`heal_jax.eval.notes.score_note(note, reference="", conversation=dialogue)`: the dialogue is the only source,
which is the hard half of the rubric (clinical wording against lay speech). Plantings, each applied to the
first place it fits and skipped for rows where none fits:
- added: a sentence of another row's section text (same section header, another dialogue) appended;
- number: the first number changed (n -> n + 1 for n < 3 else 2n, e.g. "20 mg" -> "40 mg");
- side: the first left/right swapped;
- gender: every he/she, his/her, him, male/female, man/woman, Mr./Ms./Mrs. swapped;
- negation: the first negation removed ("denies" -> "reports", "no X" -> "X", "not" dropped) or, where the
  text has none, "has"/"is"/"was" negated.
Nothing is fitted: the rubric has no parameter this bench sets. Prints ROC-AUC (ties count one half) of the
clean notes against each planting and against all plantings pooled, and the share of clean notes flagged.
`--data` may also be an ACI-Bench CSV (columns dialogue, note; ../shared/data/aci-bench/challenge_data):
whole notes of long conversations, a corpus the rubric's rules were not developed on.

Usage: python bench/rubric_planted.py [--data DIR] [--rows N] [--seed S]
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import random
import re
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from rubric_correlation import roc_auc  # pylint: disable=wrong-import-position

from heal_jax.eval import notes  # pylint: disable=wrong-import-position

DEFAULT_DATA = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mts-dialog" / "Main-Dataset"
                / "MTS-Dialog-TrainingSet.csv")

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")
_SIDE = re.compile(r"\b(left|right|Left|Right)\b")
_GENDER = {"he": "she", "she": "he", "his": "her", "her": "his", "him": "her", "male": "female",
           "female": "male", "man": "woman", "woman": "man", "mr.": "ms.", "ms.": "mr.", "mrs.": "mr."}
_GENDER_WORD = re.compile(r"\b(he|she|his|her|him|male|female|man|woman|mr\.|ms\.|mrs\.)(?![\w])", re.IGNORECASE)
_NEGATIONS = ((re.compile(r"\bdenies\b", re.I), "reports"), (re.compile(r"\bdenied\b", re.I), "reported"),
              (re.compile(r"\bno (?=[a-z])", re.I), ""), (re.compile(r"\bnot ", re.I), ""),
              (re.compile(r"\bnever ", re.I), ""))
_AFFIRMATIONS = ((re.compile(r"\bhas\b"), "does not have"), (re.compile(r"\bis\b"), "is not"),
                 (re.compile(r"\bwas\b"), "was not"))


def _keep_case(old: str, new: str) -> str:
  return new[:1].upper() + new[1:] if old[:1].isupper() else new


def plant_number(text: str) -> str | None:
  m = _NUMBER.search(text)
  if not m:
    return None
  value = float(m.group())
  new = value + 1 if value < 3 else 2 * value
  new_text = str(int(new)) if new == int(new) and "." not in m.group() else f"{new:g}"
  return text[:m.start()] + new_text + text[m.end():]


def plant_side(text: str) -> str | None:
  m = _SIDE.search(text)
  if not m:
    return None
  swapped = {"left": "right", "right": "left"}[m.group().lower()]
  return text[:m.start()] + _keep_case(m.group(), swapped) + text[m.end():]


def plant_gender(text: str) -> str | None:
  if not _GENDER_WORD.search(text):
    return None
  return _GENDER_WORD.sub(lambda m: _keep_case(m.group(), _GENDER[m.group().lower()]), text)


def plant_negation(text: str) -> str | None:
  for pattern, replacement in _NEGATIONS + _AFFIRMATIONS:
    m = pattern.search(text)
    if m:
      out = text[:m.start()] + _keep_case(m.group(), replacement) + text[m.end():]
      return out[:1].upper() + out[1:]
  return None


def plant_added(text: str, others: list[str], rng: random.Random) -> str | None:
  sentences = [s for o in others for s in _SENTENCE.split(o.strip()) if len(s.split()) >= 3]
  if not sentences:
    return None
  return text.rstrip() + " " + rng.choice(sentences)


def _as_mts(row: dict[str, str]) -> dict[str, str]:
  """An MTS-Dialog row as is; an ACI-Bench row (dialogue, note) as one with a single section header."""
  if "section_text" in row:
    return row
  return {"section_header": "note", "section_text": row["note"], "dialogue": row["dialogue"]}


def cases(rows: list[dict[str, str]], seed: int) -> dict[str, list[tuple[str, str]]]:
  """{"clean" or planting: [(note, dialogue)]}."""
  rng = random.Random(seed)
  by_header: dict[str, list[int]] = {}
  for i, r in enumerate(rows):
    by_header.setdefault(r["section_header"], []).append(i)
  out: dict[str, list[tuple[str, str]]] = {k: [] for k in ("clean", "added", "number", "side", "gender", "negation")}
  for i, r in enumerate(rows):
    text, dialogue = r["section_text"], r["dialogue"]
    out["clean"].append((text, dialogue))
    others = [rows[j]["section_text"] for j in rng.sample(by_header[r["section_header"]],
                                                          min(3, len(by_header[r["section_header"]])))
              if rows[j]["dialogue"] != dialogue]
    for name, planted in (("added", plant_added(text, others, rng)), ("number", plant_number(text)),
                          ("side", plant_side(text)), ("gender", plant_gender(text)),
                          ("negation", plant_negation(text))):
      if planted is not None and planted != text:
        out[name].append((planted, dialogue))
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
  parser.add_argument("--rows", type=int, default=0, help="first N rows only (0: all)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if not args.data.is_file():
    print(f"{args.data}: not found (MTS-Dialog's training split, see ../shared/data/README.md)", file=sys.stderr)
    return 2
  with open(args.data, encoding="utf-8") as f:
    rows = [_as_mts(r) for r in csv.DictReader(f)]
  if args.rows:
    rows = rows[:args.rows]
  start = time.perf_counter()
  flags = {name: np.array([(lambda s: s["incorrect_rate"] + s["irrelevant_rate"])(
      notes.score_note(note, "", dialogue)) for note, dialogue in group])
           for name, group in cases(rows, args.seed).items()}
  seconds = time.perf_counter() - start
  clean = flags["clean"]
  print(f"{args.data.name}: {len(rows)} rows, {sum(len(v) for v in flags.values())} notes scored in "
        f"{seconds:.1f} s; clean notes flagged: {np.mean(clean > 0):.3f}")
  result = {"clean_flagged": round(float(np.mean(clean > 0)), 4)}
  planted = [k for k in flags if k != "clean"]
  for name in planted + ["pooled"]:
    pos = np.concatenate([flags[k] for k in planted]) if name == "pooled" else flags[name]
    auc = roc_auc(np.concatenate([clean, pos]), np.r_[np.zeros(len(clean)), np.ones(len(pos))])
    print(f"{name:<9} n={len(pos):>5}  flagged {np.mean(pos > 0):.3f}  AUC vs clean {auc:.3f}")
    result[f"auc_{name}"] = round(auc, 4)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
