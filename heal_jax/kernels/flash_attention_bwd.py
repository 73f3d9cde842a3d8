"""Flash-attention backward kernels, recomputing probabilities from the saved lse2.

With p = exp2(s - lse2) (s the log2-domain score) and delta = rowsum(dO * O):
  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dQ = dS K * sm_scale,  dK = dS^T Q * sm_scale.

Two kernels, neither needs atomics:
- `_dq_kernel`, grid (H, B, Nq): one query block of one head, looping over key blocks (the same
  causal and segment bounds as the forward pass).
- `_dkdv_kernel`, grid (K, B, Nk): one key block of one K/V head. It loops over the `groups` query
  heads that share this K/V head and, for each, over the query blocks that can see this key block,
  accumulating dK and dV in float32 registers; so the grouped-query reduction over the query heads
  of a group happens in-kernel and dK/dV are written once, already [B, S, K, D].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from heal_jax.kernels import flash_attention_common as common


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: common.KernelConfig,
               num_q_blocks: int, num_kv_blocks: int):
  """q, do [Bq, D]; k, v [Sp, D]; lse2, delta [Bq] -> dq [Bq, D]."""
  if cfg.has_segments:
    q_seg_ref, kv_seg_ref, first_ref, unmasked_ref, dq_ref = refs
  else:
    (dq_ref,), q_seg_ref, kv_seg_ref, first_ref, unmasked_ref = refs, None, None, None, None
  block_q, block_k = cfg.block_q_bwd, cfg.block_k_bwd
  i = num_q_blocks - 1 - pl.program_id(2)
  q_start = i * block_q
  q_BqxD, do_BqxD = q_ref[...], do_ref[...]
  lse_Bq, delta_Bq = lse_ref[...], delta_ref[...]
  q_seg_Bq = q_seg_ref[...] if cfg.has_segments else None
  first_Bq = first_ref[...] if cfg.has_segments else None
  loops = common.kv_loops_for_q_block(
      i, first_Bq, unmasked_ref[...] if cfg.has_segments else None, block_q=block_q,
      block_k=block_k, num_kv_blocks=num_kv_blocks)

  def body(j, dq_BqxD, *, causal: bool, segments: bool):
    k_start = pl.multiple_of(j * block_k, block_k)
    k_BkxD = k_ref[pl.ds(k_start, block_k), :]
    v_BkxD = v_ref[pl.ds(k_start, block_k), :]
    s_BqxBk = common.dot_nt(q_BqxD, k_BkxD) * cfg.scale2
    kv_seg_Bk = kv_seg_ref[pl.ds(k_start, block_k)] if segments else None
    mask = common.block_mask(q_seg_Bq if segments else None, kv_seg_Bk, q_start, k_start, block_q,
                             block_k, causal=causal, rows_are_queries=True)
    if mask is not None:
      s_BqxBk = jnp.where(mask, s_BqxBk, common.NEG)
    p_BqxBk = jnp.exp2(s_BqxBk - lse_Bq[:, None])
    dp_BqxBk = common.dot_nt(do_BqxD, v_BkxD)
    ds_BqxBk = p_BqxBk * (dp_BqxBk - delta_Bq[:, None])
    return dq_BqxD + common.dot_nn(ds_BqxBk.astype(k_BkxD.dtype), k_BkxD)

  dq_BqxD = jnp.zeros(q_BqxD.shape, jnp.float32)
  for start, stop, causal, seg in loops:
    dq_BqxD = jax.lax.fori_loop(start, stop, functools.partial(body, causal=causal, segments=seg),
                                dq_BqxD)
  dq_ref[...] = (dq_BqxD * cfg.sm_scale).astype(dq_ref.dtype)


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: common.KernelConfig,
                 num_q_blocks: int):
  """q, do [Lp, G, D]; k, v [Bk, D]; lse2, delta [G, Lp] -> dk, dv [Bk, D] summed over the G heads."""
  if cfg.has_segments:
    q_seg_ref, kv_seg_ref, last_ref, unmasked_ref, dk_ref, dv_ref = refs
  else:
    (dk_ref, dv_ref), q_seg_ref, kv_seg_ref, last_ref, unmasked_ref = refs, None, None, None, None
  block_q, block_k = cfg.block_q_dkdv, cfg.block_k_dkdv
  j = pl.program_id(2)
  k_start = j * block_k
  k_BkxD, v_BkxD = k_ref[...], v_ref[...]
  kv_seg_Bk = kv_seg_ref[...] if cfg.has_segments else None
  last_end_Bk = last_ref[...] if cfg.has_segments else None
  loops = common.q_loops_for_kv_block(
      j, last_end_Bk, unmasked_ref[...] if cfg.has_segments else None, block_q=block_q,
      block_k=block_k, num_q_blocks=num_q_blocks)

  def body(i, carry, *, g, causal: bool, segments: bool):
    dk_BkxD, dv_BkxD = carry
    q_start = pl.multiple_of(i * block_q, block_q)
    q_BqxD = q_ref[pl.ds(q_start, block_q), g, :]
    do_BqxD = do_ref[pl.ds(q_start, block_q), g, :]
    lse_Bq = lse_ref[g, pl.ds(q_start, block_q)]
    delta_Bq = delta_ref[g, pl.ds(q_start, block_q)]
    st_BkxBq = common.dot_nt(k_BkxD, q_BqxD) * cfg.scale2
    q_seg_Bq = q_seg_ref[pl.ds(q_start, block_q)] if segments else None
    mask = common.block_mask(kv_seg_Bk if segments else None, q_seg_Bq, k_start, q_start, block_k,
                             block_q, causal=causal, rows_are_queries=False)
    if mask is not None:
      st_BkxBq = jnp.where(mask, st_BkxBq, common.NEG)
    pt_BkxBq = jnp.exp2(st_BkxBq - lse_Bq[None, :])
    dv_BkxD = dv_BkxD + common.dot_nn(pt_BkxBq.astype(do_BqxD.dtype), do_BqxD)
    dpt_BkxBq = common.dot_nt(v_BkxD, do_BqxD)
    dst_BkxBq = pt_BkxBq * (dpt_BkxBq - delta_Bq[None, :])
    dk_BkxD = dk_BkxD + common.dot_nn(dst_BkxBq.astype(q_BqxD.dtype), q_BqxD)
    return dk_BkxD, dv_BkxD

  def head(g, carry):
    for first, stop, causal, seg in loops:
      carry = jax.lax.fori_loop(first, stop, functools.partial(body, g=g, causal=causal,
                                                               segments=seg), carry)
    return carry

  zeros_BkxD = jnp.zeros(k_BkxD.shape, jnp.float32)
  dk_BkxD, dv_BkxD = jax.lax.fori_loop(0, cfg.groups, head, (zeros_BkxD, zeros_BkxD))
  dk_ref[...] = (dk_BkxD * cfg.sm_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv_BkxD.astype(dv_ref.dtype)


def backward(q_BxLxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
             q_seg_BxL: jax.Array | None, kv_seg_BxS: jax.Array | None, out_BxLxHxD: jax.Array,
             lse2_BxHxL: jax.Array, dout_BxLxHxD: jax.Array,
             cfg: common.KernelConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Padded inputs, forward output/lse2 and output cotangent -> (dq, dk, dv) in the input dtypes.

  L is a multiple of both backward query blocks and S of both key blocks (see `forward`).
  """
  b, l, h, d = q_BxLxHxD.shape
  s, kv_heads = k_BxSxKxD.shape[1], k_BxSxKxD.shape[2]
  block_q, block_k, groups = cfg.block_q_bwd, cfg.block_k_bwd, cfg.groups
  nq, nk = l // block_q, s // block_k
  delta_BxLxH = jnp.sum(out_BxLxHxD.astype(jnp.float32) * dout_BxLxHxD.astype(jnp.float32), axis=-1)
  delta_BxHxL = jnp.transpose(delta_BxLxH, (0, 2, 1))
  dout_BxLxHxD = dout_BxLxHxD.astype(q_BxLxHxD.dtype)

  # dq: one program per (head, row, query block), like the forward pass.
  def q_map(hh, bb, n):
    return bb, nq - 1 - n, hh, 0

  def kv_map(hh, bb, n):
    del n
    return bb, 0, hh // groups, 0

  def row_map(hh, bb, n):
    return bb, hh, nq - 1 - n

  in_specs = [pl.BlockSpec((None, block_q, None, d), q_map),
              pl.BlockSpec((None, s, None, d), kv_map),
              pl.BlockSpec((None, s, None, d), kv_map),
              pl.BlockSpec((None, block_q, None, d), q_map),
              pl.BlockSpec((None, None, block_q), row_map),
              pl.BlockSpec((None, None, block_q), row_map)]
  args = [q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, dout_BxLxHxD, lse2_BxHxL, delta_BxHxL]
  if cfg.has_segments:
    q_row_spec = pl.BlockSpec((None, block_q), lambda hh, bb, n: (bb, nq - 1 - n))
    in_specs += [q_row_spec, pl.BlockSpec((None, s), lambda hh, bb, n: (bb, 0)), q_row_spec,
                 q_row_spec]
    args += [q_seg_BxL, kv_seg_BxS,
             *common.q_block_bound_args(q_seg_BxL, kv_seg_BxS, block_q, block_k)]
  dq_BxLxHxD = common.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, num_q_blocks=nq, num_kv_blocks=nk),
      cfg=cfg, grid=(h, b, nq), in_specs=in_specs,
      out_specs=pl.BlockSpec((None, block_q, None, d), q_map),
      out_shape=jax.ShapeDtypeStruct(q_BxLxHxD.shape, q_BxLxHxD.dtype),
      num_warps=cfg.num_warps_bwd, num_stages=cfg.num_stages_bwd,
      name="heal_flash_attention_bwd_dq")(*args)

  # dk, dv: one program per (K/V head, row, key block); the group's query heads are looped inside.
  # Its own tiling, under new names (the dq index maps above close over nq).
  block_qt, block_kt = cfg.block_q_dkdv, cfg.block_k_dkdv
  nqt, nkt = l // block_qt, s // block_kt

  def group_map(kk, bb, n):
    del n
    return bb, 0, kk, 0

  def group_row_map(kk, bb, n):
    del n
    return bb, kk, 0

  def kv_block_map(kk, bb, n):
    return bb, n, kk, 0

  in_specs = [pl.BlockSpec((None, l, groups, d), group_map),
              pl.BlockSpec((None, block_kt, None, d), kv_block_map),
              pl.BlockSpec((None, block_kt, None, d), kv_block_map),
              pl.BlockSpec((None, l, groups, d), group_map),
              pl.BlockSpec((None, groups, l), group_row_map),
              pl.BlockSpec((None, groups, l), group_row_map)]
  args = [q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, dout_BxLxHxD, lse2_BxHxL, delta_BxHxL]
  if cfg.has_segments:
    kv_row_spec = pl.BlockSpec((None, block_kt), lambda kk, bb, n: (bb, n))
    in_specs += [pl.BlockSpec((None, l), lambda kk, bb, n: (bb, 0)), kv_row_spec, kv_row_spec,
                 kv_row_spec]
    args += [q_seg_BxL, kv_seg_BxS,
             *common.kv_block_bound_args(q_seg_BxL, kv_seg_BxS, block_qt, block_kt)]
  kv_spec = pl.BlockSpec((None, block_kt, None, d), kv_block_map)
  dk_BxSxKxD, dv_BxSxKxD = common.pallas_call(
      functools.partial(_dkdv_kernel, cfg=cfg, num_q_blocks=nqt),
      cfg=cfg, grid=(kv_heads, b, nkt), in_specs=in_specs, out_specs=[kv_spec, kv_spec],
      out_shape=[jax.ShapeDtypeStruct(k_BxSxKxD.shape, k_BxSxKxD.dtype),
                 jax.ShapeDtypeStruct(v_BxSxKxD.shape, v_BxSxKxD.dtype)],
      num_warps=cfg.num_warps_bwd, num_stages=cfg.num_stages_bwd,
      name="heal_flash_attention_bwd_dkdv")(*args)
  return dq_BxLxHxD, dk_BxSxKxD, dv_BxSxKxD
