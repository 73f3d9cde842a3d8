"""heal_jax.eval.review_sheet, HEAL's rubric by hand: `eval notes --review-sheet` writes a sheet, `--read-review`
summarises it."""

from __future__ import annotations

import csv
import json
import pathlib

import pytest

from heal_jax.eval import facts
from heal_jax.eval import notes
from heal_jax.eval import review_sheet

REFERENCES = {
    "a": "Knee pain. He denies fever or chills. He takes lisinopril 20 mg daily. Follow up in 2 weeks.",
    "b": "Cough for 2 days. No chest pain. Start benzonatate 100 mg three times a day.",
    "c": "Headache. Blood pressure 150/90. Continue amlodipine 5 mg daily.",
}
PREDICTIONS = {
    "a": "Knee pain. He reports fever. He takes losartan 20 mg daily.",
    "b": "Cough for 3 days. Start benzonatate 100 mg three times a day.",
    "c": "Headache.",
}
CONVERSATIONS = {k: f"[doctor] what brings you in ?\n[patient] note {k} , \"quoted\" , with a comma ."
                 for k in REFERENCES}


def _write(tmp_path: pathlib.Path) -> pathlib.Path:
  sheet, instructions = review_sheet.write_review_sheet(tmp_path / "review.csv", PREDICTIONS, REFERENCES, CONVERSATIONS)
  assert instructions == tmp_path / "review.instructions.txt"
  rubric = instructions.read_text()
  for word in ("missed_count", "incorrect_count", "irrelevant_count", "reference_facts", "--read-review"):
    assert word in rubric
  return sheet


def _fill(sheet: pathlib.Path, values: dict[str, tuple[str, str, str]], delimiter: str = ",") -> None:
  with open(sheet, encoding="utf-8-sig", newline="") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    row["missed_count"], row["incorrect_count"], row["irrelevant_count"] = values.get(row["id"], ("", "", ""))
  with open(sheet, "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=review_sheet.REVIEW_COLUMNS, delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)


def test_sheet_columns(tmp_path):
  sheet = _write(tmp_path)
  with open(sheet, encoding="utf-8-sig", newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == list(review_sheet.REVIEW_COLUMNS)
  assert [r["id"] for r in rows] == ["a", "b", "c"]
  for r in rows:  # texts side by side (commas, quotes and newlines survive), counts left empty
    key = r["id"]
    assert (r["conversation"], r["reference_note"], r["generated_note"]) == (
        CONVERSATIONS[key], REFERENCES[key], PREDICTIONS[key])
    assert r["reference_facts"] == str(len(facts.note_facts(REFERENCES[key]).facts))
    assert r["generated_facts"] == str(len(facts.note_facts(PREDICTIONS[key]).facts))
    assert r["missed_count"] == r["incorrect_count"] == r["irrelevant_count"] == r["comments"] == ""


def test_a_sheet_that_fails_midway_leaves_nothing_behind(tmp_path):
  """Written whole or not at all: a half-written sheet used to block every rerun ('exists, may be filled
  in'). A text UTF-8 cannot encode (a lone surrogate; the readers refuse it since) fails the third row."""
  sheet = tmp_path / "sheet.csv"
  bad = {**PREDICTIONS, "c": "x \ud800"}
  with pytest.raises(UnicodeEncodeError):
    review_sheet.write_review_sheet(sheet, bad, REFERENCES, CONVERSATIONS)
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_round_trip(tmp_path, capsys, delimiter):
  sheet = _write(tmp_path)
  _fill(sheet, {"a": ("2", "2", "0"), "b": ("1", "1.0", " 1 ")}, delimiter)  # c left blank
  n_ref = {k: len(facts.note_facts(v).facts) for k, v in REFERENCES.items()}
  n_gen = {k: len(facts.note_facts(v).facts) for k, v in PREDICTIONS.items()}
  expected = {
      "missed_rate": (2 / n_ref["a"] + 1 / n_ref["b"]) / 2,
      "incorrect_rate": (2 / n_gen["a"] + 1 / n_gen["b"]) / 2,
      "irrelevant_rate": (0 / n_gen["a"] + 1 / n_gen["b"]) / 2,
      "missed": 1.5, "incorrect": 1.5, "irrelevant": 0.5,
      "reference_facts": (n_ref["a"] + n_ref["b"]) / 2, "generated_facts": (n_gen["a"] + n_gen["b"]) / 2,
      "notes": 2.0, "rows_read": 3.0, "rows_filled": 2.0, "rows_blank": 1.0}
  summary, rows = review_sheet.read_review_sheet(sheet)
  assert summary == pytest.approx(expected)
  assert [r["id"] for r in rows] == ["a", "b"]
  assert notes.main(["--read-review", str(sheet), "--output", str(tmp_path / "rows.jsonl")]) == 0
  assert json.loads(capsys.readouterr().out) == pytest.approx(expected)
  assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("cells, message", [
    (("x", "0", "0"), r"review.csv: row 3 \(id 'b'\): missed_count must be a whole number >= 0, got 'x'"),
    (("1", "-1", "0"), r"row 3 \(id 'b'\): incorrect_count must be a whole number >= 0, got '-1'"),
    (("1", "0", "1.5"), r"row 3 \(id 'b'\): irrelevant_count must be a whole number"),
    (("1", "", "0"), r"row 3 \(id 'b'\): incorrect_count empty while other counts are filled"),
    (("99999", "0", "0"), r"review.csv: row 3 \(id 'b'\): missed_count 99999 exceeds reference_facts \d+"),
    (("0", "500", "500"), r"row 3 \(id 'b'\): incorrect_count \+ irrelevant_count 1000 exceeds generated_facts"),
])
def test_bad_cells_name_the_row(tmp_path, capsys, cells, message):
  sheet = _write(tmp_path)
  _fill(sheet, {"a": ("0", "0", "0"), "b": cells})
  with pytest.raises(review_sheet.ReviewError, match=message):
    review_sheet.read_review_sheet(sheet)
  assert notes.main(["--read-review", str(sheet)]) == 2
  assert "row 3" in capsys.readouterr().err


def test_cli_writes_the_sheet_and_still_scores(tmp_path, capsys):
  paths = {}
  for name, data in (("pred", PREDICTIONS), ("ref", REFERENCES)):
    paths[name] = tmp_path / f"{name}.jsonl"
    paths[name].write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in data.items()))
  sheet = tmp_path / "out" / "sheet.csv"
  assert notes.main(["--predictions", str(paths["pred"]), "--references", str(paths["ref"]),
                     "--review-sheet", str(sheet)]) == 0
  means = json.loads(capsys.readouterr().out)
  assert means["notes"] == 3.0 and "rouge1" in means
  assert sheet.is_file() and sheet.with_suffix(".instructions.txt").is_file()
  with open(sheet, encoding="utf-8-sig", newline="") as f:
    assert [r["conversation"] for r in csv.DictReader(f)] == ["", "", ""]
  filled = sheet.read_bytes()  # as if clinicians had filled it in: never written over
  assert notes.main(["--predictions", str(paths["pred"]), "--references", str(paths["ref"]),
                     "--review-sheet", str(sheet)]) == 2
  assert "exists (a review sheet may already be filled in)" in capsys.readouterr().err
  assert notes.main(["--read-review", str(sheet), "--output", str(sheet)]) == 2
  assert "is also an input" in capsys.readouterr().err and sheet.read_bytes() == filled
  with pytest.raises(SystemExit):
    notes.main(["--read-review", str(sheet), "--predictions", str(paths["pred"])])
  with pytest.raises(SystemExit):
    notes.main(["--references", str(paths["ref"])])
