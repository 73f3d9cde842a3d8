"""Shared setup for trainer tests: a small corpus + tokenizer made once, configs pointing at it."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import time

from heal_jax import config as config_lib
from heal_jax.data import synthetic, tokenizer

SIZES = {"general": 300, "medical": 200, "clinical": 120, "instructions": 160}


def make_corpus(root: pathlib.Path) -> pathlib.Path:
  """root/corpus/*.jsonl and root/tokenizer/ (512 pieces); returns root."""
  if not (root / "tokenizer" / "tokenizer.model").is_file():
    synthetic.generate_corpus(root / "corpus", seed=0, sizes=SIZES)
    tokenizer.train_tokenizer([root / "corpus" / f"{t}.jsonl" for t in ("general", "medical", "clinical")],
                              root / "tokenizer", vocab_size=512)
  return root


def overrides(data_root: pathlib.Path, steps: int = 20, extra: tuple[str, ...] = ()) -> list[str]:
  """configs/tiny.py shrunk to one pretraining phase of `steps` steps on the shared corpus."""
  items = [
      "--config.data.bootstrap=", f"--config.data.tokenizer={data_root}/tokenizer",
      "--config.model.vocab_size=512", "--config.model.num_layers=2",
      "--config.phase_order=pretrain", "--config.phases.pretrain.steps=" + str(steps),
      "--config.phases.pretrain.seq_len=64", f"--config.phases.pretrain.warmup_steps={min(2, steps)}",
      "--config.train.global_batch=8", "--config.metrics.every_steps=1", "--config.eval.holdout_examples=0",
      "--config.data.num_shards=2", "--config.eval.sample_note_tokens=0",
  ]
  for tier in SIZES:
    items.append(f"--config.data.sources.{tier}.paths={data_root}/corpus/{tier}.jsonl")
  return items + list(extra)


TINY = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
_DEVICE_COUNT = "--xla_force_host_platform_device_count="


def xla_flags(devices: int | None = None) -> str:
  """The tests' XLA_FLAGS (conftest's) for a process of `devices` host devices (None: the count left out,
  for launch/local.sh, which adds its own)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT)]
  return " ".join(flags + ([f"{_DEVICE_COUNT}{devices}"] if devices else []))


def load(data_root: pathlib.Path, steps: int = 20, extra: tuple[str, ...] = ()):
  return config_lib.load_config(str(TINY), overrides(data_root, steps, extra))


def two_steps_with_step_2_edited(data_root: pathlib.Path, workdir: pathlib.Path, edit) -> pathlib.Path:
  """Trains 2 steps (a checkpoint each) into `workdir`, then rewrites step 2's saved state with
  `edit(state)` applied (past every check the trainer makes). Returns step 2's state directory."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from heal_jax.train import loop  # pylint: disable=import-outside-toplevel
  loop.train(load(data_root, 2, ("--config.checkpoint.every_steps=1",)), workdir)
  state_dir = workdir / "checkpoints" / "2" / "state"
  with ocp.StandardCheckpointer() as ckpt:
    state = ckpt.restore(state_dir)
    edit(state)
    shutil.rmtree(state_dir)
    ckpt.save(state_dir, state)
  return state_dir


def losses(workdir: pathlib.Path) -> dict[int, float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def sigterm_once_training(proc: subprocess.Popen, workdir: pathlib.Path, start_timeout: float,
                          exit_timeout: float, group_signal: int | None = None) -> tuple[str, str]:
  """Waits until `proc` has logged a step to WORKDIR/metrics.jsonl (at most start_timeout s), lets it
  train 3 s more, sends SIGTERM (or `group_signal` to its whole process group, as a terminal's Ctrl-C
  does; start it with start_new_session=True) and returns its (stdout, stderr) once it exits."""
  deadline = time.time() + start_timeout
  while time.time() < deadline and not (workdir / "metrics.jsonl").is_file():
    time.sleep(0.2)
  time.sleep(3.0)
  if group_signal is None:
    proc.send_signal(signal.SIGTERM)
  else:
    os.killpg(proc.pid, group_signal)
  try:
    return proc.communicate(timeout=exit_timeout)
  except subprocess.TimeoutExpired:
    for _ in range(2):  # launch/local.sh: a second signal SIGKILLs the trainers, which would outlive the test
      proc.send_signal(signal.SIGTERM)
      time.sleep(0.5)
    proc.kill()
    proc.communicate(timeout=30)
    raise
