"""ROUGE and ACI-Bench division splitting."""

import csv

import pytest
from rouge_score import rouge_scorer

from heal_jax.eval import rouge

NOTE = """CHIEF COMPLAINT

Right knee pain.

HISTORY OF PRESENT ILLNESS

Mr. Jones is a 58-year-old male who presents with right knee pain for 3 weeks.

MEDICATIONS

Lisinopril 20 mg daily.

VITALS

Blood pressure 128/80.

PHYSICAL EXAM

Swelling of the right knee.

RESULTS

X-ray of the right knee shows no fracture.

ASSESSMENT AND PLAN

Right knee osteoarthritis. Start ibuprofen 400 mg three times a day.

INSTRUCTIONS

Follow up in 2 weeks.
"""


def test_rouge1_by_hand():
  # reference: the patient has chest pain (5 unigrams); prediction: patient has severe chest pain today (6).
  # Common unigrams: patient, has, chest, pain = 4 -> P = 4/6, R = 4/5, F = 2PR/(P+R) = (16/15)/(22/15) = 8/11.
  # Bigrams: reference 4, prediction 5, common (patient has), (chest pain) = 2 -> P = 2/5, R = 2/4, F = 4/9.
  # LCS = patient has chest pain (4) -> ROUGE-L = ROUGE-1 = 8/11; one line each, so Lsum = L.
  scores = rouge.rouge("patient has severe chest pain today", "the patient has chest pain")
  assert scores["rouge1"] == pytest.approx(8 / 11)
  assert scores["rouge2"] == pytest.approx(4 / 9)
  assert scores["rougeL"] == pytest.approx(8 / 11)
  assert scores["rougeLsum"] == pytest.approx(8 / 11)


def test_rouge_lsum_uses_lines():
  # reference lines: [the patient has chest pain] [no fever] (7 tokens); prediction [no fever] [patient has chest pain].
  # ROUGE-L over the whole sequences: LCS 4 -> P = 4/6, R = 4/7, F = 8/13.
  # Lsum: union LCS per reference line = 4 + 2 = 6 -> P = 6/6, R = 6/7, F = 12/13.
  scores = rouge.rouge("no fever\npatient has chest pain", "the patient has chest pain\nno fever")
  assert scores["rougeL"] == pytest.approx(8 / 13)
  assert scores["rougeLsum"] == pytest.approx(12 / 13)


def test_rouge_matches_rouge_score_without_stemming(shared_data):
  with open(shared_data / "aci-bench" / "challenge_data" / "valid.csv", encoding="utf-8") as f:
    notes = [row["note"] for row in csv.DictReader(f)][:4]
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
  for prediction, reference in zip(notes, notes[1:]):
    expected = scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
    got = rouge.rouge(prediction, reference)
    assert got == {k: v.fmeasure for k, v in expected.items()}
  # No stemming: "pains" and "pain" do not match.
  assert rouge.rouge("pains", "pain")["rouge1"] == 0.0


def test_split_divisions_follows_official_tagger():
  divisions = rouge.split_divisions(NOTE)
  assert list(divisions) == list(rouge.DIVISIONS)
  # MEDICATIONS and VITALS are not headers to the official tagger: they stay in the subjective span.
  assert divisions["subjective"].startswith("CHIEF COMPLAINT\n")
  assert divisions["subjective"].endswith("VITALS\n\nBlood pressure 128/80.\n\n")
  assert divisions["objective_exam"] == "PHYSICAL EXAM\n\nSwelling of the right knee.\n\n"
  assert divisions["objective_results"] == "RESULTS\n\nX-ray of the right knee shows no fracture.\n\n"
  assert divisions["assessment_and_plan"].startswith("ASSESSMENT AND PLAN\n")
  assert divisions["assessment_and_plan"].endswith("INSTRUCTIONS\n\nFollow up in 2 weeks.\n")
  assert "".join(divisions.values()) == NOTE


def test_split_divisions_colon_headers_impression_and_leading_text():
  note = "Seen today.\nCC:\nKnee pain.\nHPI: twisted knee.\nEXAM\nTender.\nIMPRESSION\nSprain.\nPLAN\nBrace."
  assert rouge.split_divisions(note) == {
      "subjective": "Seen today.\nCC:\nKnee pain.\nHPI: twisted knee.\n",
      "objective_exam": "EXAM\nTender.\n",
      "assessment_and_plan": "IMPRESSION\nSprain.\nPLAN\nBrace.",
  }
  # "Exam" inside a sentence or "results" mid-line is not a header; a line starting with "Results" is.
  assert list(rouge.split_divisions("Exam was normal.\nThe results were fine.")) == ["subjective"]
  assert list(rouge.split_divisions("Exam: normal.\nResults of the x-ray: fine.")) == [
      "objective_exam", "objective_results"]


def test_split_divisions_keeps_all_text_of_real_notes(shared_data):
  with open(shared_data / "aci-bench" / "challenge_data" / "valid.csv", encoding="utf-8") as f:
    notes = [row["note"] for row in csv.DictReader(f)]
  for note in notes:
    divisions = rouge.split_divisions(note)
    assert "".join(divisions.values()) == note
    assert {"subjective", "assessment_and_plan"} <= set(divisions)
    for name, text in divisions.items():
      if name != "subjective":
        first_line = text.split("\n")[0].strip()
        assert first_line.isupper() or first_line.endswith(":"), (name, first_line)


def test_note_rouge_missing_divisions_use_official_placeholder():
  reference = "CHIEF COMPLAINT\nKnee pain.\nPLAN\nBrace."
  prediction = "CHIEF COMPLAINT\nKnee pain.\nRESULTS\nNormal x-ray.\nPLAN\nBrace."
  scores = rouge.note_rouge(prediction, reference)
  assert scores["subjective_rouge1"] == pytest.approx(1.0)
  assert scores["assessment_and_plan_rouge1"] == pytest.approx(1.0)
  assert scores["objective_exam_rouge1"] == pytest.approx(1.0)  # absent from both: placeholder vs placeholder
  assert scores["objective_results_rouge1"] == 0.0  # absent from the reference only
  assert scores["rouge1"] == pytest.approx(rouge.rouge(prediction, reference)["rouge1"])
  assert len(scores) == 4 * 5 + 4  # the full note's and each division's 4 ROUGE scores, and 4 presence flags
  assert [scores[f"{d}_in_reference"] for d in rouge.DIVISIONS] == [1.0, 0.0, 0.0, 1.0]
