"""A seeded synthetic corpus over HEAL's data tiers, for the embedded tiny default and the tests.

Files written by `generate_corpus` (JSONL, one record a line, UTF-8):
  general.jsonl       {"text"}: templated everyday prose (weather, travel, cooking, history, ...).
  medical.jsonl       {"text"}: structured trial abstracts whose counts, rates, hazard ratios, 95% CIs
                      and P values agree with each other.
  clinical.jsonl      {"conversation", "note"}: an ACI-Bench-style `[doctor]`/`[patient]` transcript and
                      its SOAP note. Both render one sampled `Encounter`, so every fact in the note
                      (drugs and doses, vitals, findings, denials, plan) is stated in the conversation.
  instructions.jsonl  {"prompt", "response", "explanation"}: in turn, write the note of a conversation,
                      list its medications, correct planted grammar errors in a note excerpt, summarise
                      an abstract. They use fresh encounters and abstracts, not the clinical file's.
Each file draws from its own seeded stream, so the same seed gives byte-identical files and changing
one file's size leaves the others unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import json
import math
import pathlib
import random
import re
import types

from heal_jax.data import synthetic_vocab as V
from heal_jax.data import templates

DEFAULT_SIZES = types.MappingProxyType(
    {"general": 2000, "medical": 800, "clinical": 400, "instructions": 800})


@dataclasses.dataclass(frozen=True)
class Med:
  name: str
  dose: str  # digits, e.g. "7.5"
  unit: str  # a key of V.UNIT
  freq: str  # conversation phrasing, a key of V.FREQ

  def spoken(self) -> str:
    return f"{self.name} {self.dose} {V.UNIT[self.unit]} {self.freq}"

  def written(self) -> str:
    return f"{self.name} {self.dose} {self.unit} {V.FREQ[self.freq]}"


@dataclasses.dataclass(frozen=True)
class Encounter:
  """The facts of one visit; (conversation, note) pairs hold one fact in both phrasings."""
  first: str
  last: str
  age: int
  sex: str  # "female" | "male"
  cc: str  # chief complaint, lower case
  opener: str
  duration: tuple[int, str]  # (3, "days")
  onset: tuple[str, str]
  quality: tuple[str, str] | None
  pain_score: int | None  # 0-10 scale
  meds: tuple[tuple[str, Med], ...]  # (V.CHRONIC key, current medication); one per condition
  allergy: tuple[str, str] | None
  positives: tuple[tuple[str, str], ...]  # (ROS system, term) endorsed
  negatives: tuple[tuple[str, str], ...]  # (ROS system, term) denied
  vitals: tuple[int, int, int, float, int]  # systolic, diastolic mmHg, heart rate, temp F, SpO2 %
  exam: tuple[tuple[str, str, str], ...]  # (system, conversation, note)
  results: tuple[tuple[str, str], ...]
  dx: tuple[str, str, str]  # (diagnosis, conversation reasoning, note reasoning)
  new_meds: tuple[Med, ...]
  orders: tuple[tuple[str, str], ...]
  advice: tuple[tuple[str, str], ...]
  referral: tuple[str, str] | None
  dose_changes: tuple[str | None, ...]  # per `meds` entry: new dose, or None to continue
  follow_up: tuple[int, str]  # (2, "weeks")


def _pronouns(sex: str) -> dict[str, str]:
  she, her = ("she", "her") if sex == "female" else ("he", "his")
  return dict(she=she, She=she.capitalize(), her=her, Her=her.capitalize())


def _join(items: list[str], conj: str = "and") -> str:
  """["a", "b", "c"] -> "a, b, and c"; ["a", "b"] -> "a and b"."""
  if len(items) == 1:
    return items[0]
  return f"{', '.join(items[:-1])}{',' if len(items) > 2 else ''} {conj} {items[-1]}"


def _cap(s: str) -> str:
  return s[:1].upper() + s[1:]


def sample_encounter(rng: random.Random) -> Encounter:
  """Samples one visit: a complaint from `V.COMPLAINTS`, 0-3 chronic conditions with their drugs, etc."""
  c = rng.choice(V.COMPLAINTS)
  side = rng.choice(("right", "left"))
  fill = lambda pair: tuple(s.replace("{side}", side) for s in pair)  # noqa: E731
  sex = rng.choice(("female", "male"))
  history = sorted(rng.sample(sorted(V.CHRONIC), rng.choice((0, 1, 1, 2, 2, 3))))
  meds = []
  for cond in history:
    name, doses, unit, freq = rng.choice(V.CHRONIC[cond][2])
    meds.append((cond, Med(name, rng.choice(doses), unit, freq)))
  allergy = rng.choice(V.ALLERGIES) if rng.random() < 0.3 else None
  blocked = {m.name for _, m in meds} | set(allergy[2] if allergy else ())
  options = [m for m in c.meds if m[0] not in blocked]
  new_meds = ()
  if options and rng.random() < 0.85:
    name, doses, unit, freq = rng.choice(options)
    new_meds = (Med(name, rng.choice(doses), unit, freq),)
  positives = tuple(rng.sample(c.positives, rng.randint(0, min(2, len(c.positives)))))
  taken = set(c.related) | {t for _, t in positives}
  pool = [(s, t) for s in V.ROS_ORDER for t in V.ROS[s] if t not in taken]
  negatives = tuple(sorted(rng.sample(pool, rng.randint(2, 5)), key=pool.index))
  fever = ("Constitutional", "fever") in positives
  vitals = (rng.randint(104, 168), rng.randint(62, 98), rng.randint(56, 108),
            round(rng.uniform(100.2, 102.4) if fever else rng.uniform(97.2, 99.4), 1), rng.randint(93, 100))
  exam = [(s, *fill(p)) for s, *p in rng.sample(c.exam, rng.randint(1, min(2, len(c.exam))))]
  covered = {s for s, _, _ in exam}
  exam += rng.sample([e for e in V.NORMAL_EXAM if e[0] not in covered], rng.randint(1, 2))
  dx_name, dx_conv, dx_note, dx_results = rng.choice(c.dx)
  results = [fill(r) for r in c.results + dx_results]
  for cond in history:
    if cond in V.CHRONIC_RESULTS and rng.random() < 0.7:
      conv, note, (lo, hi) = V.CHRONIC_RESULTS[cond]
      value = str(rng.randint(lo, hi)) if isinstance(lo, int) else f"{rng.uniform(lo, hi):.1f}"
      results.append((conv.format(v=value), note.format(v=value)))
  dose_changes = []
  for cond, med in meds:
    doses = next(d for n, d, _, _ in V.CHRONIC[cond][2] if n == med.name)
    higher = [d for d in doses if float(d) > float(med.dose)]
    dose_changes.append(rng.choice(higher) if higher and rng.random() < 0.25 else None)
  return Encounter(
      first=rng.choice(V.FEMALE if sex == "female" else V.MALE), last=rng.choice(V.LAST),
      age=rng.randint(19, 84), sex=sex, cc=c.cc.format(side=side),
      opener=rng.choice(c.opener).format(side=side),
      duration=(rng.randint(2, 6), rng.choice(("days", "weeks"))), onset=fill(rng.choice(c.onset)),
      quality=fill(rng.choice(c.quality)) if c.quality and rng.random() < 0.8 else None,
      pain_score=rng.randint(3, 9) if c.pain else None, meds=tuple(meds),
      allergy=allergy[:2] if allergy else None, positives=positives, negatives=negatives,
      vitals=vitals, exam=tuple(exam), results=tuple(results),
      dx=(dx_name.format(side=side), dx_conv, dx_note), new_meds=new_meds,
      orders=tuple(fill(o) for o in rng.sample(c.orders, rng.randint(0, len(c.orders)))),
      advice=tuple(fill(a) for a in rng.sample(c.advice, rng.randint(0, len(c.advice)))),
      referral=fill(rng.choice(c.referral)) if rng.random() < 0.4 else None,
      dose_changes=tuple(dose_changes),
      follow_up=rng.choice(((1, "week"), (2, "weeks"), (4, "weeks"), (3, "months"), (6, "months"))))


def _spoken(text: str) -> str:
  """ACI-Bench transcript style: lower case, a space before sentence punctuation (not decimals)."""
  return re.sub(r"\s*([,.?!])(?=\s|$)", r" \1", text.lower())


def render_conversation(enc: Encounter, rng: random.Random) -> str:
  """The visit as `[doctor] ...` / `[patient] ...` lines; `rng` picks only the wording."""
  turns = [("doctor", rng.choice((f"hi {enc.first}, how are you doing today?",
                                  f"good morning {enc.first}, nice to see you."))),
           ("patient", rng.choice(("i'm doing okay, thanks.", "i've been better.", "hanging in there.")))]
  if rng.random() < 0.6:
    question, answer = rng.choice(V.SMALL_TALK)
    turns += [("doctor", question), ("patient", f"{answer}.")]
  history = [V.CHRONIC[cond][1] for cond, _ in enc.meds]
  with_history = f" with a past medical history significant for {_join(history)}" if history else ""
  turns += [("doctor", f"{rng.choice(V.DICTATION)} {enc.first} {enc.last} is a {enc.age}-year-old "
                       f"{enc.sex}{with_history} who presents with {enc.cc}."), ("patient", "okay.")]
  n, unit = enc.duration
  turns += [("doctor", rng.choice(("so what brings you in today?", "so tell me what's going on."))),
            ("patient", f"{enc.opener} for about {n} {unit}."),
            ("doctor", rng.choice(("okay. how did it start?", "okay. do you remember how it started?"))),
            ("patient", f"{enc.onset[0]}.")]
  if enc.quality:
    turns += [("doctor", rng.choice(("can you describe it for me?", "what does it feel like?"))),
              ("patient", f"{enc.quality[0]}.")]
  if enc.pain_score is not None:
    turns += [("doctor", "on a scale of 0 to 10, how bad is the pain?"),
              ("patient", rng.choice((f"i'd say it's about a {enc.pain_score}.",
                                      f"maybe a {enc.pain_score}.")))]
  for _, term in enc.positives:
    turns += [("doctor", rng.choice((f"have you had any {term}?", f"any {term}?"))),
              ("patient", rng.choice((f"yeah, i've had some {term}.", f"yes, a little {term}.")))]
  turns += [("doctor", f"any {_join([t for _, t in enc.negatives], 'or')}?"),
            ("patient", rng.choice(("no, none of that.", "no.", "no, nothing like that.")))]
  if enc.meds:
    taking = _join([f"{m.spoken()} for {V.CHRONIC[c][1]}" for c, m in enc.meds])
    turns += [("doctor", "and what medications are you taking right now?"),
              ("patient", f"i take {taking}.")]
  else:
    turns += [("doctor", "are you taking any medications?"), ("patient", "no, nothing regularly.")]
  turns += [("doctor", "any allergies to medications?"),
            ("patient", f"i'm allergic to {enc.allergy[0]}." if enc.allergy else "no, no allergies.")]
  sbp, dbp, hr, temp, spo2 = enc.vitals
  turns += [("doctor", f"okay, let's take a look at you. your blood pressure today is {sbp} over {dbp}, "
                       f"your heart rate is {hr}, your temperature is {temp:.1f}, and your oxygen level "
                       f"is {spo2} percent on room air."),
            ("doctor", "on exam, " + ". ".join(conv for _, conv, _ in enc.exam) + "."),
            ("patient", "okay.")]
  if enc.results:
    turns += [("doctor", "i reviewed your results. " + ". ".join(r for r, _ in enc.results) + "."),
              ("patient", "okay.")]
  plan = [f"so for your {enc.cc}, {enc.dx[1]}."]
  plan += [f"i'm going to start you on {m.spoken()}." for m in enc.new_meds]
  plan += [f"i want you to {a}." for a, _ in enc.advice] + [f"{o}." for o, _ in enc.orders]
  plan += [f"{enc.referral[0]}."] if enc.referral else []
  turns += [("doctor", " ".join(plan)), ("patient", rng.choice(("okay, that sounds good.", "all right.")))]
  for (cond, med), new in zip(enc.meds, enc.dose_changes):
    said = (f"i want to increase the {med.name} to {new} {V.UNIT[med.unit]} {med.freq}" if new else
            f"let's continue the {med.spoken()}")
    turns += [("doctor", f"for your {V.CHRONIC[cond][1]}, {said}."), ("patient", "okay.")]
  back = f"{enc.follow_up[0]} {enc.follow_up[1]}"
  turns += [("doctor", f"i'd like to see you back in {back}. any questions?"),
            ("patient", "no, thank you.")]
  return "\n".join(f"[{who}] {_spoken(text)}" for who, text in turns)


def render_note(enc: Encounter) -> str:
  """The SOAP note of `enc`: CHIEF COMPLAINT ... ASSESSMENT AND PLAN (RESULTS only if any)."""
  p = _pronouns(enc.sex)
  name = f"{enc.first.capitalize()} {enc.last.capitalize()}"
  history = [V.CHRONIC[cond][0] for cond, _ in enc.meds]
  with_history = f" with a past medical history significant for {_join(history)}" if history else ""
  hpi = [f"{name} is a {enc.age}-year-old {enc.sex}{with_history} who presents with {enc.cc}.",
         f"{p['She']} reports {enc.cc} for {enc.duration[0]} {enc.duration[1]}. {enc.onset[1].format(**p)}"]
  if enc.quality:
    hpi[-1] += f" {p['She']} describes {enc.quality[1]}."
  if enc.pain_score is not None:
    hpi[-1] += f" {p['She']} rates the pain {enc.pain_score}/10."
  if enc.positives:
    hpi[-1] += f" {p['She']} also reports {_join([t for _, t in enc.positives])}."
  hpi[-1] += f" {p['She']} denies {_join([t for _, t in enc.negatives], 'or')}."
  meds = (f"{p['Her']} current medications include {_join([m.written() for _, m in enc.meds])}."
          if enc.meds else f"{p['She']} takes no regular medications.")
  allergy = (f"{p['She']} is allergic to {enc.allergy[1]}." if enc.allergy else
             f"{p['She']} has no known drug allergies.")
  hpi.append(f"{meds} {allergy}")
  ros = []
  for system in V.ROS_ORDER:
    yes = [t for s, t in enc.positives if s == system]
    no = [t for s, t in enc.negatives if s == system]
    if yes or no:
      parts = ([f"Endorses {_join(yes)}."] if yes else []) + ([f"Denies {_join(no, 'or')}."] if no else [])
      ros.append(f"• {system}: {' '.join(parts)}")
  sbp, dbp, hr, temp, spo2 = enc.vitals
  exam = [f"• Vitals: Blood pressure {sbp}/{dbp} mmHg, heart rate {hr} bpm, temperature {temp:.1f} F, "
          f"oxygen saturation {spo2}% on room air."]
  for system in dict.fromkeys(s for s, _, _ in enc.exam):
    exam.append(f"• {system}: {' '.join(n for s, _, n in enc.exam if s == system)}")
  problem = [f"{_cap(enc.dx[0])}.", f"• Medical Reasoning: {enc.dx[2]}"]
  treatment = [f"Start {m.written()}." for m in enc.new_meds] + [a for _, a in enc.advice]
  if treatment:
    problem.append(f"• Medical Treatment: {' '.join(treatment)}")
  if enc.orders:
    problem.append(f"• Additional Testing: {' '.join(o for _, o in enc.orders)}")
  if enc.referral:
    problem.append(f"• Specialist Referrals: {enc.referral[1]}")
  plan = ["\n".join(problem)]
  for (cond, med), new in zip(enc.meds, enc.dose_changes):
    act = (f"Increase {med.name} to {new} {med.unit} {V.FREQ[med.freq]}." if new else
           f"Continue {med.written()}.")
    plan.append(f"{_cap(V.CHRONIC[cond][0])}.\n• Medical Treatment: {act}")
  plan.append(f"{p['She']} will follow up in {enc.follow_up[0]} {enc.follow_up[1]}.")
  sections = [("CHIEF COMPLAINT", f"{_cap(enc.cc)}."), ("HISTORY OF PRESENT ILLNESS", "\n\n".join(hpi)),
              ("REVIEW OF SYSTEMS", "\n".join(ros)), ("PHYSICAL EXAM", "\n".join(exam))]
  if enc.results:
    sections.append(("RESULTS", "\n".join(_cap(n) for _, n in enc.results)))
  sections.append(("ASSESSMENT AND PLAN", "\n\n".join(plan)))
  return "\n\n".join(f"{head}\n\n{body}" for head, body in sections)


@dataclasses.dataclass(frozen=True)
class Trial:
  """One study behind a medical abstract; counts, rates, CI and P value are mutually consistent."""
  condition: str
  drug: str
  comparator: str
  design: tuple[str, str]  # (full, short)
  setting: str
  outcome: str
  background: str
  weeks: int
  mean_age: int
  women_pct: int
  n: tuple[int, int]  # (drug group, comparator group)
  events: tuple[int, int]
  hazard_ratio: float
  ci: tuple[float, float]  # 95%
  p_value: float
  discontinued_pct: tuple[float, float]


def sample_trial(rng: random.Random) -> Trial:
  """Samples a trial; the 95% CI and P value follow from a log hazard ratio and its standard error."""
  log_hr, se = rng.gauss(-0.15, 0.2), rng.uniform(0.05, 0.2)
  hr = math.exp(log_hr)
  n1 = rng.randint(60, 6000)
  n2 = n1 + rng.randint(-20, 20)
  rate = rng.uniform(0.05, 0.35)
  condition, drug = rng.choice(V.CONDITIONS), rng.choice(V.DRUGS)
  outcome, design = rng.choice(V.OUTCOMES), rng.choice(V.DESIGNS)
  return Trial(
      condition=condition, drug=drug, design=design,
      comparator="placebo" if "placebo" in design[0] else rng.choice(V.COMPARATORS),
      setting=rng.choice(V.SETTINGS), outcome=outcome,
      background=rng.choice(V.BACKGROUND).format(condition=condition, drug=drug, outcome=outcome),
      weeks=rng.choice((12, 24, 26, 48, 52, 104)), mean_age=rng.randint(38, 76),
      women_pct=rng.randint(20, 70),
      n=(n1, n2), events=(round(n1 * min(rate * hr, 0.9)), round(n2 * rate)), hazard_ratio=hr,
      ci=(math.exp(log_hr - 1.96 * se), math.exp(log_hr + 1.96 * se)),
      p_value=math.erfc(abs(log_hr) / se / math.sqrt(2)),
      discontinued_pct=(round(rng.uniform(1, 12), 1), round(rng.uniform(1, 12), 1)))


def _p(p: float) -> str:
  return "P<0.001" if p < 0.001 else f"P={p:.3f}"


def _effect(t: Trial) -> str:
  if t.ci[1] < 1:
    return "lowered"
  return "raised" if t.ci[0] > 1 else "did not significantly change"


def render_abstract(t: Trial) -> str:
  """Background / Methods / Results / Conclusions, one paragraph each."""
  (n1, n2), (e1, e2) = t.n, t.events
  hr = f"hazard ratio, {t.hazard_ratio:.2f}; 95% CI, {t.ci[0]:.2f} to {t.ci[1]:.2f}; {_p(t.p_value)}"
  conclusion = {"lowered": f"resulted in a lower risk of {t.outcome} than {t.comparator}",
                "raised": f"was associated with a higher risk of {t.outcome} than {t.comparator}",
                "did not significantly change": (f"did not significantly change the risk of {t.outcome} "
                                                 f"compared with {t.comparator}")}[_effect(t)]
  return (f"Background: {_cap(t.background)} We assessed {t.drug} in adults with {t.condition}.\n"
          f"Methods: In this {t.design[0]} conducted {t.setting}, {n1 + n2} patients with {t.condition} "
          f"received {t.drug} or {t.comparator}. The primary outcome was {t.outcome} at {t.weeks} weeks.\n"
          f"Results: The mean age was {t.mean_age} years, and {t.women_pct}% of the patients were women. "
          f"The primary outcome occurred in {e1} of {n1} patients ({100 * e1 / n1:.1f}%) in the "
          f"{t.drug} group and in {e2} of {n2} ({100 * e2 / n2:.1f}%) in the {t.comparator} group ({hr}). "
          f"Adverse events "
          f"leading to discontinuation occurred in {t.discontinued_pct[0]}% and {t.discontinued_pct[1]}%, "
          f"respectively.\n"
          f"Conclusions: Among patients with {t.condition}, {t.drug} {conclusion}.")


def _note_task(enc: Encounter, conversation: str, note: str) -> dict[str, str]:
  results = ("the results section lists the tests the doctor reviewed" if enc.results else
             "there is no results section, as no tests were discussed")
  explanation = (f"The chief complaint is {enc.cc}. The history comes from what the patient says "
                 f"({len(enc.positives)} symptoms endorsed, {len(enc.negatives)} denied, medications and "
                 f"allergies) and the exam from the vitals and findings the doctor dictates; {results}; "
                 f"the plan follows the doctor's closing summary ({enc.dx[0]}). Small talk is left out and "
                 f"nothing is added that the conversation does not state.")
  return dict(prompt=templates.note_prompt(conversation), response=note, explanation=explanation)


def _medication_task(enc: Encounter, conversation: str) -> dict[str, str]:
  current = [f"- {m.written()} ({V.CHRONIC[c][0]}" + (f"; increased to {new} {m.unit})" if new else ")")
             for (c, m), new in zip(enc.meds, enc.dose_changes)]
  new = [f"- {m.written()} ({enc.dx[0]})" for m in enc.new_meds]
  response = "Current medications:\n" + ("\n".join(current) or "None") + "\n\nNew medications:\n" + (
      "\n".join(new) or "None")
  said = (f"The patient lists {len(current)} current medication(s) when asked" if current else
          "The patient takes no regular medications")
  started = (f"the doctor starts {_join([m.name for m in enc.new_meds])} in the plan" if new else
             "the doctor starts nothing new")
  explanation = (f"{said}, and {started}. Doses and frequencies are taken from the conversation and "
                 "written in standard form (milligrams as mg, micrograms as mcg, 'twice a day' as "
                 "'twice daily').")
  prompt = ("List the medications in the following conversation with their doses and frequencies, "
            f"separating current medications from new prescriptions.\n\nConversation:\n{conversation}")
  return dict(prompt=prompt, response=response, explanation=explanation)


_ERRORS = (  # (pattern in the correct text, reason); `_corrupt` writes the wrong form
    (r"\b(She|He) (reports|denies|has|takes|describes|rates)\b", "subject-verb agreement"),
    (r"\ba (?=[bcdfgjklmnpqrstvwxz])(\w+)", "article before a consonant sound"),
    (r"\b(the|with|and|of) ", "repeated word"),
    (r"\bbegan\b", "past tense of 'begin'"),
    (r"\b(medications|allergic|reports|pain)\b", "spelling"),
)
_WRONG = {"reports": "report", "denies": "deny", "has": "have", "takes": "take", "describes": "describe",
          "rates": "rate", "medications": "medicatons", "allergic": "alergic", "pain": "pian"}


def _corrupt(m: re.Match, reason: str) -> str:
  if reason == "subject-verb agreement":
    return f"{m[1]} {_WRONG[m[2]]}"
  if reason == "article before a consonant sound":
    return f"an {m[1]}"
  if reason == "repeated word":
    return f"{m[1]} {m[1]} "
  if reason == "spelling":
    return "reprots" if m[1] == "reports" else _WRONG[m[1]]
  return "begun"


def _grammar_task(note: str, rng: random.Random) -> dict[str, str] | None:
  """Plants 2-3 errors in distinct sentences of the HPI; None if they cannot be undone unambiguously."""
  hpi = note.split("HISTORY OF PRESENT ILLNESS\n\n")[1].split("\n\nREVIEW OF SYSTEMS")[0]
  sentences = re.split(r"(?<=\.)( |\n\n)", hpi)
  fixes, used, wanted = [], set(), rng.randint(2, 3)
  for pattern, reason in rng.sample(_ERRORS, len(_ERRORS)):
    if len(fixes) == wanted:
      break
    hits = [i for i in range(0, len(sentences), 2) if i not in used and re.search(pattern, sentences[i])]
    if not hits:
      continue
    i = rng.choice(hits)
    m = re.search(pattern, sentences[i])
    wrong = _corrupt(m, reason)
    sentences[i] = sentences[i][:m.start()] + wrong + sentences[i][m.end():]
    used.add(i)
    fixes.append((wrong.strip(), m[0].strip(), reason))
  text = "".join(sentences)
  undone = text
  for wrong, right, _ in fixes:
    undone = re.sub(rf"(?<!\w){re.escape(wrong)}(?!\w)", lambda _: right, undone, count=1)
  if len(fixes) < 2 or undone != hpi:
    return None
  explanation = f"{len(fixes)} corrections: " + "; ".join(
      f'"{w}" -> "{r}" ({why})' for w, r, why in fixes) + "."
  prompt = f"Correct the grammar and spelling in this excerpt from a clinical note.\n\n{text}"
  return dict(prompt=prompt, response=hpi, explanation=explanation)


def _summary_task(t: Trial) -> dict[str, str]:
  (n1, n2), (e1, e2) = t.n, t.events
  response = (f"In a {t.design[1]} of {n1 + n2} patients with {t.condition}, {t.drug} {_effect(t)} the "
              f"risk of {t.outcome} compared with {t.comparator} ({100 * e1 / n1:.1f}% vs. "
              f"{100 * e2 / n2:.1f}%; "
              f"hazard ratio {t.hazard_ratio:.2f}, 95% CI {t.ci[0]:.2f} to {t.ci[1]:.2f}).")
  significance = ("the 95% CI includes 1, so no significant difference" if _effect(t).startswith("did not")
                  else "the 95% CI excludes 1")
  explanation = (f"The summary keeps the design ({t.design[1]}), the size ({n1 + n2} patients), the "
                 f"primary outcome with its effect estimate, and the direction of the result "
                 f"({significance}); background and adverse events are left out.")
  prompt = f"Summarize the following abstract in one sentence.\n\n{render_abstract(t)}"
  return dict(prompt=prompt, response=response, explanation=explanation)


def _general_text(rng: random.Random) -> str:
  paragraphs = []
  for _ in range(rng.randint(1, 3)):
    lines = rng.sample(V.GENERAL[rng.choice(sorted(V.GENERAL))], rng.randint(3, 5))
    n = rng.randint(2, 60)
    slots = dict(city=rng.choice(V.CITIES), food=rng.choice(V.FOODS), season=rng.choice(V.SEASONS),
                 day=rng.choice(V.DAYS), person_cap=_cap(rng.choice(V.PEOPLE)), n=n,
                 m=rng.randint(0, n - 1), year=rng.randint(1150, 1990))
    paragraphs.append(" ".join(line.format(**slots) for line in lines))
  return "\n\n".join(paragraphs)


def _records(tier: str, count: int, rng: random.Random) -> Iterator[dict[str, str]]:
  """`count` records of `tier`; instructions cycle note, medications, grammar, summary."""
  for i in range(count):
    if tier == "general":
      yield {"text": _general_text(rng)}
    elif tier == "medical":
      yield {"text": render_abstract(sample_trial(rng))}
    elif tier == "clinical":
      enc = sample_encounter(rng)
      yield {"conversation": render_conversation(enc, rng), "note": render_note(enc)}
    elif i % 4 == 3:
      yield _summary_task(sample_trial(rng))
    else:
      record = None
      while record is None:  # only the grammar task can come back empty, and rarely
        enc = sample_encounter(rng)
        conversation, note = render_conversation(enc, rng), render_note(enc)
        record = (_note_task(enc, conversation, note) if i % 4 == 0 else
                  _medication_task(enc, conversation) if i % 4 == 1 else _grammar_task(note, rng))
      yield record


def generate_corpus(out_dir: pathlib.Path, seed: int = 0,
                    sizes: dict[str, int] | None = None) -> dict[str, pathlib.Path]:
  """Writes `{tier}.jsonl` for tier in general, medical, clinical, instructions under `out_dir`.

  Args:
    out_dir: created if needed; existing files of these names are overwritten.
    seed: the same seed gives byte-identical files.
    sizes: records per file, overriding `DEFAULT_SIZES` per key (unknown keys raise ValueError).

  Returns:
    {tier: path of its JSONL file}.
  """
  unknown = set(sizes or {}) - set(DEFAULT_SIZES)
  if unknown:
    raise ValueError(f"unknown corpus files {sorted(unknown)}; expected {sorted(DEFAULT_SIZES)}")
  counts = {**DEFAULT_SIZES, **(sizes or {})}
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {}
  for tier, count in counts.items():
    rng = random.Random(f"heal-jax-synthetic/{seed}/{tier}")
    paths[tier] = out_dir / f"{tier}.jsonl"
    with open(paths[tier], "w", encoding="utf-8", newline="\n") as f:
      for record in _records(tier, count, rng):
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
  return paths
