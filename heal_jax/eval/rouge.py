"""ROUGE for clinical notes, on the full note and on ACI-Bench's four divisions.

Scores are `rouge-score`'s F-measures with its default tokenizer (lowercase, split on anything that is not
[a-z0-9]) and no stemming, as ACI-Bench's `evaluation/evaluate_fullnote.py` (which calls HF `evaluate`'s
`rouge`, a thin wrapper over `rouge-score`). ROUGE-Lsum treats each line as a sentence, so notes keep their
newlines.

Division splitting re-implements ACI-Bench's `sectiontagger.SectionTagger.divide_note_by_metasections`:
- A line is a section header when it matches one of `_HEADERS` (case-insensitive): a pattern written with a
  trailing ':' matches a line that starts with the words and a colon, or a line that holds only the words; a
  pattern without ':' matches any line that starts with the words. Words may be separated by any whitespace.
  A line starting with upper-case `IMPRESSION` that matched nothing else is an assessment_and_plan header.
- Text before the first header is subjective.
- Each division is one contiguous span: it starts at the first header of that division and ends where the
  next division's first header starts (or at the end of the note). Headers the table does not list
  (MEDICATIONS, ALLERGIES, FAMILY HISTORY, MEDICAL HISTORY, VITALS, INSTRUCTIONS, ...) and later repeats of a
  division stay in whichever span they fall in; in ACI-Bench notes that puts VITALS (just before PHYSICAL
  EXAM) in subjective and INSTRUCTIONS in assessment_and_plan, as the official scorer does.
- A division a note lacks is scored as the official scorer's placeholder text `#####EMPTY#####` (so a
  division missing from both notes scores 1.0 in ROUGE-1/L/Lsum but 0.0 in ROUGE-2, the placeholder
  being one word with no pairs, as in the official scorer; missing from one of them, 0.0).
Difference from the official script: it rewrites newlines inside a division as the token `__lf1__` before
scoring, which adds an `lf1` word per line and makes its division ROUGE-Lsum equal to ROUGE-L; here division
texts keep their real newlines.
"""

from __future__ import annotations

import re
from typing import Mapping

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
DIVISIONS = ("subjective", "objective_exam", "objective_results", "assessment_and_plan")
EMPTY_TAG = "#####EMPTY#####"

# (division, patterns) in the official table's order; the first pattern that matches a line wins.
_HEADERS = (
    ("subjective", ("cc :", "chief complaint :", "reason for visit :", "CHIEF COMPLAINT")),
    ("subjective", ("history :", "history of present illness :", "history of present illness", "hpi :", "hpi",
                    "hpi notes :", "interval history :", "interval hx :", "subjective :",
                    "HISTORY OF PRESENT ILLNESS")),
    ("subjective", ("ros :", "review of system :", "review of systems :")),
    ("subjective", ("SOCIAL HISTORY", "PAST HISTORY")),
    ("objective_exam", ("physical exam :", "physical examination :", "pe :", "physical findings :",
                        "examination :", "exam :", "PHYSICAL EXAMINATION", "PHYSICAL EXAM")),
    ("objective_exam", ("VITALS REVIEWED",)),
    ("objective_results", ("results :", "findings :", "RESULTS")),
    ("assessment_and_plan", ("assessment :", "a:")),
    ("assessment_and_plan", ("plan :", "plan of care :", "p:", "medical decision-making plan :", "summary plan")),
    ("assessment_and_plan", ("ap :", "a / p :", "assessment and plan :", "assessment & plan :",
                             "disposition / plan :", "ASSESSMENT AND PLAN")),
)
_IMPRESSION = re.compile(r"\s*IMPRESSION")


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
  """One regex per header group, as the official tagger builds it."""
  starts, alone = [], []
  for p in patterns:
    starts.append("(" + re.escape(p).replace(r"\ ", r"\s*") + ")")
    if p.endswith(":"):
      alone.append("(" + re.escape(p[:-1]).replace(r"\ ", r"\s*") + ")")
  regex = r"\s*(" + "|".join(starts) + r").*"
  if alone:
    regex = "(" + regex + r"|\s*(" + "|".join(alone) + r")\s*$)"
  return re.compile(regex, re.IGNORECASE)


_HEADER_REGEXES = tuple((division, _compile(patterns)) for division, patterns in _HEADERS)


def _header_division(line: str) -> str | None:
  for division, regex in _HEADER_REGEXES:
    if regex.match(line):
      return division
  if _IMPRESSION.match(line):
    return "assessment_and_plan"
  return None


def split_divisions(note: str) -> dict[str, str]:
  """Splits a note into ACI-Bench divisions; divisions without a header are absent from the result."""
  note = note.replace("__lf1__", "\n")
  starts: dict[str, int] = {}
  offset = 0
  for i, line in enumerate(note.split("\n")):
    division = _header_division(line)
    if i == 0 and division is None:
      division = "subjective"  # text before the first header
    if division is not None and division not in starts:
      starts[division] = offset
    offset += len(line) + 1
  ordered = sorted(starts.items(), key=lambda kv: kv[1])
  ends = [start for _, start in ordered[1:]] + [len(note)]
  return {division: note[start:end] for (division, start), end in zip(ordered, ends)}


def make_scorer() -> rouge_scorer.RougeScorer:
  """ROUGE-1/2/L/Lsum without stemming, the ACI-Bench setting."""
  return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge(prediction: str, reference: str, scorer: rouge_scorer.RougeScorer | None = None) -> dict[str, float]:
  """F-measures of ROUGE-1/2/L/Lsum of `prediction` against `reference`."""
  scorer = scorer or make_scorer()
  scores = scorer.score(reference, prediction)
  return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def note_rouge(prediction: str, reference: str,
               scorer: rouge_scorer.RougeScorer | None = None) -> dict[str, float]:
  """ROUGE on the full note (`rouge1`, ...) and per division (`subjective_rouge1`, ...), with
  `<division>_in_reference` 1.0 where the reference has that division, else 0.0 (its mean over notes
  is the share of references that have it: where it is low, the division's ROUGE is mostly the
  placeholder's, 1.0 or 0.0)."""
  scorer = scorer or make_scorer()
  prediction = prediction.replace("__lf1__", "\n")
  reference = reference.replace("__lf1__", "\n")
  out = rouge(prediction, reference, scorer)
  pred_div, ref_div = split_divisions(prediction), split_divisions(reference)
  for division in DIVISIONS:
    scores = rouge(pred_div.get(division, EMPTY_TAG), ref_div.get(division, EMPTY_TAG), scorer)
    out.update({f"{division}_{name}": value for name, value in scores.items()})
    out[f"{division}_in_reference"] = float(division in ref_div)
  return out


def mean_scores(rows: list[Mapping[str, float]]) -> dict[str, float]:
  """Mean of each key over rows (the corpus score ACI-Bench reports)."""
  if not rows:
    return {}
  return {key: sum(float(r[key]) for r in rows) / len(rows) for key in rows[0]}
