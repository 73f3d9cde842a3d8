"""The XLA path's query blocks (`attention._xla_blocks`) against the one-block reference."""

import jax
import jax.numpy as jnp
import numpy as np

from heal_jax.model import attention as attention_lib


def test_xla_blocks_equal_the_whole_computation_for_real_tokens():
  """Packed rows of an odd length over several blocks, positions restarting per document as the
  trainer gives them, a padding tail: outputs and gradients of every real token equal the
  one-block reference's (float32, 1e-5), and the blocks path is the one `attention` takes."""
  b, l, h, kv, d = 2, 3 * attention_lib.XLA_BLOCK + 17, 4, 2, 16
  rng = np.random.RandomState(0)
  seg = np.sort(rng.randint(1, 6, (b, l)), axis=1)
  seg[:, l - 9:] = 0  # padding tail
  pos = np.zeros_like(seg)
  for r in range(b):
    for i in range(1, l):
      pos[r, i] = pos[r, i - 1] + 1 if seg[r, i] == seg[r, i - 1] else 0
  seg, pos = jnp.asarray(seg, jnp.int32), jnp.asarray(pos, jnp.int32)
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  q = jax.random.normal(keys[0], (b, l, h, d))
  k = jax.random.normal(keys[1], (b, l, kv, d))
  v = jax.random.normal(keys[2], (b, l, kv, d))
  real = (seg > 0)[:, :, None, None]
  mask = attention_lib.make_mask(seg, seg, pos, pos)

  def loss(fn, q, k, v):
    return jnp.sum(jnp.where(real, fn(q, k, v), 0.0) ** 2)
  whole = lambda q, k, v: attention_lib.xla_attention(q, k, v, mask)
  blocks = lambda q, k, v: attention_lib.attention(q, k, v, q_segment_ids_BxL=seg, kv_segment_ids_BxS=seg,
                                                   q_index_BxL=pos, kv_index_BxS=pos, impl="xla")
  out_whole, out_blocks = whole(q, k, v), blocks(q, k, v)
  np.testing.assert_allclose(np.where(real, out_blocks, 0), np.where(real, out_whole, 0), atol=1e-5)
  grads_whole = jax.grad(lambda *a: loss(whole, *a), argnums=(0, 1, 2))(q, k, v)
  grads_blocks = jax.grad(lambda *a: loss(blocks, *a), argnums=(0, 1, 2))(q, k, v)
  for gw, gb in zip(grads_whole, grads_blocks):
    np.testing.assert_allclose(gb, gw, atol=1e-5)
  hlo = jax.jit(blocks).lower(q, k, v).as_text()
  assert hlo.count("dot_general") >= 2 * 4  # four query blocks, two products each
