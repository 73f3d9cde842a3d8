"""The XLA attention path: its query blocks (`attention._xla_blocks`) against the one-block computation,
and outputs and gradients against a float64 NumPy attention with a hand-written backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heal_jax.model import attention as attention_lib


def _positions(seg_BxL: np.ndarray) -> np.ndarray:
  """Positions restarting at 0 with each document of packed rows, as the trainer gives them."""
  pos = np.zeros_like(seg_BxL)
  for i in range(1, seg_BxL.shape[1]):
    pos[:, i] = np.where(seg_BxL[:, i] == seg_BxL[:, i - 1], pos[:, i - 1] + 1, 0)
  return pos


def test_xla_blocks_equal_the_whole_computation_for_real_tokens():
  """Packed rows of an odd length over several blocks, positions restarting per document as the
  trainer gives them, a padding tail: outputs and gradients of every real token equal the
  one-block reference's (float32, 1e-5), and the blocks path is the one `attention` takes."""
  b, l, h, kv, d = 2, 3 * attention_lib.XLA_BLOCK + 17, 4, 2, 16
  rng = np.random.RandomState(0)
  seg = np.sort(rng.randint(1, 6, (b, l)), axis=1)
  seg[:, l - 9:] = 0  # padding tail
  pos = _positions(seg)
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


def _numpy_attention(q, k, v, seg, pos, d_out):
  """float64 NumPy attention and its gradients for the cotangent d_out, written out by hand:
  P = softmax(Q K^T / sqrt(D) + mask), O = P V; dV = P^T dO, dP = dO V^T,
  dS = P * (dP - rowsum(dP * P)), dQ = dS K / sqrt(D), dK = dS^T Q / sqrt(D); K/V heads shared by
  H / K query heads each, their gradients summed over the group."""
  b, l, h, d = q.shape
  kv = k.shape[2]
  out, dq = np.zeros((b, l, h, d)), np.zeros((b, l, h, d))
  dk, dv = np.zeros(k.shape), np.zeros(v.shape)
  for r in range(b):
    allowed = (seg[r][:, None] == seg[r][None, :]) & (pos[r][:, None] >= pos[r][None, :])
    for head in range(h):
      g = head // (h // kv)
      s = q[r, :, head] @ k[r, :, g].T / np.sqrt(d)
      s = np.where(allowed, s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[r, :, head] = p @ v[r, :, g]
      do = d_out[r, :, head]
      dv[r, :, g] += p.T @ do
      dp = do @ v[r, :, g].T
      ds = p * (dp - (dp * p).sum(-1, keepdims=True))
      dq[r, :, head] = ds @ k[r, :, g] / np.sqrt(d)
      dk[r, :, g] += ds.T @ q[r, :, head] / np.sqrt(d)
  return out, (dq, dk, dv)


@pytest.mark.parametrize("l,h,kv", [(2 * attention_lib.XLA_BLOCK + 45, 4, 2), (attention_lib.XLA_BLOCK - 3, 8, 1),
                                    (37, 6, 6)])
def test_xla_attention_and_gradients_equal_a_float64_numpy_reference(l, h, kv):
  """`attention(impl="xla")` (one block or several) and its gradients against float64 NumPy, on
  packed rows with positions restarting per document and no padding (every query sees at least
  itself): GQA 2:1, MQA and plain multi-head; float32 within 2e-5 relative to the largest value."""
  b, d = 2, 16
  rng = np.random.RandomState(l)
  seg = np.sort(rng.randint(1, 5, (b, l)), axis=1)
  pos = _positions(seg)
  q, d_out = rng.randn(b, l, h, d), rng.randn(b, l, h, d)
  k, v = rng.randn(b, l, kv, d), rng.randn(b, l, kv, d)
  want_out, want_grads = _numpy_attention(q, k, v, seg, pos, d_out)

  def fn(q, k, v):
    return attention_lib.attention(q, k, v, q_segment_ids_BxL=jnp.asarray(seg, jnp.int32),
                                   kv_segment_ids_BxS=jnp.asarray(seg, jnp.int32),
                                   q_index_BxL=jnp.asarray(pos, jnp.int32), kv_index_BxS=jnp.asarray(pos, jnp.int32),
                                   impl="xla")
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  out, vjp = jax.vjp(fn, f32(q), f32(k), f32(v))
  got_grads = vjp(f32(d_out))
  for got, want in zip((out,) + tuple(got_grads), (want_out,) + want_grads):
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5 * np.abs(want).max())


def test_bfloat16_inputs_give_bfloat16_outputs_and_gradients_near_the_float64_reference():
  """The model computes attention in its compute dtype: bf16 q, k, v give bf16 outputs and gradients
  (softmax in float32 inside), within bf16 rounding (3e-2 relative to the largest value) of float64."""
  b, l, h, kv, d = 2, attention_lib.XLA_BLOCK + 45, 4, 2, 16
  rng = np.random.RandomState(1)
  seg = np.sort(rng.randint(1, 4, (b, l)), axis=1)
  pos = _positions(seg)
  q, d_out = rng.randn(b, l, h, d), rng.randn(b, l, h, d)
  k, v = rng.randn(b, l, kv, d), rng.randn(b, l, kv, d)
  bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)
  # the reference sees the same bf16-rounded inputs
  rounded = [np.asarray(bf16(x), np.float64) for x in (q, k, v, d_out)]
  want_out, want_grads = _numpy_attention(*rounded[:3], seg, pos, rounded[3])
  ids = {name: jnp.asarray(x, jnp.int32) for name, x in (("seg", seg), ("pos", pos))}
  fn = lambda q, k, v: attention_lib.attention(q, k, v, q_segment_ids_BxL=ids["seg"], kv_segment_ids_BxS=ids["seg"],
                                               q_index_BxL=ids["pos"], kv_index_BxS=ids["pos"], impl="xla")
  out, vjp = jax.vjp(fn, bf16(q), bf16(k), bf16(v))
  got_grads = vjp(bf16(d_out))
  for got, want in zip((out,) + tuple(got_grads), (want_out,) + want_grads):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=3e-2 * np.abs(want).max())
