"""`heal-jax plan` on the paper's recipe: compiles for 32 fake devices and reports the fit."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from heal_jax.train import plan

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_plan_heal_13b_prints_table_then_json():
  out = subprocess.run([sys.executable, "-m", "heal_jax.cli", "plan", "--config", "configs/heal_13b.py"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  assert any(line.startswith("extend") for line in lines)
  result = json.loads(lines[-1])
  assert set(result) >= {"per_device_bytes", "flops_per_step", "fits"}
  assert result["devices"] == 32 and result["total_tokens"] == 14_889_779_200
  # fp32 master weights over fsdp=32: exactly 4 bytes x 13.016B / 32 per device (plus padding of odd dims)
  params_b = result["phases"][0]["params_bytes"]
  assert abs(params_b - 13_015_864_320 * 4 / 32) / params_b < 0.01
  assert result["phases"][0]["optimizer_bytes"] >= 2 * params_b
  # 6N + attention FLOPs per token x 524,288 tokens per step at 8K
  assert abs(result["flops_per_step"] - (6 * 12_852_024_320 + 12 * 40 * 5120 * 8192) * 524_288) < 1e9
  assert result["fits"] is True and result["per_device_bytes"] < 0.9 * 80 * 1024**3  # plan.memory_fraction
  # attention_impl="auto" is planned as on a GPU (our kernel: memory linear in L), so the 8K phases need no
  # more activation memory than the 4K one with the same tokens per step; XLA's L x L scores needed 2.7x more.
  activ = {r["phase"]: r["activation_temp_bytes"] for r in result["phases"]}
  assert activ["extend"] < 1.05 * activ["pretrain"]


@pytest.mark.parametrize("override,message", [
    ("--config.plan.devices=0", "config.plan.devices=0 must be > 0"),
    ("--config.plan.mfu=0", "config.plan.mfu=0.0 must be > 0"),
    ("--config.plan.mfu=55", "config.plan.mfu=55.0 is a fraction: in (0, 1]"),
    ("--config.plan.memory_fraction=1.5", "config.plan.memory_fraction=1.5 is a fraction: in (0, 1]"),
    ("--config.train.micro_steps=0", "config.train.micro_steps=0: must be >= 1"),
    ("--config.seed", "--config.seed needs a value (give --config.seed=VALUE)"),
    ("--config.mesh.data=3", "mesh {'data': 3, 'fsdp': -1, 'tensor': 1} does not fit 32 devices (planned for "
     "config.plan.devices=32: give --config.plan.devices=N for the cluster the run is for)"),
    ("--config.plan.peak_tflops=-1", "config.plan.peak_tflops=-1.0 must be > 0"),
    ("--config.data.num_shards=3", "phase pretrain: global batch 128 is not divisible by the data shards (3, "
     "config.data.num_shards or one per process) (planned for config.plan.devices=32: give "
     "--config.plan.devices=N for the cluster the run is for)"),  # as `train` refuses it
])
def test_a_plan_that_describes_no_cluster_is_an_error(override, message, capfd):
  """capfd: a mesh error comes from the child process that has plan.devices CPU devices."""
  assert plan.main(["--config", str(REPO / "configs" / "heal_13b.py"), override]) == 2
  assert capfd.readouterr().err.splitlines()[-1] == f"heal-jax plan: error: {message}"


def test_plan_runs_on_the_tiny_preset_as_it_trains(capfd, monkeypatch):
  """configs/tiny.py plans for the one CPU device its README command trains on (with the default 8
  devices its 2-row phases could not be split, and plan failed on the preset users meet first).
  Its extend and instruct phases differ only in data and schedule: one compile serves both."""
  compiled = []
  real = plan.plan_phase
  monkeypatch.setattr(plan, "plan_phase", lambda config, phase, mesh: compiled.append(phase.name) or
                      real(config, phase, mesh))
  assert plan.main(["--config", str(REPO / "configs" / "tiny.py")]) == 0
  assert compiled == ["pretrain", "extend"]
  out = capfd.readouterr().out.strip().splitlines()
  assert out[0].startswith("plan: 1.00M parameters on 1 devices")
  result = json.loads(out[-1])
  assert result["fits"] is True and [r["phase"] for r in result["phases"]] == ["pretrain", "extend", "instruct"]
  assert result["total_tokens"] == 150 * 8 * 256 + 20 * 2 * 2048 + 80 * 2 * 2048
