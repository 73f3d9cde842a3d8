"""The TPU path: jax's Pallas splash attention (causal, segment ids, grouped-query), thinly wrapped.

Not our kernel (that is flash_attention.py, for GPU): on TPU, jax's own splash kernel is the one to
use. This wrapper maps our layout ([B, L, H, D] queries, [B, S, K, D] keys/values, segment ids with
0 = padding) onto it: queries are pre-scaled by D**-0.5 (splash does not scale), sequences are
padded to the block size, the batch is vmapped. It assumes self-attention over positions 0..L-1
in order (the training forward); the KV-cache decode path never comes here. Off TPU it runs in
Pallas interpret mode, which is how it is tested (tests/test_splash.py, CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.lru_cache(maxsize=16)
def _kernel(num_heads: int, length: int, block: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk  # pylint: disable=import-outside-toplevel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm  # pylint: disable=import-outside-toplevel
  mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(num_heads)])
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  return sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret), sk


def splash_attention(q_BxLxHxD: jax.Array, k_BxLxKxD: jax.Array, v_BxLxKxD: jax.Array,
                     segment_ids_BxL: jax.Array, block: int = 512,
                     interpret: bool | None = None) -> jax.Array:
  """Causal, segment-masked attention; returns [B, L, H, D] in q's dtype. K must divide H."""
  b, length, h, d = q_BxLxHxD.shape
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  block = min(block, max(128, -(-length // 128) * 128))
  padded = -(-length // block) * block
  pad = padded - length
  if pad:
    q_BxLxHxD, k_BxLxKxD, v_BxLxKxD = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
                                       for x in (q_BxLxHxD, k_BxLxKxD, v_BxLxKxD))
    segment_ids_BxL = jnp.pad(segment_ids_BxL, ((0, 0), (0, pad)))
  kernel, sk = _kernel(h, padded, block, interpret)
  scale = d ** -0.5

  def one(q_LxHxD, k_LxKxD, v_LxKxD, seg_L):
    out_HxLxD = kernel(jnp.swapaxes(q_LxHxD * scale, 0, 1).astype(q_LxHxD.dtype), jnp.swapaxes(k_LxKxD, 0, 1),
                       jnp.swapaxes(v_LxKxD, 0, 1), segment_ids=sk.SegmentIds(q=seg_L, kv=seg_L))
    return jnp.swapaxes(out_HxLxD, 0, 1)

  out = jax.vmap(one)(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL)
  return out[:, :length].astype(q_BxLxHxD.dtype)
