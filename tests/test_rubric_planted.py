"""bench/rubric_planted.py: each planting makes exactly the one change it names; the bench runs on real rows."""

import pathlib
import random
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import rubric_planted as rp  # pylint: disable=wrong-import-position


def test_plantings_change_one_thing():
  assert rp.plant_number("Lisinopril 20 mg daily for 2 weeks.") == "Lisinopril 40 mg daily for 2 weeks."
  assert rp.plant_number("Took 1 tablet.") == "Took 2 tablet."
  assert rp.plant_number("Aspirin 0.5 g.") == "Aspirin 1.5 g."
  assert rp.plant_number("No numbers.") is None
  assert rp.plant_side("Left knee pain, right hip fine.") == "Right knee pain, right hip fine."
  assert rp.plant_gender("He says his wife and Mr. Lee saw her.") == "She says her wife and Ms. Lee saw his."
  assert rp.plant_negation("She denies fever.") == "She reports fever."
  assert rp.plant_negation("No chest pain.") == "Chest pain."
  assert rp.plant_negation("He has asthma.") == "He does not have asthma."
  assert rp.plant_negation("Asthma.") is None
  added = rp.plant_added("Asthma.", ["Knee pain for two weeks. Ok."], random.Random(0))
  assert added == "Asthma. Knee pain for two weeks."  # sentences under three words are not added


def test_bench_runs_on_the_training_split(shared_data):
  data = shared_data / "mts-dialog" / "Main-Dataset" / "MTS-Dialog-TrainingSet.csv"
  if not data.is_file():
    pytest.skip(f"{data} is absent (../shared/data, see its README)")
  proc = subprocess.run([sys.executable, str(REPO / "bench" / "rubric_planted.py"), "--data", str(data),
                         "--rows", "40"], capture_output=True, text=True, timeout=300, check=True)
  last = proc.stdout.strip().splitlines()[-1]
  assert '"auc_pooled"' in last and '"clean_flagged"' in last
