"""configs/ablations: the arms differ only in mixture weights; bench/ablation.py --smoke runs end to end."""

import json
import math
import os
import pathlib
import subprocess
import sys
import time

import pytest

from heal_jax import config as config_lib

from tests import train_helpers

REPO = pathlib.Path(__file__).resolve().parents[1]
ABLATIONS = REPO / "configs" / "ablations"
ARMS = ("general_only", "medical_only", "clinical_only", "heal_equal", "no_general")
EVAL_KEYS = ("nll_general", "ppl_general", "nll_medical", "ppl_medical", "nll_clinical", "ppl_clinical",
             "pubmedqa_acc", "pubmedqa_acc_norm", "rouge1", "rougeL", "missed_rate", "incorrect_rate",
             "irrelevant_rate")


def _arm(name, root="ROOT"):
  return config_lib.load_config(f"{ABLATIONS / name}.py:{root}")


def test_arms_differ_only_in_mixture_weights():
  configs = {arm: _arm(arm).to_dict() for arm in ARMS}
  weights = {arm: c["phases"]["ablate"].pop("weights") for arm, c in configs.items()}
  first = configs[ARMS[0]]
  for arm, c in configs.items():
    assert c == first, f"{arm} differs from {ARMS[0]} in more than phases.ablate.weights"
  assert len(set(weights.values())) == len(ARMS), weights
  assert weights["heal_equal"] == "general=1,medical=1,clinical=1"
  assert "general" not in weights["no_general"]
  # Same starting point and the same number of tokens for every arm.
  assert first["init_from"] == "ROOT/base_checkpoint"
  assert first["phase_order"] == "ablate"
  # Every preset in the folder is an arm, the base run, or the shared module.
  names = {p.stem for p in ABLATIONS.glob("*.py")}
  assert names == set(ARMS) | {"base", "common"}


def test_base_trains_every_tier_from_scratch():
  base = config_lib.load_config(f"{ABLATIONS / 'base.py'}:ROOT")
  arm = _arm("heal_equal")
  assert base.init_from == ""
  assert base.model.to_dict() == arm.model.to_dict()
  assert base.data.to_dict() == arm.data.to_dict()
  assert base.phases.base.seq_len == arm.phases.ablate.seq_len


def test_smoke_run_writes_results_and_report(tmp_path, shared_data):
  env = {**os.environ, "XLA_FLAGS": train_helpers.xla_flags()}  # one CPU device, as the bench runs
  out = tmp_path / "docs"
  start = time.time()
  proc = subprocess.run([sys.executable, str(REPO / "bench" / "ablation.py"), "--smoke", "--root",
                         str(tmp_path / "runs"), "--out", str(out), "--data-dir", str(shared_data)],
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  elapsed = time.time() - start
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for arm in ARMS:
    results = json.loads((tmp_path / "runs" / arm / "eval_results.json").read_text())
    assert set(EVAL_KEYS) <= set(results), (arm, sorted(results))
    assert all(isinstance(v, (int, float)) for v in results.values())
    for tier in ("general", "medical", "clinical"):
      assert results[f"nll_{tier}"] > 0 and results[f"ppl_{tier}"] == pytest.approx(math.exp(results[f"nll_{tier}"]),
                                                                                    rel=1e-3), (arm, tier)
    for key in EVAL_KEYS[6:]:  # accuracies, ROUGE and rubric rates
      assert 0.0 <= results[key] <= 1.0, (arm, key, results[key])
  summary = json.loads((out / "results.json").read_text())
  assert set(summary["results"]) == set(ARMS)
  assert {"dropping_general_hurts_general", "medical_data_lowers_medical_ppl"} <= set(summary["table2_pattern"])
  for name in ("report.md", "README.md", "tiers.png", "tasks.png", "ablation.png", "loss.png"):
    assert (out / name).is_file(), name
  assert "general_only" in (out / "report.md").read_text()
  print(f"smoke run: {elapsed:.1f} s")  # about 60 s on an idle 2-core CPU; speed is not asserted
