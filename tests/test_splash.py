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


@pytest.mark.parametrize("impl", ["pallas", "splash"])
def test_kernels_under_a_mesh_equal_xla(impl):
  """Inside a (data 2, fsdp 2, tensor 2) mesh the Pallas kernels run per shard (shard_map) and the
  model's logits equal the XLA path's."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from heal_jax.model import llama  # pylint: disable=import-outside-toplevel
  from heal_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  from heal_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from heal_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  cfg = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4, num_kv_heads=2,
                    max_position_embeddings=128, param_dtype="float32", compute_dtype="float32", attention_impl="xla")
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  params = jax.jit(lambda key: state_lib.unboxed_init(cfg, key),
                   out_shardings=state_lib.param_shardings(cfg, mesh))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 128, (4, 128)), jnp.int32)
  seg = jnp.asarray(np.repeat([[1] * 50 + [2] * 78], 4, 0), jnp.int32)
  pos = jnp.asarray(np.repeat([list(range(50)) + list(range(78))], 4, 0), jnp.int32)

  def logits(impl_name):
    model = llama.Llama(cfg.replace(attention_impl=impl_name))
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
      return np.asarray(jax.jit(lambda p: model.apply({"params": p}, tokens, seg, pos))(params))
  np.testing.assert_allclose(logits(impl), logits("xla"), atol=2e-5)
