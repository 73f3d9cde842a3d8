"""Note quality: ROUGE plus an automatic, rule-based form of HEAL's clinician rubric.

HEAL's clinicians counted missed, incorrect and irrelevant information in generated notes. Here each note is
broken into facts by `heal_jax.eval.facts` (one fact per clause, with atomic attributes: polarity, quantities,
laterality, drug names, gender) and the facts are matched as follows. "Source" is the reference note plus,
when given, the conversation.

Coverage: a fact with content terms T is covered by a text when some matching unit U of that text (a sentence
of a note; a turn together with the two turns before it in a conversation) holds at least half of T:
|T & U| / |T| >= 0.5.

Support: a generated fact is checked against the source in a looser form than coverage (for every
verdict below, on its terms and the source's): its note-style terms (`lexicon.STYLE_WORDS`: "significant
for", "approximately", "however", "past", ...; a clinician writes them, a conversation does not say them)
are left out; words said differently in notes and conversations map to one term on both sides
(`lexicon.SUPPORT_SYNONYMS`: disorders/conditions -> disease, drink -> alcohol, dad -> father, wife ->
married, appendectomy -> appendix + removal, ...); and, for the irrelevant check only, a term of 5+
letters also matches a source term that starts with it or that it starts with (tonsil / tonsillectomi;
not contin / incontin). A fact with
no terms left (only style) gets no verdict; one saying only that findings are normal (`lexicon.
NORMAL_FINDINGS`: "Noncontributory.", "Unremarkable.") is supported by any denial in the source. Missed
information uses the plain terms and coverage.

- Missed: a reference fact not covered by the generated note.
    missed_rate = missed reference facts / reference facts (0 when the reference has no facts).
- Incorrect: a generated fact that contradicts the source in one of these ways (checked in this order):
    quantity: a number with a unit whose anchor the source states with that unit only with other values,
      when the source gives this value with this unit only after other drugs' names ("metformin 10 mg"
      where the source has "metformin 1000 mg" and "lisinopril 10 mg"; "increase lisinopril from 10 mg to
      20 mg" supports lisinopril 20 mg; a pain score "4 out of 10" supports no dose); or a
      number whose value the source never states with a compatible unit, while the source states a
      different value with the same unit for the same anchor word (or any different age);
    laterality: a side (left/right/bilateral) that no source fact holding all the fact's terms gives and
      that the source facts most like it (highest term Jaccard among those giving a side for an
      overlapping anchor) do not give;
    negation: the source facts on the same topic (term Jaccard >= 0.5, or one term set of at least two terms
      inside the other) that are most similar to it (highest Jaccard) all have the opposite polarity ("denies
      chest pain" vs "reports chest pain"; "Any chest pain?" answered "No");
    drug: a drug name the source never mentions, in a fact whose other terms a source fact naming another
      drug covers (a substitution: "losartan 20 mg daily" for "lisinopril 20 mg daily");
    gender: the clause's gender differs from the source's (the reference's first, else the conversation's:
      the doctor's words of address to the patient, else its descriptors; see `facts`)
      and no source fact with that gender covers it ("she suspected a pinched nerve" about a clinician,
      said so in the reference, is not the patient's gender).
    incorrect_rate = incorrect generated facts / generated facts.
- Irrelevant: a generated fact that is not incorrect and is not supported: under half its terms in one
  unit of the source by the support rules above, or
  stating a number the source never states, or naming a drug the source never mentions.
    irrelevant_rate = irrelevant generated facts / generated facts.
Beside the rubric, repeated_rate = generated facts whose terms the note already said (beyond once and
beyond the reference's count) / generated facts: repetition is neither missed, incorrect nor irrelevant
information, so the three rates do not see it.
Both generated-fact rates are 0 for a note with no facts. Facts supported by the conversation but absent from
the reference are neither missed nor irrelevant; without a conversation the reference alone is the source.

CLI: `heal-jax eval notes --predictions P --references R [--conversations C] [--output FILE.jsonl]`; each
input is JSONL of {"id": ..., "text": ...} matched by id. It prints the means as one JSON object (with
"notes" scored and "references_without_prediction", which the means leave out) and writes
one row per note to FILE: id, the three rates, repeated_rate, the fact counts (reference_facts, generated_facts, missed,
incorrect, irrelevant) and ROUGE-1/2/L/Lsum F-measures of the full note (rouge1, ...) and of each ACI-Bench
division (subjective_rouge1, ..., assessment_and_plan_rougeLsum).

Human review (HEAL's rubric filled in by a clinician): `--review-sheet FILE.csv` and `--read-review
FILE.csv`, see `heal_jax.eval.review_sheet`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import pathlib
import sys
from typing import Any, Mapping, Sequence

from heal_jax.eval import facts as facts_lib
from heal_jax.eval import output
from heal_jax.eval import records
from heal_jax.eval import review_sheet
from heal_jax.eval import rouge as rouge_lib

COVER_THRESHOLD = 0.5
ROW_KEYS = ("id", "missed_rate", "incorrect_rate", "irrelevant_rate")  # of every per-note row (also --read-review's)
Fact = facts_lib.Fact


@dataclasses.dataclass(frozen=True)
class Judgement:
  """Per-fact verdicts for one note."""
  reference_facts: tuple[Fact, ...]
  generated_facts: tuple[Fact, ...]
  missed: tuple[Fact, ...]
  incorrect: tuple[tuple[Fact, str], ...]  # (fact, reason)
  irrelevant: tuple[Fact, ...]
  repeated: tuple[Fact, ...] = ()  # generated facts saying again what the note said before (see `repeated`)


def coverage(terms: frozenset[str], units: Sequence[frozenset[str]], near: bool = False) -> float:
  """Largest fraction of `terms` found in one unit; with `near`, a term also matches a longer or shorter
  stem that starts with it (`_near`: a generated fact's support in the source)."""
  if not terms:
    return 1.0
  if not near:
    return max((len(terms & u) / len(terms) for u in units), default=0.0)
  return max((sum(_near(t, u) for t in terms) / len(terms) for u in units), default=0.0)


def _near(term: str, unit: frozenset[str]) -> bool:
  """`term` in `unit`, or (both at least 5 letters) one the start of the other: "tonsil" / "tonsillectomi";
  not "arthriti" / "osteoarthr", nor a prefixed form ("contin" / "incontin", "diabet" / "prediabet").
  Numbers match exactly."""
  if term in unit:
    return True
  return len(term) >= 5 and term.isalpha() and any(
      len(u) >= 5 and u.isalpha() and (u.startswith(term) or term.startswith(u)) for u in unit)


def _same_value(a: str, b: str) -> bool:
  """Equal numbers; a decade ("80s") equals every whole number in it."""
  for x, y in ((a, b), (b, a)):
    if x.endswith("0s"):
      return y == x or (y.isdigit() and int(x[:-1]) <= int(y) < int(x[:-1]) + 10)
  try:
    return float(a) == float(b)
  except ValueError:
    return a == b


def _quantity_verdict(fact: Fact, pool: Sequence[tuple[str, str | None, str | None]],
                      drug_anchors: frozenset[str]) -> str | None:
  """'contradicted', 'unsupported' or None (all quantities supported); `pool` is every quantity of the
  source, `drug_anchors` the stems of the drugs it names."""
  verdict = None
  for value, unit, anchor in fact.quantities:
    own = [v for v, u, a in pool if unit is not None and u == unit and anchor is not None and a == anchor]
    if own and not any(_same_value(value, v) for v in own):
      # The source gives this anchor's dose with this unit, not this value: only the same value with the
      # same unit and no other drug's name before it supports it ("from 10 mg to 20 mg" does; lisinopril's
      # 10 mg does not support "metformin 10 mg", nor does a pain score of 4 out of 10).
      if all(a in drug_anchors and a != anchor for v, u, a in pool if _same_value(value, v) and u == unit):
        return "contradicted"
      continue
    if any(_same_value(value, v) and (unit == u or unit is None or u is None) for v, u, _ in pool):
      continue
    if any(u == unit and not _same_value(value, v) and (unit == "yo" or (anchor is not None and a == anchor))
           for v, u, a in pool):
      return "contradicted"
    verdict = "unsupported"
  return verdict


def _laterality_contradicted(fact: Fact, source: Sequence[Fact]) -> bool:
  """A side the source facts most like this one (highest term Jaccard among those giving a side for an
  overlapping anchor) never give: "right knee pain" against "left knee pain ... the right knee is normal"."""
  for sides, anchor in fact.sides:
    if any(fact.terms <= f.terms and any(sides <= s for s, a in f.sides if a & anchor) for f in source):
      continue  # a source fact says all of it with this side ("... right knee pain after a fall")
    best, known = -1.0, set()
    for f in source:
      given = [s for s, a in f.sides if a & anchor]
      if not given:
        continue
      jaccard = len(fact.terms & f.terms) / len(fact.terms | f.terms)
      if jaccard > best:
        best, known = jaccard, set().union(*given)
      elif jaccard == best:
        known |= set().union(*given)
    if known and not sides <= known:
      return True
  return False


def _negation_contradicted(fact: Fact, source: Sequence[Fact]) -> bool:
  if fact.negated is None:
    return False
  best, polarities = 0.0, set()
  for f in source:
    if f.negated is None:
      continue
    common = fact.terms & f.terms
    jaccard = len(common) / len(fact.terms | f.terms)
    if jaccard < 0.5 and not (len(common) >= 2 and common in (fact.terms, f.terms)):
      continue
    if jaccard > best:
      best, polarities = jaccard, {f.negated}
    elif jaccard == best:
      polarities.add(f.negated)
  return polarities == {not fact.negated}


def _substituted(fact: Fact, source: Sequence[Fact]) -> bool:
  """Whether a source fact says the same apart from naming a different drug."""
  rest = fact.terms - {facts_lib.stem(d) for d in fact.drugs}
  return bool(rest) and any(f.drugs - fact.drugs and coverage(rest, [f.terms]) >= COVER_THRESHOLD
                            for f in source)


def judge_note(prediction: str, reference: str, conversation: str | None = None) -> Judgement:
  """Labels every reference fact (missed or not) and generated fact (incorrect, irrelevant or fine)."""
  pred = facts_lib.note_facts(prediction)
  ref = facts_lib.note_facts(reference)
  conv = facts_lib.conversation_facts(conversation) if conversation else None
  source = ref.facts + (conv.facts if conv else ())
  source_units = ref.units + (conv.units if conv else ())
  source_gender = ref.gender or (conv.gender if conv else None)
  source_drugs = frozenset().union(*[f.drugs for f in source])
  pool = [q for f in source for q in f.quantities]  # once per note, not per generated fact
  drug_anchors = frozenset(facts_lib.stem(d) for d in source_drugs)

  missed = tuple(f for f in ref.facts if coverage(f.terms, pred.units) < COVER_THRESHOLD)
  incorrect, irrelevant = [], []
  denial = any(f.negated for f in source)
  source = [facts_lib.support_terms(f) for f in source]
  source_units = facts_lib.support_units(source_units)
  for original in pred.facts:
    f = facts_lib.support_terms(original)
    if not f.terms:
      continue  # only note style ("However,")
    quantity = _quantity_verdict(f, pool, drug_anchors)
    unknown_drugs = f.drugs - source_drugs
    if quantity == "contradicted":
      incorrect.append((original, "quantity"))
    elif _laterality_contradicted(f, source):
      incorrect.append((original, "laterality"))
    elif _negation_contradicted(f, source):
      incorrect.append((original, "negation"))
    elif unknown_drugs and _substituted(f, source):
      incorrect.append((original, "drug"))
    elif f.gender and source_gender and f.gender != source_gender and not any(
        g.gender == f.gender and coverage(f.terms, [g.terms]) >= COVER_THRESHOLD for g in source):
      incorrect.append((original, "gender"))
    elif (coverage(f.terms, source_units, near=True) < COVER_THRESHOLD or quantity == "unsupported" or unknown_drugs) and not (
        denial and f.terms <= facts_lib.NORMAL_STEMS):
      irrelevant.append(original)
  return Judgement(ref.facts, pred.facts, missed, tuple(incorrect), tuple(irrelevant),
                   repeated(pred.facts, ref.facts))


def repeated(generated: Sequence[Fact], reference: Sequence[Fact]) -> tuple[Fact, ...]:
  """Generated facts whose terms the note already said, beyond once and beyond the reference's count
  of them (a reference may state a fact in two sections): repetition, reported beside the rubric."""
  in_reference, said = collections.Counter(f.terms for f in reference), collections.Counter()
  out = []
  for f in generated:
    said[f.terms] += 1
    if said[f.terms] > max(1, in_reference[f.terms]):
      out.append(f)
  return tuple(out)


def score_note(prediction: str, reference: str, conversation: str | None = None) -> dict[str, float]:
  """Rubric rates, fact counts and ROUGE (full note and divisions) of one generated note."""
  j = judge_note(prediction, reference, conversation)
  n_ref, n_gen = len(j.reference_facts), len(j.generated_facts)
  out = {
      "missed_rate": len(j.missed) / n_ref if n_ref else 0.0,
      "incorrect_rate": len(j.incorrect) / n_gen if n_gen else 0.0,
      "irrelevant_rate": len(j.irrelevant) / n_gen if n_gen else 0.0,
      "reference_facts": float(n_ref),
      "generated_facts": float(n_gen),
      "missed": float(len(j.missed)),
      "incorrect": float(len(j.incorrect)),
      "irrelevant": float(len(j.irrelevant)),
      "repeated_rate": len(j.repeated) / n_gen if n_gen else 0.0,
  }
  out.update(rouge_lib.note_rouge(prediction, reference))
  return out


def evaluate_notes(predictions: Mapping[Any, str], references: Mapping[Any, str],
                   conversations: Mapping[Any, str] | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Scores every predicted note; returns (means over notes, one row per note with its `id`)."""
  rows = []
  for key, prediction in predictions.items():
    if key not in references:
      raise KeyError(f"id {key!r} is in predictions but not in references")
    if conversations is not None and key not in conversations:
      raise KeyError(f"id {key!r} is in predictions but not in conversations")
    conversation = conversations[key] if conversations is not None else None
    rows.append({"id": key, **score_note(prediction, references[key], conversation)})
  means = rouge_lib.mean_scores([{k: v for k, v in r.items() if k != "id"} for r in rows])
  means["notes"] = float(len(rows))
  return means, rows


InputError = records.InputError


def read_jsonl(path: pathlib.Path) -> dict[str, str]:
  """{"id": ..., "text": ...} lines -> {str(id): text}, in file order (`records.read`'s checks)."""
  return {r.key: r.text for r in records.read(path)}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="heal-jax eval notes", description="ROUGE and rule-based HEAL rubric "
                                   "(missed / incorrect / irrelevant information) of generated notes.")
  parser.add_argument("--predictions", type=pathlib.Path, help="JSONL of {id, text} (required unless --read-review)")
  parser.add_argument("--references", type=pathlib.Path, help="JSONL of {id, text} (required unless --read-review)")
  parser.add_argument("--conversations", type=pathlib.Path, help="JSONL of {id, text}")
  parser.add_argument("--output", type=pathlib.Path, help="per-note rows (JSONL)")
  parser.add_argument("--review-sheet", type=pathlib.Path, metavar="FILE.csv",
                      help="also write a sheet for clinicians to fill in (rubric in FILE.instructions.txt)")
  parser.add_argument("--read-review", type=pathlib.Path, metavar="FILE.csv",
                      help="summarise a filled-in review sheet instead of scoring predictions")
  return parser


def _error(message: str) -> int:
  print(f"heal-jax eval notes: error: {message}", file=sys.stderr)
  return 2


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns the exit status (2 for bad input or an unwritable output)."""
  parser = _parser()
  args = parser.parse_args(argv)
  if args.read_review:
    if args.predictions or args.references or args.conversations or args.review_sheet:
      parser.error("--read-review takes no --predictions, --references, --conversations or --review-sheet")
    try:
      if args.output:
        output.check_writable(args.output, [args.read_review], ROW_KEYS)
      summary, rows = review_sheet.read_review_sheet(args.read_review)
      if args.output:
        output.write_rows(args.output, rows)
    except (OSError, InputError) as e:
      return _error(str(e))
    print(json.dumps(summary))
    return 0
  if not (args.predictions and args.references):
    parser.error("--predictions and --references are required (unless --read-review)")
  try:
    inputs = [args.predictions, args.references, args.conversations]
    if args.output:
      output.check_writable(args.output, inputs, ROW_KEYS)
    if args.review_sheet:
      output.check_writable(args.review_sheet, inputs)
      if args.review_sheet.exists():  # it may hold clinicians' counts by now
        raise OSError(f"{args.review_sheet} exists (a review sheet may already be filled in): remove it or "
                      "choose another name")
    predictions = read_jsonl(args.predictions)
    references = read_jsonl(args.references)
    conversations = read_jsonl(args.conversations) if args.conversations else None
    for key in predictions:
      if key not in references:
        raise InputError(f"id {key!r} from {args.predictions} is missing from {args.references}")
      if conversations is not None and key not in conversations:
        raise InputError(f"id {key!r} from {args.predictions} is missing from {args.conversations}")
  except (OSError, InputError) as e:
    return _error(str(e))
  unmatched = len(set(references) - set(predictions))
  if unmatched:
    print(f"heal-jax eval notes: {unmatched} reference(s) have no prediction; scoring the {len(predictions)} "
          "predicted notes", file=sys.stderr)
  empty = [key for key, text in predictions.items() if not text.strip()]
  if empty:  # scored as they are (missed_rate 1), but a blank note usually means generation went wrong
    print(f"heal-jax eval notes: warning: {len(empty)} of {len(predictions)} prediction(s) are empty or whitespace "
          f"only (ids {', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''})", file=sys.stderr)
  try:
    if args.review_sheet:
      sheet, instructions = review_sheet.write_review_sheet(args.review_sheet, predictions, references, conversations)
      print(f"heal-jax eval notes: wrote the review sheet {sheet} and its rubric {instructions}", file=sys.stderr)
    means, rows = evaluate_notes(predictions, references, conversations)
    if args.output:
      output.write_rows(args.output, rows)
  except OSError as e:
    return _error(str(e))
  means["references_without_prediction"] = float(unmatched)  # not in the means: score them as "" to count them
  print(json.dumps(means))
  return 0


if __name__ == "__main__":
  sys.exit(main())
