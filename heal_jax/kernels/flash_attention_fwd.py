"""Flash-attention forward kernel: online softmax over key blocks, one program per query block.

Grid (H, B, Nq): program (h, b, n) handles query block i = Nq - 1 - n of head h in row b, so the
longest causal rows are launched first (better tail balance). It reads keys and values of K/V head
h // groups straight from the [B, S, K, D] arrays (grouped-query attention without a repeat).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from heal_jax.kernels import flash_attention_common as common


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, cfg: common.KernelConfig, num_q_blocks: int,
                num_kv_blocks: int):
  """One query block: q [Bq, D]; k, v [Sp, D]; writes o [Bq, D] and lse2 [Bq] (float32)."""
  if cfg.has_segments:
    q_seg_ref, kv_seg_ref, first_ref, unmasked_ref, o_ref, lse_ref = refs
  else:
    (o_ref, lse_ref), q_seg_ref, kv_seg_ref, first_ref, unmasked_ref = refs, None, None, None, None
  block_q, block_k = cfg.block_q, cfg.block_k
  i = num_q_blocks - 1 - pl.program_id(2)
  q_start = i * block_q
  q_BqxD = q_ref[...]
  q_seg_Bq = q_seg_ref[...] if cfg.has_segments else None
  first_Bq = first_ref[...] if cfg.has_segments else None
  loops = common.kv_loops_for_q_block(
      i, first_Bq, unmasked_ref[...] if cfg.has_segments else None, block_q=block_q,
      block_k=block_k, num_kv_blocks=num_kv_blocks)

  def body(j, carry, *, causal: bool, segments: bool):
    m_Bq, l_Bq, acc_BqxD = carry
    k_start = pl.multiple_of(j * block_k, block_k)
    k_BkxD = k_ref[pl.ds(k_start, block_k), :]
    v_BkxD = v_ref[pl.ds(k_start, block_k), :]
    s_BqxBk = common.dot_nt(q_BqxD, k_BkxD) * cfg.scale2
    kv_seg_Bk = kv_seg_ref[pl.ds(k_start, block_k)] if segments else None
    mask = common.block_mask(q_seg_Bq if segments else None, kv_seg_Bk, q_start, k_start, block_q,
                             block_k, causal=causal, rows_are_queries=True)
    if mask is not None:
      s_BqxBk = jnp.where(mask, s_BqxBk, common.NEG)
    m_new_Bq = jnp.maximum(m_Bq, jnp.max(s_BqxBk, axis=1))
    alpha_Bq = jnp.exp2(m_Bq - m_new_Bq)
    p_BqxBk = jnp.exp2(s_BqxBk - m_new_Bq[:, None])
    l_Bq = l_Bq * alpha_Bq + jnp.sum(p_BqxBk, axis=1)
    acc_BqxD = acc_BqxD * alpha_Bq[:, None] + common.dot_nn(p_BqxBk.astype(v_BkxD.dtype), v_BkxD)
    return m_new_Bq, l_Bq, acc_BqxD

  head_dim = q_BqxD.shape[-1]
  carry = (jnp.full((block_q,), common.NEG, jnp.float32), jnp.zeros((block_q,), jnp.float32),
           jnp.zeros((block_q, head_dim), jnp.float32))
  for start, stop, causal, seg in loops:
    carry = jax.lax.fori_loop(start, stop, functools.partial(body, causal=causal, segments=seg),
                              carry)
  m_Bq, l_Bq, acc_BqxD = carry
  seen_Bq = m_Bq > 0.5 * common.NEG  # False only for a row with no visible key at all.
  l_Bq = jnp.where(seen_Bq, l_Bq, 1.0)
  o_BqxD = jnp.where(seen_Bq[:, None], acc_BqxD / l_Bq[:, None], 0.0)
  o_ref[...] = o_BqxD.astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen_Bq, m_Bq + jnp.log2(l_Bq), common.BIG)


def forward(q_BxLxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
            q_seg_BxL: jax.Array | None, kv_seg_BxS: jax.Array | None,
            cfg: common.KernelConfig) -> tuple[jax.Array, jax.Array]:
  """Padded inputs -> (out [B, L, H, D] in q's dtype, lse2 [B, H, L] float32).

  L is a multiple of cfg.block_q, S of cfg.block_k, D a power of two >= 16; segment ids are
  int32 [B, L] / [B, S] exactly when cfg.has_segments.
  """
  b, l, h, d = q_BxLxHxD.shape
  s = k_BxSxKxD.shape[1]
  block_q, block_k, groups = cfg.block_q, cfg.block_k, cfg.groups
  nq, nk = l // block_q, s // block_k

  def q_map(hh, bb, n):
    return bb, nq - 1 - n, hh, 0

  def kv_map(hh, bb, n):
    del n
    return bb, 0, hh // groups, 0

  in_specs = [pl.BlockSpec((None, block_q, None, d), q_map),
              pl.BlockSpec((None, s, None, d), kv_map),
              pl.BlockSpec((None, s, None, d), kv_map)]
  args = [q_BxLxHxD, k_BxSxKxD, v_BxSxKxD]
  if cfg.has_segments:
    q_row_spec = pl.BlockSpec((None, block_q), lambda hh, bb, n: (bb, nq - 1 - n))
    in_specs += [q_row_spec, pl.BlockSpec((None, s), lambda hh, bb, n: (bb, 0)), q_row_spec,
                 q_row_spec]
    args += [q_seg_BxL, kv_seg_BxS,
             *common.q_block_bound_args(q_seg_BxL, kv_seg_BxS, block_q, block_k)]
  out_specs = [pl.BlockSpec((None, block_q, None, d), q_map),
               pl.BlockSpec((None, None, block_q), lambda hh, bb, n: (bb, hh, nq - 1 - n))]
  out_shape = [jax.ShapeDtypeStruct((b, l, h, d), q_BxLxHxD.dtype),
               jax.ShapeDtypeStruct((b, h, l), jnp.float32)]
  kernel = functools.partial(_fwd_kernel, cfg=cfg, num_q_blocks=nq, num_kv_blocks=nk)
  out_BxLxHxD, lse2_BxHxL = common.pallas_call(
      kernel, cfg=cfg, grid=(h, b, nq), in_specs=in_specs, out_specs=out_specs,
      out_shape=out_shape, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
      name="heal_flash_attention_fwd")(*args)
  return out_BxLxHxD, lse2_BxHxL
