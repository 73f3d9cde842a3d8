"""bench/rubric_planted.py: each planting makes exactly the one change it names; the bench runs on real rows."""

import json
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

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
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert {"clean_flagged", "auc_pooled", "auc_added", "auc_negation"} <= set(result)
  assert all(0.0 <= v <= 1.0 for v in result.values()), result
  assert result["auc_pooled"] > 0.6, result  # planted errors rank above clean notes (0.78 at stop 24; chance 0.5)


def test_roc_auc_and_spearman_against_hand_counts_and_scipy():
  from rubric_correlation import roc_auc, spearman  # pylint: disable=import-outside-toplevel
  # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered right
  assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
  assert roc_auc(np.array([0.5, 0.5, 0.9]), np.array([0, 1, 1])) == 0.75  # a tie counts one half
  assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 5, 30).astype(float), rng.normal(size=30)  # ties in x
  assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
