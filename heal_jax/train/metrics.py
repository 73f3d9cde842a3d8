"""Training metrics: writers (console, metrics.jsonl, TensorBoard event files) and MFU.

Only process 0 writes. No training text or token ids are ever logged: only numbers.

MFU (model FLOPs utilisation) = model FLOPs per second / (devices x per-device peak). Model FLOPs
per token follow PaLM (appendix B): 6 x parameters (every weight but the input embedding lookup;
the output projection counts, tied or not; the RMSNorm scales, 0.1% of a tiny model, count too)
+ 12 x layers x hidden x seq_len (attention scores and values, forward+backward, no causal halving,
no remat recomputation).
Peaks are dense bf16: H100/H200 SXM 989 TFLOP/s, A100 312 TFLOP/s; on CPU MFU is not reported
unless metrics.peak_tflops is set.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Mapping, Sequence

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


def _row_step(line: str) -> float:
  """A metrics.jsonl row's step (-inf for a line that is not a row: kept)."""
  try:
    return float(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return float("-inf")


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
    """One row of metrics.jsonl (strict JSON: NaN or infinity as null) and TensorBoard scalars."""
    if not self.primary:
      return
    row = {"step": int(step), "kind": kind, "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
    row = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}
    self._jsonl.write(json.dumps(row, allow_nan=False) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.write_scalars(int(step), {f"{kind}/{k}": float(v) for k, v in scalars.items()})

  def restart_at(self, step: int) -> None:
    """The run goes on from `step` (its newest checkpoint; 0 for none): rows of metrics.jsonl after it,
    written by an attempt killed before its next checkpoint, are dropped (they describe steps that
    are trained again), and TensorBoard is told to drop its events after it (a SessionLog START)."""
    if not self.primary:
      return
    path = pathlib.Path(self._jsonl.name)
    self._jsonl.flush()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _row_step(line) <= step]
    if len(kept) < len(lines):
      staging = path.with_name(f".{path.name}.rewrite")
      with open(staging, "w", encoding="utf-8") as f:
        f.write("".join(kept))
        f.flush()
        os.fsync(f.fileno())  # on disk before it replaces the log (a power loss must not leave it empty)
      self._jsonl.close()
      staging.replace(path)
      directory = os.open(path.parent, os.O_RDONLY)
      try:
        os.fsync(directory)
      finally:
        os.close(directory)
      self._jsonl = open(path, "a", encoding="utf-8")
      self.log(f"{path}: dropped {len(lines) - len(kept)} row(s) after step {step}, written by an attempt that "
               f"stopped before its next checkpoint")
    if self._tb is not None:
      self._tb.restart_at(step + 1)

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


_SUMMED = ("nll_sum", "z_sum", "tokens", "source_nll_S", "source_tokens_S", "grad_norm", "filled", "slots")


@jax.jit
def add_step(interval: dict[str, jax.Array] | None, metrics: Mapping[str, Any]) -> dict[str, jax.Array]:
  """The sums of an interval of steps (None: a new interval) with one more step's metrics added, on
  the devices (no transfer per step); a skipped step (non-finite, or no target token) adds nothing.
  Keys: those of _SUMMED the step has (z_sum only where the z-loss term is on) and "applied_steps"."""
  summed = [k for k in _SUMMED if k in metrics]
  if interval is None:
    interval = {k: jax.numpy.zeros_like(metrics[k], dtype=jax.numpy.float32) for k in summed}
    interval["applied_steps"] = jax.numpy.zeros((), jax.numpy.float32)
  ok = metrics["applied"]
  added = {k: interval[k] + jax.numpy.where(ok, metrics[k].astype(jax.numpy.float32), 0.0) for k in summed}
  return {**added, "applied_steps": interval["applied_steps"] + ok.astype(jax.numpy.float32)}


def interval_scalars(sums: Mapping[str, Any], source_names: list[str]) -> dict[str, float]:
  """Logged numbers of an interval of steps from its host sums (`add_step`), token-weighted over its
  applied steps (not skipped): loss, z_loss (where the z-loss term is on: the sums have z_sum),
  loss/<source>, share/<source>; target_tokens and grad_norm are means per applied step; fill is the
  share of the batches' slots that hold a token (not padding). NaN where no step of the interval was applied (the progress line then shows the skipped
  count)."""
  steps = float(sums["applied_steps"])
  tokens = float(sums["tokens"])
  out = {"loss": float(sums["nll_sum"]) / tokens if tokens else float("nan"),
         **({"z_loss": float(sums["z_sum"]) / tokens if tokens else float("nan")} if "z_sum" in sums else {}),
         "grad_norm": float(sums["grad_norm"]) / steps if steps else float("nan"),
         "target_tokens": tokens / steps if steps else float("nan"),
         "fill": float(sums["filled"]) / float(sums["slots"]) if steps else float("nan")}
  source_tokens = sums["source_tokens_S"]
  total = float(source_tokens.sum())
  for i, name in enumerate(source_names):
    if source_tokens[i] > 0:
      out[f"loss/{name}"] = float(sums["source_nll_S"][i] / source_tokens[i])
      out[f"share/{name}"] = float(source_tokens[i] / total)
  return out


def later_phases_seconds(cfg: ModelConfig, phases: Sequence[Any], flops_per_s: float) -> float:
  """Estimated time of whole `phases` (each with steps, global_batch, seq_len) at the model FLOP/s
  measured now: a phase at a longer seq_len costs more per token (`flops_per_token`)."""
  flops = sum(p.steps * p.global_batch * p.seq_len * flops_per_token(cfg, p.seq_len) for p in phases)
  return flops / flops_per_s


def format_eta(seconds: float) -> str:
  seconds = max(int(seconds), 0)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
