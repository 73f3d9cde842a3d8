"""Rotary position embeddings in HF's `rotate_half` convention, with linear position interpolation."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_angles(positions_BxL: jax.Array, head_dim: int, theta: float,
                scaling_factor: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """cos and sin tables, each float32 [B, L, head_dim].

  Linear interpolation ("linear" rope type) divides positions by `scaling_factor`,
  which HF implements as dividing the inverse frequencies by it.
  """
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv_freq_H = 1.0 / (theta ** exponents) / scaling_factor
  angles_BxLxH = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_H
  angles_BxLxD = jnp.concatenate([angles_BxLxH, angles_BxLxH], axis=-1)
  return jnp.cos(angles_BxLxD), jnp.sin(angles_BxLxD)


def apply_rope(x_BxLxNxD: jax.Array, cos_BxLxD: jax.Array, sin_BxLxD: jax.Array) -> jax.Array:
  """Rotates query or key heads; computed in float32, returned in x's dtype."""
  x = x_BxLxNxD.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos_BxLxD[:, :, None, :], sin_BxLxD[:, :, None, :]
  return (x * cos + rotated * sin).astype(x_BxLxNxD.dtype)
