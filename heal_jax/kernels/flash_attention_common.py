"""Pieces shared by the flash-attention forward and backward kernels.

Conventions used by every kernel here:
- Scores are kept in the log2 domain: `s = (q . k) * sm_scale * log2(e)`, so the softmax uses `exp2`,
  and the saved row statistic is `lse2 = log2(sum_k exp2(s))` (float32, [B, H, L]).
- A masked score is the finite `NEG` (never -inf, so no `inf - inf`): `exp2(NEG - m) == 0` for any
  real running max m. A row that saw no visible key at all keeps `m == NEG`; the forward pass writes
  0 for it and `lse2 = BIG`, so the backward's `exp2(s - BIG)` is 0 and the row contributes nothing.
- Segment ids are int32, >= 0 for real tokens; the wrapper pads with -1, so padded keys never match
  a real query. Causal order is the index order of the (padded) arrays.
- Block sizes are powers of two >= 16 (Triton's tensor shapes and its MMA minimum).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:  # The Triton-specific parameters; the class moved between jax releases.
  from jax.experimental.pallas import triton as _plgpu
  _TritonParams = getattr(_plgpu, "CompilerParams", None) or getattr(_plgpu, "TritonCompilerParams")
except (ImportError, AttributeError):  # pragma: no cover - only on jax builds without Triton.
  _TritonParams = None

LOG2E = math.log2(math.e)
NEG = -1e30
BIG = 1e30


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Static (hashable) settings of one flash-attention call, shared by forward and backward.

  sm_scale is the natural-log softmax scale 1/sqrt(true head_dim); `groups` = H // K query heads
  per K/V head. Blocks: (block_q, block_k) for the forward pass, (block_q_bwd, block_k_bwd) for the
  dq kernel, (block_q_dkdv, block_k_dkdv) for the dk/dv kernel; the wrapper has padded L to a
  multiple of every block size so that all tilings cover the same padded arrays.
  """
  sm_scale: float
  groups: int
  has_segments: bool
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int
  block_q_dkdv: int
  block_k_dkdv: int
  num_warps: int
  num_warps_bwd: int
  num_stages: int
  num_stages_bwd: int
  interpret: bool
  debug: bool = False

  @property
  def scale2(self) -> float:
    """Multiplier taking q.k to log2-domain scores."""
    return self.sm_scale * LOG2E


def next_power_of_2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def pallas_call(kernel, *, cfg: KernelConfig, grid, in_specs, out_specs, out_shape, num_warps: int,
                num_stages: int, name: str):
  """`pl.pallas_call` with the Triton compiler parameters (ignored in interpret mode)."""
  params = {}
  if _TritonParams is not None:
    params["compiler_params"] = _TritonParams(num_warps=num_warps, num_stages=num_stages)
  return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, interpret=cfg.interpret, debug=cfg.debug, name=name,
                        **params)


def _first_match(ids_S: jax.Array, queries_L: jax.Array) -> jax.Array:
  """For each query value, the first position of `ids` holding it, else len(ids): [L] int32."""
  n = ids_S.shape[0]
  order_S = jnp.argsort(ids_S, stable=True)  # Stable: within a run of equal ids, positions ascend.
  sorted_S = ids_S[order_S]
  # Unrolled: straight-line compares XLA can fuse, instead of a loop whose every iteration is
  # its own kernel launches on a GPU.
  idx_L = jnp.searchsorted(sorted_S, queries_L, side="left", method="scan_unrolled")
  idx_L = jnp.minimum(idx_L, n - 1)
  return jnp.where(sorted_S[idx_L] == queries_L, order_S[idx_L], n).astype(jnp.int32)


def _last_match(ids_L: jax.Array, queries_S: jax.Array) -> jax.Array:
  """For each query value, the last position of `ids` holding it, else -1: [S] int32."""
  order_L = jnp.argsort(ids_L, stable=True)
  sorted_L = ids_L[order_L]
  idx_S = jnp.searchsorted(sorted_L, queries_S, side="right", method="scan_unrolled")
  idx_S = jnp.maximum(idx_S - 1, 0)
  return jnp.where(sorted_L[idx_S] == queries_S, order_L[idx_S], -1).astype(jnp.int32)


def first_kv_block(q_seg_BxL: jax.Array, kv_seg_BxS: jax.Array, block_k: int) -> jax.Array:
  """[B, L] int32: per query, the key block holding the first key of its segment (S // block_k if
  none). Nothing before it is visible to that query, so a query block's loop starts at the min."""
  first_BxL = jax.vmap(_first_match)(kv_seg_BxS, q_seg_BxL)
  return first_BxL // block_k


def last_q_block_end(q_seg_BxL: jax.Array, kv_seg_BxS: jax.Array, block_q: int) -> jax.Array:
  """[B, S] int32: per key, 1 + the query block holding the last query of its segment (0 if none).
  No later query sees that key, so a key block's loop over query blocks ends at the max."""
  last_BxS = jax.vmap(_last_match)(q_seg_BxL, kv_seg_BxS)
  return jnp.where(last_BxS >= 0, last_BxS // block_q + 1, 0)


def _block_uniform(q_seg_BxL: jax.Array, kv_seg_BxS: jax.Array, block_q: int,
                   block_k: int) -> jax.Array:
  """[B, Nq, Nk] bool: every query of block i and every key of block j share one segment id, so
  the tile needs no segment mask."""
  def one_id(seg_BxN, block):
    seg_BxMxBlock = seg_BxN.reshape(seg_BxN.shape[0], -1, block)
    lo_BxM, hi_BxM = seg_BxMxBlock.min(-1), seg_BxMxBlock.max(-1)
    return jnp.where(lo_BxM == hi_BxM, lo_BxM, jnp.iinfo(jnp.int32).min)  # min: no single id.
  q_BxNq, kv_BxNk = one_id(q_seg_BxL, block_q), one_id(kv_seg_BxS, block_k)
  return ((q_BxNq[:, :, None] == kv_BxNk[:, None, :])
          & (q_BxNq[:, :, None] != jnp.iinfo(jnp.int32).min))


def unmasked_kv_start(q_seg_BxL: jax.Array, kv_seg_BxS: jax.Array, block_q: int,
                      block_k: int) -> jax.Array:
  """[B, L] int32: per query, the first key block u of its query block's unmasked run: key blocks
  [u, full) (full = that block's first diagonal block) are all `_block_uniform` with it, so the
  forward and dq loops drop the segment mask there. Long documents make most tiles so."""
  uniform_BxNqxNk = _block_uniform(q_seg_BxL, kv_seg_BxS, block_q, block_k)
  nq, nk = uniform_BxNqxNk.shape[1:]
  full_Nq = (jnp.arange(nq, dtype=jnp.int32) * block_q + 1) // block_k
  j_Nk = jnp.arange(nk, dtype=jnp.int32)
  breaks_BxNqxNk = jnp.where(~uniform_BxNqxNk & (j_Nk[None, :] < full_Nq[:, None]), j_Nk, -1)
  return jnp.repeat(breaks_BxNqxNk.max(-1) + 1, block_q, axis=1)


def unmasked_q_end(q_seg_BxL: jax.Array, kv_seg_BxS: jax.Array, block_q: int,
                   block_k: int) -> jax.Array:
  """[B, S] int32: per key, the end v of its key block's unmasked run of query blocks: blocks
  [full, v) (full = the first block wholly after the diagonal) are all `_block_uniform` with it,
  so the dk/dv loop drops the segment mask there."""
  uniform_BxNqxNk = _block_uniform(q_seg_BxL, kv_seg_BxS, block_q, block_k)
  nq, nk = uniform_BxNqxNk.shape[1:]
  full_Nk = (jnp.arange(nk, dtype=jnp.int32) * block_k + block_k - 1 + block_q - 1) // block_q
  i_Nq = jnp.arange(nq, dtype=jnp.int32)
  breaks_BxNqxNk = jnp.where(~uniform_BxNqxNk & (i_Nq[:, None] >= full_Nk[None, :]),
                             i_Nq[:, None], nq)
  return jnp.repeat(breaks_BxNqxNk.min(1), block_k, axis=1)


def q_block_bound_args(q_seg_BxL: jax.Array, kv_seg_BxS: jax.Array, block_q: int,
                       block_k: int) -> list[jax.Array]:
  """The per-query [B, L] inputs of a kernel that loops over key blocks (forward, dq):
  `first_kv_block` and `unmasked_kv_start`, for `kv_loops_for_q_block`."""
  return [first_kv_block(q_seg_BxL, kv_seg_BxS, block_k),
          unmasked_kv_start(q_seg_BxL, kv_seg_BxS, block_q, block_k)]


def kv_block_bound_args(q_seg_BxL: jax.Array, kv_seg_BxS: jax.Array, block_q: int,
                        block_k: int) -> list[jax.Array]:
  """The per-key [B, S] inputs of the kernel that loops over query blocks (dk/dv):
  `last_q_block_end` and `unmasked_q_end`, for `q_loops_for_kv_block`."""
  return [last_q_block_end(q_seg_BxL, kv_seg_BxS, block_q),
          unmasked_q_end(q_seg_BxL, kv_seg_BxS, block_q, block_k)]


# ------------------------------------------------------------------------------------------------
# In-kernel helpers (traced inside the kernels; only ops the Triton lowering supports).


def dot_nt(a_MxD: jax.Array, b_NxD: jax.Array) -> jax.Array:
  """a @ b.T with float32 accumulation: [M, N]."""
  return jax.lax.dot_general(a_MxD, b_NxD, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)


def dot_nn(a_MxK: jax.Array, b_KxN: jax.Array) -> jax.Array:
  """a @ b with float32 accumulation: [M, N]."""
  return jax.lax.dot_general(a_MxK, b_KxN, (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


def block_mask(row_seg_R: jax.Array | None, col_seg_C: jax.Array | None, row_start, col_start,
               num_rows: int, num_cols: int, *, causal: bool, rows_are_queries: bool):
  """Boolean [R, C] visibility of a (rows, cols) tile, or None when nothing is masked.

  Visible = same segment (when segments are given) and, with `causal`, key index <= query index.
  """
  mask = None
  if row_seg_R is not None:
    mask = row_seg_R[:, None] == col_seg_C[None, :]
  if causal:
    rows_Rx1 = row_start + jnp.arange(num_rows, dtype=jnp.int32)[:, None]
    cols_1xC = col_start + jnp.arange(num_cols, dtype=jnp.int32)[None, :]
    order = rows_Rx1 >= cols_1xC if rows_are_queries else rows_Rx1 <= cols_1xC
    mask = order if mask is None else mask & order
  return mask


def _div(a, b: int):
  """Integer division of a non-negative int32 scalar (truncating = floor here; plain `lax.div`)."""
  return jax.lax.div(a, jnp.int32(b))


def kv_blocks_for_q_block(i, first_kv_block_Bq: jax.Array | None, *, block_q: int, block_k: int,
                          num_kv_blocks: int):
  """Key-block loop bounds for query block i: (lo, full, hi).

  Blocks [lo, min(full, hi)) need no causal mask (every key precedes every query of the block);
  blocks [max(lo, full), hi) straddle the diagonal. Blocks after the diagonal are never visited, nor
  (with segments: `first_kv_block` of the block's queries) blocks before its earliest document start.
  """
  hi = jnp.minimum(_div(i * block_q + block_q + block_k - 1, block_k), num_kv_blocks)
  full = _div(i * block_q + 1, block_k)
  lo = jnp.int32(0) if first_kv_block_Bq is None else jnp.min(first_kv_block_Bq)
  return lo, full, hi


def q_blocks_for_kv_block(j, last_q_block_end_Bk: jax.Array | None, *, block_q: int, block_k: int,
                          num_q_blocks: int):
  """Query-block loop bounds for key block j: (lo, full, hi).

  Blocks [lo, min(full, hi)) straddle the diagonal (need the causal mask); blocks [max(lo, full), hi)
  lie wholly after this key block. Earlier query blocks (all in the keys' future) are skipped, and
  with segments (`last_q_block_end` of the block's keys) so are blocks after its documents end.
  """
  lo = _div(j * block_k, block_q)
  full = _div(j * block_k + block_k - 1 + block_q - 1, block_q)
  hi = jnp.int32(num_q_blocks)
  if last_q_block_end_Bk is not None:
    hi = jnp.minimum(jnp.max(last_q_block_end_Bk), hi)
  return lo, full, hi


def kv_loops_for_q_block(i, first_kv_block_Bq: jax.Array | None,
                         unmasked_kv_start_Bq: jax.Array | None, *, block_q: int, block_k: int,
                         num_kv_blocks: int) -> tuple:
  """The forward and dq kernels' loops over key blocks for query block i, as
  ((start, stop, causal, segments), ...): below the diagonal, [lo, mid) with the segment mask and
  [mid, end) with none (`unmasked_kv_start`); then the diagonal blocks. The bound arrays are None
  without segment ids."""
  lo, full, hi = kv_blocks_for_q_block(i, first_kv_block_Bq, block_q=block_q, block_k=block_k,
                                       num_kv_blocks=num_kv_blocks)
  end, diagonal = jnp.minimum(full, hi), jnp.maximum(lo, full)
  if unmasked_kv_start_Bq is None:
    return (lo, end, False, False), (diagonal, hi, True, False)
  mid = jnp.clip(jnp.min(unmasked_kv_start_Bq), lo, end)
  return (lo, mid, False, True), (mid, end, False, False), (diagonal, hi, True, True)


def q_loops_for_kv_block(j, last_q_block_end_Bk: jax.Array | None,
                         unmasked_q_end_Bk: jax.Array | None, *, block_q: int, block_k: int,
                         num_q_blocks: int) -> tuple:
  """The dk/dv kernel's loops over query blocks for key block j, as ((start, stop, causal,
  segments), ...): the diagonal blocks; then past the diagonal, [start, mid) with no mask
  (`unmasked_q_end`) and [mid, hi) with the segment mask. The bound arrays are None without
  segment ids."""
  lo, full, hi = q_blocks_for_kv_block(j, last_q_block_end_Bk, block_q=block_q, block_k=block_k,
                                       num_q_blocks=num_q_blocks)
  diagonal, start = (lo, jnp.minimum(full, hi)), jnp.maximum(lo, full)
  if unmasked_q_end_Bk is None:
    return (*diagonal, True, False), (start, hi, False, False)
  mid = jnp.clip(jnp.max(unmasked_q_end_Bk), start, hi)
  return (*diagonal, True, True), (start, mid, False, False), (mid, hi, False, True)
