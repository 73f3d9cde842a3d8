"""optax AdamW with warmup + cosine/linear decay and global-norm clipping."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax


SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One phase's optimizer: peak lr, schedule ('cosine' | 'linear' | 'constant') over `steps`."""
  peak_lr: float
  steps: int
  warmup_steps: int = 0
  schedule: str = "cosine"
  end_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float = 1.0


def learning_rate(spec: OptimizerSpec) -> optax.Schedule:
  """Linear warmup from 0 to peak_lr, then decay to end_lr_ratio * peak_lr at `steps`."""
  decay_steps = max(spec.steps - spec.warmup_steps, 1)
  end = spec.peak_lr * spec.end_lr_ratio
  if spec.schedule == "cosine":
    decay = optax.cosine_decay_schedule(spec.peak_lr, decay_steps, alpha=spec.end_lr_ratio)
  elif spec.schedule == "linear":
    decay = optax.linear_schedule(spec.peak_lr, end, decay_steps)
  elif spec.schedule == "constant":
    decay = optax.constant_schedule(spec.peak_lr)
  else:
    raise ValueError(f"unknown learning-rate schedule {spec.schedule!r}; expected one of {', '.join(SCHEDULES)}")
  if spec.warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, spec.peak_lr, spec.warmup_steps)
  return optax.join_schedules([warmup, decay], [spec.warmup_steps])


DECAYED = ("kernel", "embedding")


def _decay_mask(params: Any) -> Any:
  """Weight decay on matrices (kernels, embeddings), not on norm scales. Decided by name: with scanned
  layers a norm scale is [layers, hidden], as many dimensions as a matrix."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in DECAYED, params)


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
  """clip_by_global_norm -> AdamW(schedule); optimizer state in the parameters' dtype (fp32)."""
  return optax.chain(
      optax.clip_by_global_norm(spec.clip_norm),
      optax.adamw(learning_rate(spec), b1=spec.b1, b2=spec.b2, eps=spec.eps,
                  weight_decay=spec.weight_decay, mask=_decay_mask))
