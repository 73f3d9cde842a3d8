"""Training metrics: writers (console, metrics.jsonl, TensorBoard event files) and MFU.

Only process 0 writes. No training text or token ids are ever logged: only numbers.

MFU (model FLOPs utilisation) = model FLOPs per second / (devices x per-device peak). Model FLOPs
per token follow PaLM (appendix B): 6 x matmul parameters (every weight but the input embedding
lookup; the output projection counts, tied or not) + 12 x layers x hidden x seq_len (attention
scores and values, forward+backward, no causal halving, no remat recomputation).
Peaks are dense bf16: H100/H200 SXM 989 TFLOP/s, A100 312 TFLOP/s; on CPU MFU is not reported
unless metrics.peak_tflops is set.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any, Mapping

import jax

from heal_jax.model.config import ModelConfig
from heal_jax.train import tb_events

_PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token (see the module docstring)."""
  matmul_params = cfg.num_params(include_embedding=False) + cfg.vocab_size * cfg.hidden_size
  return 6.0 * matmul_params + 12.0 * cfg.num_layers * cfg.hidden_size * seq_len


def device_peak_flops(override_tflops: float = 0.0) -> float | None:
  """Per-device peak FLOP/s: the override, else by device kind, else None (e.g. CPU)."""
  if override_tflops > 0:
    return override_tflops * 1e12
  kind = jax.devices()[0].device_kind.lower()
  for name, tflops in _PEAK_TFLOPS.items():
    if name in kind:
      return tflops * 1e12
  return None


def _drop_partial_row(path: pathlib.Path, log) -> None:
  """Cuts a row a killed run left half-written at the end of `path`, so appended rows stay parseable."""
  if not path.is_file():
    return
  with open(path, "rb+") as f:
    data = f.read()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
      f.truncate(keep)
      log(f"{path}: dropped a half-written last row ({len(data) - keep} bytes) of an interrupted run")


class MetricWriter:
  """Scalars to metrics.jsonl and to TensorBoard event files in WORKDIR/tensorboard (written by
  `tb_events`, so without TensorFlow); log lines to the console; clu's parameter overview."""

  def __init__(self, workdir: pathlib.Path, primary: bool = True):
    self.primary = primary
    self._tb = None
    self._jsonl = None
    if not primary:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _drop_partial_row(workdir / "metrics.jsonl", self.log)
    self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
    self._tb = tb_events.EventFileWriter(workdir / "tensorboard")

  def log(self, line: str) -> None:
    if self.primary:
      print(f"[train] {line}", file=sys.stderr, flush=True)

  def write(self, step: int, scalars: Mapping[str, float], kind: str = "train") -> None:
    if not self.primary:
      return
    row = {"step": int(step), "kind": kind, "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.write_scalars(int(step), {f"{kind}/{k}": float(v) for k, v in scalars.items()})

  def parameter_overview(self, params: Any) -> None:
    if not self.primary:
      return
    from clu import parameter_overview  # pylint: disable=import-outside-toplevel
    self.log("parameters:\n" + parameter_overview.get_parameter_overview(params, include_stats=False))

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def format_eta(seconds: float) -> str:
  seconds = max(int(seconds), 0)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
