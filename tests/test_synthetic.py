"""Synthetic corpus: determinism, and that every note states only what its conversation says."""

import json
import math
import pathlib
import random
import re

import pytest

from heal_jax.data import synthetic
from heal_jax.data import synthetic_vocab as V
from heal_jax.data import templates

SIZES = {"general": 40, "medical": 60, "clinical": 300, "instructions": 200}
NUMBER = re.compile(r"\d+(?:\.\d+)?")
DRUGS = ({d[0] for _, _, meds in V.CHRONIC.values() for d in meds} |
         {d[0] for c in V.COMPLAINTS for d in c.meds})


def _read(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, list[dict]]:
  paths = synthetic.generate_corpus(tmp_path_factory.mktemp("corpus"), seed=0, sizes=SIZES)
  return {tier: _read(path) for tier, path in paths.items()}


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path):
  sizes = {"general": 20, "medical": 20, "clinical": 20, "instructions": 20}
  a = synthetic.generate_corpus(tmp_path / "a", seed=3, sizes=sizes)
  b = synthetic.generate_corpus(tmp_path / "b", seed=3, sizes=sizes)
  c = synthetic.generate_corpus(tmp_path / "c", seed=4, sizes=sizes)
  for tier in sizes:
    assert a[tier].read_bytes() == b[tier].read_bytes(), tier
    assert a[tier].read_bytes() != c[tier].read_bytes(), tier
  # One file's size leaves the others' bytes alone.
  d = synthetic.generate_corpus(tmp_path / "d", seed=3, sizes={**sizes, "clinical": 5})
  assert d["general"].read_bytes() == a["general"].read_bytes()
  assert len(_read(d["clinical"])) == 5
  assert _read(d["clinical"]) == _read(a["clinical"])[:5]


def test_default_sizes_and_unknown_tier_rejected(tmp_path):
  paths = synthetic.generate_corpus(tmp_path)
  assert {t: len(_read(p)) for t, p in paths.items()} == dict(synthetic.DEFAULT_SIZES)
  with pytest.raises(ValueError, match="unknown corpus files"):
    synthetic.generate_corpus(tmp_path, sizes={"pubmed": 3})


def test_record_fields(corpus):
  assert {tier: len(rows) for tier, rows in corpus.items()} == SIZES
  assert all(set(r) == {"text"} and r["text"].strip() for r in corpus["general"] + corpus["medical"])
  assert all(set(r) == {"conversation", "note"} for r in corpus["clinical"])
  assert all(set(r) == {"prompt", "response", "explanation"} and all(r.values())
             for r in corpus["instructions"])
  assert len({r["text"] for r in corpus["general"]}) == SIZES["general"]
  assert len({r["conversation"] for r in corpus["clinical"]}) == SIZES["clinical"]


def test_conversation_turns_and_note_sections(corpus):
  for r in corpus["clinical"]:
    lines = r["conversation"].split("\n")
    assert all(re.match(r"\[(doctor|patient)\] \S", line) for line in lines)
    heads = [h for h in r["note"].split("\n") if h.isupper() and h.strip()]
    expected = [h for h in templates.NOTE_SECTIONS if h != "RESULTS" or "RESULTS" in heads]
    assert heads == expected


def test_every_note_number_is_in_its_conversation(corpus):
  checked = 0
  for r in corpus["clinical"]:
    said = set(NUMBER.findall(r["conversation"]))
    for number in NUMBER.findall(r["note"]):
      assert number in said, (number, r["note"])
      checked += 1
  assert checked > 10 * SIZES["clinical"]


def test_every_note_drug_and_dose_is_in_its_conversation(corpus):
  doses = names = 0
  for r in corpus["clinical"]:
    conversation, note = r["conversation"], r["note"]
    for name in DRUGS:
      if re.search(rf"\b{name}\b", note):
        assert re.search(rf"\b{name}\b", conversation), (name, note)
        names += 1
    for name, dose, unit in re.findall(r"\b([a-z]+) (\d+(?:\.\d+)?) (mg|mcg)\b", note):
      if name in DRUGS:
        assert f"{name} {dose} {V.UNIT[unit]}" in conversation, (name, dose, conversation)
        doses += 1
  assert doses > SIZES["clinical"] and names > SIZES["clinical"]  # a drug is named in HPI and plan


def test_vitals_in_note_match_what_the_doctor_said(corpus):
  for r in corpus["clinical"]:
    sbp, dbp, hr, temp, spo2 = re.search(
        r"Blood pressure (\d+)/(\d+) mmHg, heart rate (\d+) bpm, temperature ([\d.]+) F, "
        r"oxygen saturation (\d+)% on room air", r["note"]).groups()
    for said in (f"{sbp} over {dbp}", f"heart rate is {hr}", f"temperature is {temp}",
                 f"{spo2} percent on room air"):
      assert said in r["conversation"]


def _answer_to(conversation: str, term: str) -> list[str]:
  """The patient lines right after doctor lines that mention `term`."""
  lines = conversation.split("\n")
  return [b for a, b in zip(lines, lines[1:])
          if a.startswith("[doctor]") and re.search(rf"\b{term}\b", a) and b.startswith("[patient]")]


def test_denied_and_endorsed_symptoms_follow_the_patient(corpus):
  denied = endorsed = 0
  for r in corpus["clinical"]:
    for system_line in re.findall(r"^• [^:]+: (.*)$", r["note"].split("REVIEW OF SYSTEMS")[1].split(
        "PHYSICAL EXAM")[0], re.M):
      for verb, terms in re.findall(r"(Endorses|Denies) ([^.]+)\.", system_line):
        for term in re.split(r",? or |,? and |, ", terms):
          answers = _answer_to(r["conversation"], term)
          if verb == "Denies":
            assert any(a.startswith("[patient] no") for a in answers), (term, r["conversation"])
            denied += 1
          else:
            assert any(re.match(r"\[patient\] (yes|yeah)", a) for a in answers), (term, r["conversation"])
            endorsed += 1
  assert denied > 2 * SIZES["clinical"] and endorsed > SIZES["clinical"] // 3


def _hand_encounter() -> synthetic.Encounter:
  return synthetic.Encounter(
      first="martha", last="collins", age=50, sex="female", cc="right knee pain",
      opener="my right knee has been bothering me", duration=(3, "days"),
      onset=("i slipped on some ice", "{She} slipped on ice."), quality=None, pain_score=7,
      meds=(("hypertension", synthetic.Med("lisinopril", "20", "mg", "once a day")),),
      allergy=("penicillin", "penicillin"), positives=(("Musculoskeletal", "swelling"),),
      negatives=(("Constitutional", "fever"), ("Constitutional", "chills"), ("Skin", "rash")),
      vitals=(128, 82, 76, 98.4, 97),
      exam=(("Musculoskeletal", "there's no laxity of the ligaments", "No ligamentous laxity."),),
      results=(), dx=("right knee sprain", "i think you sprained your knee", "Consistent with a sprain."),
      new_meds=(synthetic.Med("ibuprofen", "600", "mg", "three times a day"),), orders=(), advice=(),
      referral=None, dose_changes=("40",), follow_up=(2, "weeks"))


def test_hand_built_encounter_renders_expected_note():
  note = synthetic.render_note(_hand_encounter())
  assert note == """CHIEF COMPLAINT

Right knee pain.

HISTORY OF PRESENT ILLNESS

Martha Collins is a 50-year-old female with a past medical history significant for hypertension who \
presents with right knee pain.

She reports right knee pain for 3 days. She slipped on ice. She rates the pain 7/10. She also reports \
swelling. She denies fever, chills, or rash.

Her current medications include lisinopril 20 mg daily. She is allergic to penicillin.

REVIEW OF SYSTEMS

• Constitutional: Denies fever or chills.
• Musculoskeletal: Endorses swelling.
• Skin: Denies rash.

PHYSICAL EXAM

• Vitals: Blood pressure 128/82 mmHg, heart rate 76 bpm, temperature 98.4 F, oxygen saturation 97% on \
room air.
• Musculoskeletal: No ligamentous laxity.

ASSESSMENT AND PLAN

Right knee sprain.
• Medical Reasoning: Consistent with a sprain.
• Medical Treatment: Start ibuprofen 600 mg three times daily.

Hypertension.
• Medical Treatment: Increase lisinopril to 40 mg daily.

She will follow up in 2 weeks."""


def test_hand_built_encounter_conversation_states_the_facts():
  conversation = synthetic.render_conversation(_hand_encounter(), random.Random(0))
  for said in ("martha collins is a 50-year-old female with a past medical history significant for high "
               "blood pressure who presents with right knee pain .",
               "[patient] my right knee has been bothering me for about 3 days .",
               "[doctor] any fever , chills , or rash ?",
               "[patient] i take lisinopril 20 milligrams once a day for high blood pressure .",
               "[patient] i'm allergic to penicillin .",
               "your blood pressure today is 128 over 82 , your heart rate is 76 , "
               "your temperature is 98.4 ,",
               "i'm going to start you on ibuprofen 600 milligrams three times a day .",
               "i want to increase the lisinopril to 40 milligrams once a day .",
               "i'd like to see you back in 2 weeks ."):
    assert said in conversation, said


def test_instruction_tasks(corpus):
  rows = corpus["instructions"]
  notes, meds, grammar, summaries = rows[0::4], rows[1::4], rows[2::4], rows[3::4]
  for r in notes:
    conversation = r["prompt"].split("Conversation:\n", 1)[1]
    assert r["prompt"] == templates.note_prompt(conversation)
    assert r["response"].startswith("CHIEF COMPLAINT\n\n")
    assert set(NUMBER.findall(r["response"])) <= set(NUMBER.findall(conversation))
  for r in meds:
    listed = re.findall(r"^- ([a-z]+) (\d+(?:\.\d+)?) (mg|mcg) ", r["response"], re.M)
    for name, dose, unit in listed:
      assert f"{name} {dose} {V.UNIT[unit]}" in r["prompt"]
    assert len(listed) == r["response"].count("\n- ") + r["response"].startswith("- ")
  for r in grammar:  # undoing the explained corrections on the prompt gives the response
    text = r["prompt"].split("\n\n", 1)[1]
    fixes = re.findall(r'"([^"]+)" -> "([^"]+)"', r["explanation"])
    assert 2 <= len(fixes) <= 3 and text != r["response"]
    for wrong, right in fixes:
      text = re.sub(rf"(?<!\w){re.escape(wrong)}(?!\w)", lambda _, right=right: right, text, count=1)
    assert text == r["response"]
  for r in summaries:
    assert set(NUMBER.findall(r["response"])) <= set(NUMBER.findall(r["prompt"]))


def test_abstract_numbers_agree(corpus):
  for r in corpus["medical"]:
    text = r["text"]
    heads = [line.split(":")[0] for line in text.split("\n")]
    assert heads == ["Background", "Methods", "Results", "Conclusions"]
    (e1, n1, p1), (e2, n2, p2) = re.findall(r"in (\d+) of (\d+)(?: patients)? \(([\d.]+)%\)", text)
    assert float(p1) == round(100 * int(e1) / int(n1), 1) and float(p2) == round(100 * int(e2) / int(n2), 1)
    assert f"{int(n1) + int(n2)} patients" in text
    hr, lo, hi = map(float, re.search(r"hazard ratio, ([\d.]+); 95% CI, ([\d.]+) to ([\d.]+)",
                                      text).groups())
    assert lo <= hr <= hi
    se = (math.log(hi) - math.log(lo)) / (2 * 1.96)
    p = math.erfc(abs(math.log(hr)) / se / math.sqrt(2))
    shown = re.search(r"P([=<])([\d.]+)\)", text).groups()
    if shown[0] == "=":
      assert abs(float(shown[1]) - p) < 0.03 + 0.1 * p  # hr, lo, hi are rounded to 2 decimals
    if "lower risk" in text:
      assert hi <= 1.0
    elif "higher risk" in text:
      assert lo >= 1.0
    else:
      assert "did not significantly change" in text and lo <= 1.0 <= hi


def test_templates():
  prompt = templates.note_prompt("[doctor] hi .\n[patient] hello .\n")
  assert prompt.endswith("Conversation:\n[doctor] hi .\n[patient] hello .")
  assert all(section in prompt for section in templates.NOTE_SECTIONS)
  assert templates.format_instruction(" Do X. ", "Y\n", " Because. ") == (
      "### Instruction:\nDo X.\n\n### Response:\n", "Y\n\nExplanation: Because.")
  assert templates.format_instruction("Do X.", "Y") == ("### Instruction:\nDo X.\n\n### Response:\n", "Y")
  assert templates.format_instruction("Do X.", "Y", "  ")[1] == "Y"
  assert templates.split_response("Y\n\nExplanation: Because.") == ("Y", "Because.")
  assert templates.split_response("Y") == ("Y", None)
