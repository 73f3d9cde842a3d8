"""Next-token choice from logits: greedy, or temperature with optional top-k and top-p (nucleus)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How to pick each token; hashable, so it can be a static argument of a jitted function.

  temperature: 0 picks the argmax (greedy) and ignores top_k/top_p; > 0 samples from
    softmax(logits / temperature).
  top_k: keep only the k most likely tokens (0 = no limit). top_k=1 gives the greedy tokens.
  top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1 = all).
  """
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not 0 <= self.temperature < float("inf"):
      raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


# Below float32's smallest normal number a temperature is flushed to 0 on some backends (0 / 0 = NaN);
# at 1e-30 every logit behind the top one by more than ~1e-28 already gets probability 0.
_MIN_TEMPERATURE = 1e-30


def _mask_below(logits_BxV: jax.Array, threshold_Bx1: jax.Array) -> jax.Array:
  return jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)


def filter_logits(logits_BxV: jax.Array, sampling: Sampling) -> jax.Array:
  """float32 logits less their row maximum, scaled by 1/temperature, with tokens outside top-k / top-p
  set to -inf.

  The most likely token always survives, at 0 (so a tiny temperature gives -inf, never NaN, to the
  others: greedy in effect; temperatures below 1e-30 are taken as 1e-30). Ties at the top-k or top-p boundary are all kept.
  """
  logits_BxV = logits_BxV.astype(jnp.float32)
  temperature = max(sampling.temperature, _MIN_TEMPERATURE)
  top_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
  logits_BxV = (logits_BxV - jnp.where(jnp.isfinite(top_Bx1), top_Bx1, 0.0)) / temperature
  if sampling.top_k:
    k = min(sampling.top_k, logits_BxV.shape[-1])
    kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, -1:]
    logits_BxV = _mask_below(logits_BxV, kth_Bx1)
  if sampling.top_p < 1:
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass strictly more likely than each
    keep_BxV = before_BxV < sampling.top_p
    threshold_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = _mask_below(logits_BxV, threshold_Bx1)
  return logits_BxV


def sample(logits_BxV: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
  """int32 token ids [B]: argmax when greedy, else a draw from the filtered distribution."""
  if sampling.greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits_BxV, sampling), axis=-1).astype(jnp.int32)
