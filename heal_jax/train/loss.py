"""Next-token cross-entropy over masked targets, summed so it can be token-weighted globally."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def targets_and_weights(tokens_BxL: jax.Array, segment_ids_BxL: jax.Array,
                        loss_mask_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(targets_BxL, weights_BxL float32): position t predicts token t+1 of the same segment.

  weight[t] = loss_mask[t+1] where segment[t+1] == segment[t] != 0; the last position has weight 0.
  """
  targets = jnp.concatenate([tokens_BxL[:, 1:], jnp.zeros_like(tokens_BxL[:, :1])], axis=1)
  same = (segment_ids_BxL[:, 1:] == segment_ids_BxL[:, :-1]) & (segment_ids_BxL[:, 1:] > 0)
  weights = (loss_mask_BxL[:, 1:] > 0) & same
  weights = jnp.concatenate([weights, jnp.zeros_like(weights[:, :1])], axis=1)
  return targets, weights.astype(jnp.float32)


def cross_entropy_sums(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array,
                       z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sum of weighted NLL, sum of weighted z-loss, per-position NLL_BxL), float32.

  z-loss is z_loss * logsumexp(logits)^2 (PaLM), which keeps the softmax normaliser near 0.
  """
  logits = logits_BxLxV.astype(jnp.float32)
  lse_BxL = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  nll_BxL = (lse_BxL - target_logit) * weights_BxL
  z_BxL = z_loss * jnp.square(lse_BxL) * weights_BxL
  return nll_BxL.sum(), z_BxL.sum(), nll_BxL
