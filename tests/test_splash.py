"""'splash' (jax's TPU splash attention, wrapped) in Pallas interpret mode against the fp32 XLA reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heal_jax.kernels import splash
from heal_jax.model import attention


@pytest.mark.parametrize("length,heads,kv_heads", [(200, 4, 2), (128, 4, 1)])
def test_splash_matches_xla_forward_and_gradients(length, heads, kv_heads):
  rng = np.random.default_rng(length)
  shape_q, shape_kv = (2, length, heads, 64), (2, length, kv_heads, 64)
  q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in (shape_q, shape_kv, shape_kv))
  seg = np.ones((2, length), np.int32)
  seg[0, length // 3:] = 2          # two documents in row 0
  seg[1, length - 7:] = 0           # padding at the end of row 1
  seg = jnp.asarray(seg)
  idx = jnp.broadcast_to(jnp.arange(length), (2, length))
  mask = attention.make_mask(seg, seg, idx, idx)
  valid = (seg > 0)[:, :, None, None]

  def loss(fn, q, k, v):
    return jnp.sum(jnp.where(valid, fn(q, k, v), 0.0) ** 2)
  ours = lambda q, k, v: splash.splash_attention(q, k, v, seg, block=128, interpret=True)
  ref = lambda q, k, v: attention.xla_attention(q, k, v, mask)
  np.testing.assert_allclose(np.where(valid, ours(q, k, v), 0), np.where(valid, ref(q, k, v), 0), atol=2e-5)
  g_ours = jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2))(q, k, v)
  g_ref = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)
