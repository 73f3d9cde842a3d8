"""optax AdamW with warmup + cosine/linear decay and global-norm clipping."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
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


HYPERPARAMS = ("peak_lr", "steps", "warmup_steps", "schedule", "end_lr_ratio", "weight_decay", "b1", "b2", "eps",
               "clip_norm")


def hyperparams(spec: OptimizerSpec) -> dict[str, float]:
  """The spec's numbers (the schedule as its index in SCHEDULES): an argument of the jitted train step,
  not constants inside it, so phases and runs that differ only in these share one compiled program
  (a 13B step compiles for minutes). The trainer places them as float32 arrays
  (`step.replicated_hyperparams`)."""
  if spec.schedule not in SCHEDULES:
    raise ValueError(f"unknown learning-rate schedule {spec.schedule!r}; expected one of {', '.join(SCHEDULES)}")
  values = dataclasses.asdict(spec) | {"schedule": SCHEDULES.index(spec.schedule)}
  return {k: float(values[k]) for k in HYPERPARAMS}


def schedule_value(hp: dict[str, Any], count: jax.Array) -> jax.Array:
  """Learning rate after `count` optimizer steps: linear warmup from 0 to peak_lr over warmup_steps, then
  decay to end_lr_ratio * peak_lr at `steps` (cosine or linear) or none (constant); float32 scalar.
  `hp` is `hyperparams(spec)`, or the same traced inside jit."""
  count = jnp.asarray(count, jnp.float32)
  warmup = hp["warmup_steps"]
  t = jnp.clip((count - warmup) / jnp.maximum(hp["steps"] - warmup, 1.0), 0.0, 1.0)
  end = hp["end_lr_ratio"]
  cosine = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
  linear = 1.0 + (end - 1.0) * t
  kind = hp["schedule"]
  decay = jnp.where(kind == SCHEDULES.index("cosine"), cosine,
                    jnp.where(kind == SCHEDULES.index("linear"), linear, 1.0))
  rising = count / jnp.maximum(warmup, 1.0)
  return hp["peak_lr"] * jnp.where(count < warmup, rising, decay)


def learning_rate(spec: OptimizerSpec) -> Callable[[jax.Array], jax.Array]:
  """The schedule of `spec` as a function of the optimizer's step count (see `schedule_value`)."""
  hp = hyperparams(spec)
  return lambda count: schedule_value(hp, count)


DECAYED = ("kernel", "embedding")


def _decay_mask(params: Any) -> Any:
  """Weight decay on matrices (kernels, embeddings), not on norm scales. Decided by name: with scanned
  layers a norm scale is [layers, hidden], as many dimensions as a matrix."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in DECAYED, params)


def make_optimizer(hp: dict[str, Any]) -> optax.GradientTransformation:
  """clip_by_global_norm -> AdamW(schedule); optimizer state in the parameters' dtype (fp32).
  `hp` is `hyperparams(spec)`, or the same traced inside the jitted step; the state's structure does
  not depend on the values."""
  return optax.chain(
      optax.clip_by_global_norm(hp["clip_norm"]),
      optax.adamw(lambda count: schedule_value(hp, count), b1=hp["b1"], b2=hp["b2"], eps=hp["eps"],
                  weight_decay=hp["weight_decay"], mask=_decay_mask))
