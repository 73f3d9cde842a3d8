"""Rule-based HEAL rubric (missed / incorrect / irrelevant information) and the `eval notes` CLI."""

import json
import pathlib

import pytest

from heal_jax.eval import facts
from heal_jax.eval import notes

REFERENCE = """CHIEF COMPLAINT

Knee pain.

HISTORY OF PRESENT ILLNESS

Mr. Jones is a 58-year-old male with hypertension who presents with right knee pain for 3 weeks. He denies fever or chills. He takes lisinopril 20 mg daily.

PHYSICAL EXAM

Swelling of the right knee. No erythema.

ASSESSMENT AND PLAN

Right knee osteoarthritis. Start ibuprofen 400 mg three times a day. Continue lisinopril 20 mg daily. Follow up in 2 weeks.
"""
# One fact per clause; header lines and the bare "Mr." are not facts.
REFERENCE_FACTS = [
    "Knee pain.", "Jones is a 58-year-old male with hypertension who presents with right knee pain for 3 weeks.",
    "He denies fever or chills.", "He takes lisinopril 20 mg daily.", "Swelling of the right knee.", "No erythema.",
    "Right knee osteoarthritis.", "Start ibuprofen 400 mg three times a day.", "Continue lisinopril 20 mg daily.",
    "Follow up in 2 weeks."]
CONVERSATION = """[doctor] hi mr. jones , how old are you ?
[patient] i'm fifty eight .
[doctor] what brings you in ?
[patient] my right knee has been hurting for about three weeks .
[doctor] any fever or chills ?
[patient] no .
[doctor] do you have any chest pain ?
[patient] no .
[doctor] what medications do you take ?
[patient] lisinopril twenty milligrams a day for my blood pressure .
[doctor] what do you do for fun ?
[patient] i play tennis on weekends .
"""


def _verdicts(prediction, reference=REFERENCE, conversation=CONVERSATION):
  j = notes.judge_note(prediction, reference, conversation)
  return ([f.text for f in j.missed], [(f.text, why) for f, why in j.incorrect], [f.text for f in j.irrelevant])


def test_normalize_numbers_dates_and_synonyms():
  assert facts.normalize("I'm twenty six, two thousand nine, nineteen eighty four") == ["i", "26", "2009", "1984"]
  assert facts.normalize("01/10/09") == facts.normalize("January tenth two thousand nine") == ["jan", "10", "2009"]
  assert facts.normalize("26-year-old, age 26") == ["26", "yo", "26", "yo"]
  assert facts.normalize("HTN, SOB, b.i.d.") == ["hypertension", "dyspnea", "bid"]
  assert facts.normalize("high blood pressure, twice a day") == ["hypertension", "bid"]
  assert facts.normalize("Lasix 40 mg a day, 4 M G") == ["furosemide", "40", "mg", "daily", "4", "mg"]
  assert facts.normalize("doesn't smoke, non-smoker") == ["does", "not", "smoke", "not", "smoke"]


def test_fact_attributes():
  [fact] = facts.note_facts("Continue lisinopril 20 mg daily in the left eye.").facts
  assert fact.terms == {"continu", "lisinopril", "20", "mg", "daili", "left", "eye"}
  assert fact.quantities == (("20", "mg", "lisinopril"),)
  assert fact.sides == ((frozenset({"left"}), frozenset({"eye"})),)
  assert fact.drugs == {"lisinopril"}
  assert fact.negated is False
  # A leading negation covers the whole list; a mid-clause one starts a new fact.
  listed = facts.note_facts("She denies fevers, chills, or weight loss, but reports cough.").facts
  assert [(f.text, f.negated) for f in listed] == [
      ("She denies fevers", True), ("chills", True), ("or weight loss", True), ("but reports cough.", False)]
  split = facts.note_facts("Shoulder pain without radiation.").facts
  assert [(sorted(f.terms), f.negated) for f in split] == [(["pain", "shoulder"], False), (["radiat"], True)]
  assert facts.note_facts("He lives with his wife; her mother is ill.").gender == "male"


def test_conversation_answers_set_polarity():
  doc = facts.conversation_facts("Doctor: Any chest pain?\nPatient: No.\nDoctor: Any cough?\nPatient: Yeah, a bit."
                                 "\nDoctor: Was it a cesarean?\nPatient: No cesarean, it was normal.")
  by_text = {f.text: f.negated for f in doc.facts}
  assert by_text["Any chest pain?"] is True
  assert by_text["Any cough?"] is False
  assert by_text["Was it a cesarean?"] is None  # "No cesarean, ..." is not a bare yes/no answer
  assert by_text["No cesarean"] is True
  # A unit is a turn with the two turns before it.
  assert doc.units[1] == {"chest", "pain"}
  assert doc.units[2] == {"chest", "pain", "cough"} and doc.units[3] == {"cough"}


def test_identical_note_scores_clean():
  j = notes.judge_note(REFERENCE, REFERENCE, CONVERSATION)
  assert [f.text for f in j.reference_facts] == REFERENCE_FACTS
  assert _verdicts(REFERENCE) == ([], [], [])
  scores = notes.score_note(REFERENCE, REFERENCE, CONVERSATION)
  assert scores["missed_rate"] == scores["incorrect_rate"] == scores["irrelevant_rate"] == 0.0
  assert scores["rouge1"] == pytest.approx(1.0) and scores["objective_results_rouge1"] == pytest.approx(1.0)


@pytest.mark.parametrize("removed", [
    ["He denies fever or chills."],
    ["He denies fever or chills.", "No erythema."],
    ["No erythema.", "Start ibuprofen 400 mg three times a day.", "Follow up in 2 weeks."],
])
def test_planted_omissions_are_missed_exactly(removed):
  prediction = REFERENCE
  for sentence in removed:
    prediction = prediction.replace(" " + sentence, "").replace(sentence, "")
  missed, incorrect, irrelevant = _verdicts(prediction)
  assert missed == removed
  assert incorrect == irrelevant == []
  scores = notes.score_note(prediction, REFERENCE, CONVERSATION)
  assert scores["missed_rate"] == pytest.approx(len(removed) / len(REFERENCE_FACTS))
  assert scores["missed"] == len(removed) and scores["reference_facts"] == len(REFERENCE_FACTS)


def test_omission_restated_elsewhere_is_not_missed():
  # A known limit of term coverage: "right knee" is still said elsewhere, so dropping the exam finding
  # leaves 2 of its 3 terms (swell, right, knee) in one sentence and it counts as covered.
  assert _verdicts(REFERENCE.replace("Swelling of the right knee. ", ""))[0] == []


@pytest.mark.parametrize("old, new, reason", [
    ("Continue lisinopril 20 mg daily.", "Continue lisinopril 40 mg daily.", "quantity"),
    ("Swelling of the right knee.", "Swelling of the left knee.", "laterality"),
    ("He denies fever or chills.", "He reports fever and chills.", "negation"),
    ("Continue lisinopril 20 mg daily.", "Continue losartan 20 mg daily.", "drug"),
    ("58-year-old male", "68-year-old male", "quantity"),
    ("Mr. Jones is a 58-year-old male", "Ms. Jones is a 58-year-old female", "gender"),
])
def test_contradictions_are_incorrect(old, new, reason):
  prediction = REFERENCE.replace(old, new)
  assert prediction != REFERENCE
  missed, incorrect, irrelevant = _verdicts(prediction)
  assert len(incorrect) == 1 and incorrect[0][1] == reason and new.split()[-1] in incorrect[0][0]
  assert missed == irrelevant == []
  scores = notes.score_note(prediction, REFERENCE, CONVERSATION)
  assert scores["incorrect_rate"] == pytest.approx(1 / scores["generated_facts"])
  assert scores["irrelevant_rate"] == 0.0


# Hand-written pairs for the failure modes a probe found on ACI-Bench notes (each missed before 2026-11-27).
SECOND = """HISTORY OF PRESENT ILLNESS

Mr. Lee is a 61-year-old male. He takes metformin 1000 mg twice daily and lisinopril 10 mg daily. He rates his
pain 4 out of 10. He had an MR arthrogram of the left shoulder last year. MS was ruled out. She suspected a pinched
nerve, his physical therapist said.

REVIEW OF SYSTEMS

Constitutional: Denies fever.

PHYSICAL EXAM

Left knee: tenderness. Examination of the right knee is normal.
"""


@pytest.mark.parametrize("old, new, reason", [
    ("metformin 1000 mg", "metformin 10 mg", "quantity"),  # 10 mg is lisinopril's dose, not metformin's
    ("Left knee: tenderness.", "Right knee: tenderness.", "laterality"),  # the note names both knees
    ("Constitutional: Denies fever.", "Constitutional: Reports fever.", "negation"),  # a labelled ROS line
    ("lisinopril 10 mg daily", "glipizide 10 mg daily", "drug"),  # a drug the lexicon lacked
])
def test_contradictions_beside_similar_statements_are_incorrect(old, new, reason):
  prediction = SECOND.replace(old, new)
  assert prediction != SECOND
  _, incorrect, _ = _verdicts(prediction, SECOND, None)
  assert [why for _, why in incorrect] == [reason]


@pytest.mark.parametrize("prediction, reference", [
    ("Lisinopril 20 mg daily.", "We will increase lisinopril from 10 mg to 20 mg daily."),  # a dose change
    ("Metformin 1000 mg twice daily.", "Metformin was 500 mg twice daily; we increased it to 1000 mg."),
    ("Right knee pain.", "He has left knee pain. He also has right knee pain after a fall two weeks ago."),
    ("He has chest pain.", "Chest pain without radiation: started two days ago."),  # not a "Label:"
])
def test_statements_the_source_supports_are_not_incorrect(prediction, reference):
  assert _verdicts(prediction, reference, None)[1] == []


def test_abbreviations_and_other_people_do_not_set_the_patient_s_gender():
  """MR (arthrogram) and MS (a disease) are not Mr./Ms.; "she" about a therapist, said in the reference, is
  not the patient: the note scored against itself has no verdict at all."""
  assert _verdicts(SECOND, SECOND, None) == ([], [], [])
  sentence = facts.note_facts("An MR arthrogram was done. MS was ruled out. Ms. Lee agrees.")
  assert [f.gender for f in sentence.facts] == [None, None, None] and sentence.gender == "female"  # from "Ms."


def test_contradicting_the_conversation_is_incorrect():
  # The reference says nothing about chest pain; the conversation's "No" to the question does.
  missed, incorrect, irrelevant = _verdicts(REFERENCE + "He reports chest pain.\n")
  assert incorrect == [("He reports chest pain.", "negation")]
  assert missed == irrelevant == []
  assert _verdicts(REFERENCE + "He denies chest pain.\n") == ([], [], [])


def test_unsupported_additions_are_irrelevant_and_conversation_supported_are_not():
  prediction = REFERENCE + "He has a history of gout. He plays tennis on weekends.\n"
  missed, incorrect, irrelevant = _verdicts(prediction)
  assert irrelevant == ["He has a history of gout."]
  assert missed == incorrect == []
  scores = notes.score_note(prediction, REFERENCE, CONVERSATION)
  assert scores["generated_facts"] == len(REFERENCE_FACTS) + 2
  assert scores["irrelevant_rate"] == pytest.approx(1 / (len(REFERENCE_FACTS) + 2))
  # Without the conversation, the tennis sentence is supported by nothing either.
  assert _verdicts(prediction, conversation=None)[2] == ["He has a history of gout.", "He plays tennis on weekends."]
  # An invented number is unsupported even when the words around it are known.
  assert _verdicts(REFERENCE + "Follow up in 6 months.\n")[2] == ["Follow up in 6 months."]


def test_empty_texts():
  scores = notes.score_note("", REFERENCE)
  assert scores["missed_rate"] == 1.0 and scores["incorrect_rate"] == scores["irrelevant_rate"] == 0.0
  scores = notes.score_note(REFERENCE, "")
  assert scores["missed_rate"] == 0.0 and scores["irrelevant_rate"] == 1.0


def test_evaluate_notes_means_and_missing_id():
  predictions = {"a": REFERENCE, "b": REFERENCE.replace(" No erythema.", "")}
  references = {"a": REFERENCE, "b": REFERENCE, "c": "unused"}
  means, rows = notes.evaluate_notes(predictions, references, None)
  assert [r["id"] for r in rows] == ["a", "b"]
  assert means["missed_rate"] == pytest.approx(0.5 / len(REFERENCE_FACTS))
  assert means["notes"] == 2
  with pytest.raises(KeyError, match="'x'"):
    notes.evaluate_notes({"x": "text"}, references)


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_cli_end_to_end(tmp_path, capsys):
  pred = _write_jsonl(tmp_path / "pred.jsonl", [{"id": 1, "text": REFERENCE.replace(" No erythema.", "")},
                                                {"id": 2, "text": REFERENCE}])
  ref = _write_jsonl(tmp_path / "ref.jsonl", [{"id": 2, "text": REFERENCE}, {"id": 1, "text": REFERENCE}])
  conv = _write_jsonl(tmp_path / "conv.jsonl", [{"id": i, "text": CONVERSATION} for i in (1, 2)])
  out = tmp_path / "rows.jsonl"
  assert notes.main(["--predictions", pred, "--references", ref, "--conversations", conv, "--output", str(out)]) == 0
  means = json.loads(capsys.readouterr().out)
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["id"] for r in rows] == ["1", "2"]
  assert rows[0]["missed_rate"] == pytest.approx(1 / len(REFERENCE_FACTS)) and rows[1]["missed_rate"] == 0.0
  for key in ("id", "missed_rate", "incorrect_rate", "irrelevant_rate", "rouge1", "rouge2", "rougeL", "rougeLsum",
              "assessment_and_plan_rougeLsum"):
    assert key in rows[0]
  assert means["missed_rate"] == pytest.approx((rows[0]["missed_rate"] + rows[1]["missed_rate"]) / 2)
  assert means["rouge1"] == pytest.approx((rows[0]["rouge1"] + rows[1]["rouge1"]) / 2)
  assert (means["notes"], means["references_without_prediction"]) == (2, 0)
  ref3 = _write_jsonl(tmp_path / "ref3.jsonl", [{"id": i, "text": REFERENCE} for i in (1, 2, 3)])
  assert notes.main(["--predictions", pred, "--references", ref3]) == 0
  captured = capsys.readouterr()
  assert (json.loads(captured.out)["notes"], json.loads(captured.out)["references_without_prediction"]) == (2, 1)
  assert "1 reference(s) have no prediction" in captured.err


def test_cli_errors_name_the_id_file_and_line(tmp_path, capsys):
  pred = _write_jsonl(tmp_path / "pred.jsonl", [{"id": "a", "text": "x"}, {"id": "zz9", "text": "y"}])
  ref = _write_jsonl(tmp_path / "ref.jsonl", [{"id": "a", "text": "x"}])
  assert notes.main(["--predictions", pred, "--references", ref]) == 2
  err = capsys.readouterr().err
  assert "'zz9'" in err and "pred.jsonl" in err and "ref.jsonl" in err
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": "a", "text": "x"}\n\n{"id": "b", "text": \n')
  assert notes.main(["--predictions", str(bad), "--references", ref]) == 2
  assert f"{bad}:3: malformed JSON" in capsys.readouterr().err
  bad.write_text('{"id": "a", "text": "x"}\n{"id": null, "text": "y"}\n')  # str(None) would match an id 'None'
  assert notes.main(["--predictions", str(bad), "--references", ref]) == 2
  assert f'{bad}:2: "id" must be a string or an integer, got null' in capsys.readouterr().err
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  assert notes.main(["--predictions", str(empty), "--references", ref]) == 2
  assert f"{empty}: no records" in capsys.readouterr().err
  latin1 = tmp_path / "latin1.jsonl"
  latin1.write_bytes('{"id": "a", "text": "x"}\n{"id": "b", "text": "caf\u00e9"}\n'.encode("latin-1"))
  assert notes.main(["--predictions", str(latin1), "--references", ref]) == 2
  assert f"{latin1}:2: not UTF-8" in capsys.readouterr().err
  lone = tmp_path / "lone.jsonl"  # a lone surrogate escape: no UTF-8 text holds it (sentencepiece failed on it)
  lone.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "x \\ud800"}\n')
  assert notes.main(["--predictions", ref, "--references", str(lone)]) == 2
  assert f"{lone}:2: a \\ud800-\\udfff escape without its pair" in capsys.readouterr().err
  assert notes.main(["--predictions", str(lone), "--references", ref]) == 2
  assert f"{lone}:2: a \\ud800-\\udfff escape without its pair" in capsys.readouterr().err
  blank = _write_jsonl(tmp_path / "blank.jsonl", [{"id": "a", "text": "  \n"}])  # scored, and named
  assert notes.main(["--predictions", blank, "--references", ref]) == 0
  assert "warning: 1 of 1 prediction(s) are empty or whitespace only (ids a)" in capsys.readouterr().err
  twice = tmp_path / "twice.jsonl"  # json alone keeps the last "text"
  twice.write_text('{"id": "a", "text": "x", "text": "y"}\n')
  assert notes.main(["--predictions", str(twice), "--references", ref]) == 2
  assert f"{twice}:1: key 'text' appears twice in one object" in capsys.readouterr().err
  bom = tmp_path / "bom.jsonl"  # as Windows tools save UTF-8
  bom.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "text": "x"}\n')
  assert notes.read_jsonl(bom) == {"a": "x"}
  blocked = tmp_path / "file"
  blocked.write_text("")
  assert notes.main(["--predictions", pred, "--references", ref, "--output", str(blocked / "rows.jsonl")]) == 2
  assert "rows.jsonl" in capsys.readouterr().err
  before = pathlib.Path(pred).read_bytes()
  assert notes.main(["--predictions", pred, "--references", ref, "--output", pred]) == 2  # would overwrite its input
  assert "is also an input" in capsys.readouterr().err and pathlib.Path(pred).read_bytes() == before
  metrics = tmp_path / "metrics.jsonl"  # a run's metrics, not rows of eval notes: kept
  metrics.write_text('{"step": 1, "loss": 2.0}\n')
  assert notes.main(["--predictions", pred, "--references", ref, "--output", str(metrics)]) == 2
  assert f"{metrics} exists and is not a rows file" in capsys.readouterr().err
  assert metrics.read_text() == '{"step": 1, "loss": 2.0}\n'
  rows = tmp_path / "rows.jsonl"  # rows of an earlier eval notes: replaced
  assert notes.main(["--predictions", ref, "--references", ref, "--output", str(rows)]) == 0
  assert notes.main(["--predictions", ref, "--references", ref, "--output", str(rows)]) == 0
  assert [json.loads(line)["id"] for line in rows.read_text().splitlines()] == ["a"]


def test_repetition_is_reported_beside_the_rubric():
  """A note said three times: its second and third copies are repeated facts (2/3 of the generated
  facts); the three rubric rates are those of the note said once. A fact the reference itself states
  twice is not a repetition when the note does too."""
  tripled = "\n".join([REFERENCE] * 3)
  once, thrice = notes.score_note(REFERENCE, REFERENCE, None), notes.score_note(tripled, REFERENCE, None)
  assert once["repeated_rate"] == 0.0 and thrice["repeated_rate"] == pytest.approx(2 / 3)
  assert (thrice["missed_rate"], thrice["incorrect_rate"], thrice["irrelevant_rate"]) == (0.0, 0.0, 0.0)
  twice_in_reference = REFERENCE + "Follow up in 2 weeks.\n"
  assert notes.score_note(twice_in_reference, twice_in_reference, None)["repeated_rate"] == 0.0


DIALOGUE = """Doctor: Good morning, sir. Any surgeries?
Patient: I had my tonsils taken out as a kid, and my appendix removed in college.
Doctor: Do you drink?
Patient: A beer on weekends. My dad had heart problems.
"""


def test_support_ignores_note_style_and_maps_lay_words():
  """Clinical wording of what the conversation says is supported: style words ("significant for",
  "approximately") are not looked for, -ectomy words match the organ and its removal, "dad" is "father",
  "disorders" is "disease", "drink" is alcohol, and a stem that starts a longer one matches ("tonsil")."""
  note = "Past surgical history significant for tonsillectomy. Appendectomy. Social alcohol use. Father with heart disease."
  assert _verdicts(note, reference="", conversation=DIALOGUE) == ([], [], [])
  # Still unsupported: a procedure and a relative the conversation never mentions.
  assert _verdicts(note + " Status post cholecystectomy. Mother with diabetes.", reference="",
                   conversation=DIALOGUE)[2] == ["Status post cholecystectomy.", "Mother with diabetes."]
  assert facts.support_units((frozenset({"disord", "drink", "append"}),)) == (frozenset({"diseas", "alcohol", "append"}),)
  assert notes.coverage(frozenset({"tonsillectomi"}), [frozenset({"tonsil"})], near=True) == 1.0
  assert notes.coverage(frozenset({"arthriti", "knee"}), [frozenset({"osteoarthr", "knee"})], near=True) == 0.5  # not a start
  assert notes.coverage(frozenset({"contin"}), [frozenset({"incontin"})], near=True) == 0.0  # a prefixed form is not a match
  assert notes.coverage(frozenset({"12"}), [frozenset({"120"})], near=True) == 0.0  # numbers match exactly


def test_style_words_do_not_change_the_missed_side():
  """Omissions are judged on the plain terms and coverage: in the support form "Status post appendectomy."
  would be {appendix, removal} and covered by "Appendectomy." ({appendix, removal}); in plain terms it is
  {statu, post, appendectomi}, a third covered: missed. Verdicts hold the facts as extracted."""
  j = notes.judge_note("Appendectomy.", "Status post appendectomy.")
  assert [f.text for f in j.missed] == ["Status post appendectomy."]
  assert j.missed[0].terms == frozenset({"statu", "post", "appendectomi"})
  (irrelevant,) = notes.judge_note("Significant for gout.", "Asthma.").irrelevant
  assert "signific" in irrelevant.terms  # the plain form, not the support form


def test_addressing_the_patient_sets_the_conversation_s_gender():
  """"sir" / "ma'am" from the doctor say the patient's gender; a note that says otherwise is incorrect."""
  assert facts.conversation_facts(DIALOGUE).gender == "male"
  assert facts.conversation_facts("Doctor: How are you, ma'am?\nPatient: Fine.").gender == "female"
  incorrect = _verdicts("She had a tonsillectomy.", reference="", conversation=DIALOGUE)[1]
  assert incorrect == [("She had a tonsillectomy.", "gender")]
  # The patient's "sir" is said to the doctor.
  assert facts.conversation_facts("Doctor: Any pain?\nPatient: No, sir.").gender is None
  # "Miss" as a title is an address, the verb is not; a parent or a patient's guest answering is not the patient.
  assert facts.conversation_facts("Doctor: Hello, miss.\nPatient: Hi.").gender == "female"
  assert facts.conversation_facts("Doctor: Good morning Miss Lee.\nPatient: Hi.").gender == "female"
  for verb in ("Did you miss a dose, sir?", "Did you miss Monday's dose, sir?", "Sir, did you miss?",
               "Anything we miss, sir?"):
    assert facts.conversation_facts(f"Doctor: {verb}\nPatient: No.").gender == "male", verb
  assert facts.conversation_facts("[doctor] how has he been eating, ma'am?\n[patient_guest] well.").gender is None
  assert facts.conversation_facts("Doctor: Tell me about your son, ma'am.\nGuest_family: He is six.").gender is None
  # The doctor's address outweighs a man named in passing ("Mr. Smith referred you").
  assert facts.conversation_facts("Doctor: Mr. Smith referred you, ma'am?\nPatient: Yes.").gender == "female"


def test_an_answer_to_a_negative_question_sets_no_polarity():
  """"No fever or chills?" "Yes." may confirm either way; "Any fever or chills?" "Yes." does not."""
  negative = facts.conversation_facts("Doctor: No fever or chills?\nPatient: Yes.").facts
  assert [(f.text, f.negated) for f in negative] == [("No fever or chills?", None)]
  positive = facts.conversation_facts("Doctor: Any fever or chills?\nPatient: Yes.").facts
  assert [(f.text, f.negated) for f in positive] == [("Any fever or chills?", False)]
  assert _verdicts("He denies fever.", reference="", conversation="Doctor: No fever?\nPatient: Yes.")[1] == []
  # A negation word later in the question does not make it a negative question.
  walk = facts.conversation_facts("Doctor: Can you walk without the cane?\nPatient: Yes.").facts
  assert [f.negated for f in walk] == [False, False]  # "Can you walk" | "without the cane?", both answered


def test_normal_findings_are_supported_by_a_denial_and_no_one_is_not_a_number():
  dialogue = "Doctor: Any illnesses in your family?\nPatient: No, nothing.\nDoctor: Is your wife well?\nPatient: Yes."
  assert _verdicts("Noncontributory. Married.", reference="", conversation=dialogue) == ([], [], [])
  # Without a denial in the source, "Noncontributory." is supported by nothing.
  assert _verdicts("Noncontributory.", reference="", conversation="Doctor: Hello.\nPatient: Hi.")[2] == [
      "Noncontributory."]
  # ... and it only covers normal-finding words: an unsupported finding next to them is still flagged.
  assert _verdicts("Unremarkable except for a goiter.", reference="", conversation=dialogue)[2] == [
      "except for a goiter."]
  assert facts.normalize("no one else is sick, this one, one tablet, the one tablet, no one hundred") == [
      "no", "one", "else", "is", "sick", "this", "one", "1", "tablet", "the", "1", "tablet", "no", "100"]
  assert facts.note_facts("No one at home is sick.").facts[0].quantities == ()


def test_style_words_never_drop_a_clinical_stem():
  """Style words share no stem with clinical words, which stay in a fact's support form; style words go."""
  for word in ("severe", "quit", "essential", "systemic", "continuous", "initiate", "questionable", "performance",
               "indication", "basic"):
    (fact,) = facts.note_facts(f"{word.capitalize()} finding.").facts
    assert facts.stem(word) in facts.support_terms(fact).terms, word
  (fact,) = facts.note_facts("Significant past history of approximately three surgeries.").facts
  assert facts.support_terms(fact).terms == frozenset({"3", "surgeri"})
