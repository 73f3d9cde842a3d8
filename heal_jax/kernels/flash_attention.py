"""Flash attention in Pallas (GPU via the Triton lowering), causal, with segment ids and GQA.

`flash_attention(q, k, v, q_segment_ids, kv_segment_ids)` computes the same function as
`heal_jax.model.attention.xla_attention` with `make_mask` over index order: query l sees key s iff
s <= l and (when segment ids are given) their segment ids are equal. It never forms the [L, S] score
matrix: the forward pass keeps an online softmax per query block and saves only the row log-sum-exp;
the backward pass (a `jax.custom_vjp`) recomputes the probabilities from it.

What it does with the shapes it is given:
- Any L, S: both are padded inside to the block sizes; padded keys get segment id -1 (real ids must
  be >= 0, as the data pipeline's are, 0 being its padding document), and with no segment ids the
  causal order alone hides them from real queries whenever L <= S (else ids are synthesised).
- Any head dim: padded with zeros to a power of two >= 16 (free for 64 and 128); the softmax scale is
  1/sqrt(true head dim).
- Grouped-query / multi-query attention: K/V heads are read in place (query head h uses K/V head
  h // (H // K)); dK/dV sum over the group inside the backward kernel (see flash_attention_bwd).
- Skipped work: key blocks after the diagonal are outside the loop bounds, and blocks straddling it
  are the only ones paying for the causal mask; with segment ids, each query block starts at the
  first key block of its earliest document (and each key block stops at the last query block of
  its latest document), so a packed row of short documents costs about the sum of their squares
  (exact for contiguous documents, the packer's layout, trailing padding included). Tiles whose
  queries and keys all carry one segment id (most tiles of long documents) skip the segment mask.
- bf16/fp16/fp32 inputs; matmuls accumulate in float32; the softmax runs in float32.
- A query row with no visible key (impossible in self-attention, where each query sees itself)
  returns 0 where the XLA reference returns the mean of the values.

`interpret=None` runs the kernels in Pallas interpret mode unless the default backend is a GPU
(the only way they can run on CPU; slow, for tests).

jax 0.11 warns that Pallas' Triton backend is deprecated in favour of Mosaic GPU. These kernels
still compile and pass their tests there (H100, jax 0.11.2, BENCHMARKS.md); a port is due before a
jax release drops the backend.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from heal_jax.kernels import flash_attention_bwd as bwd
from heal_jax.kernels import flash_attention_common as common
from heal_jax.kernels import flash_attention_fwd as fwd

_MIN_BLOCK = 16


def _check_block(name: str, value: int) -> None:
  if value < _MIN_BLOCK or value & (value - 1):
    raise ValueError(f"flash_attention: {name}={value} must be a power of two >= {_MIN_BLOCK}")


def _fit_block(block: int, length: int) -> int:
  """The block size actually used: no larger than the sequence rounded up to a power of two."""
  return min(block, max(_MIN_BLOCK, common.next_power_of_2(length)))


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_seg_BxL, kv_seg_BxS, cfg: common.KernelConfig):
  out_BxLxHxD, _ = fwd.forward(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_seg_BxL, kv_seg_BxS, cfg)
  return out_BxLxHxD


def _flash_fwd(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_seg_BxL, kv_seg_BxS, cfg):
  out_BxLxHxD, lse2_BxHxL = fwd.forward(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_seg_BxL, kv_seg_BxS,
                                        cfg)
  residuals = (q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_seg_BxL, kv_seg_BxS, out_BxLxHxD, lse2_BxHxL)
  return out_BxLxHxD, residuals


def _flash_bwd(cfg, residuals, dout_BxLxHxD):
  q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_seg_BxL, kv_seg_BxS, out_BxLxHxD, lse2_BxHxL = residuals
  dq, dk, dv = bwd.backward(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_seg_BxL, kv_seg_BxS, out_BxLxHxD,
                            lse2_BxHxL, dout_BxLxHxD, cfg)
  return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BxLxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                    q_segment_ids_BxL: jax.Array | None = None,
                    kv_segment_ids_BxS: jax.Array | None = None, *,
                    block_q: int = 128, block_k: int = 64,
                    block_q_bwd: int = 64, block_k_bwd: int = 64,
                    block_q_dkdv: int | None = None, block_k_dkdv: int | None = None,
                    num_warps: int | None = None, num_stages: int = 3,
                    num_warps_bwd: int = 4, num_stages_bwd: int = 2,
                    interpret: bool | None = None, debug: bool = False) -> jax.Array:
  """Causal (segment-masked) attention; differentiable in q, k, v.

  Args:
    q_BxLxHxD: queries, bf16/fp16/fp32.
    k_BxSxKxD, v_BxSxKxD: keys and values in q's dtype, K dividing H (K = 1 is multi-query).
    q_segment_ids_BxL, kv_segment_ids_BxS: int segment ids >= 0 (both or neither); a query attends
      only to keys of its own segment. Causality is by array index.
    block_q, block_k: forward tile (query rows x keys), powers of two >= 16; clipped for short
      sequences. block_q_bwd, block_k_bwd: the tile of the backward dq kernel, and of the dk/dv
      kernel unless block_q_dkdv, block_k_dkdv are given (None = the _bwd pair).
    num_warps, num_stages (and the _bwd pair): Triton launch settings (defaults from the H100 sweep
      in BENCHMARKS.md: forward 3 stages, backward 4 warps); forward warps default to 4 for
      head_dim <= 64, else 8.
    interpret: run in Pallas interpret mode; None = only when the default backend is not a GPU.
    debug: print the kernel jaxprs and Triton modules (Pallas' debug flag).
  Returns:
    [B, L, H, D] in q's dtype.
  """
  b, l, h, d = q_BxLxHxD.shape
  s, kv_heads = k_BxSxKxD.shape[1], k_BxSxKxD.shape[2]
  if k_BxSxKxD.shape != (b, s, kv_heads, d) or v_BxSxKxD.shape != k_BxSxKxD.shape:
    raise ValueError(f"flash_attention: k {k_BxSxKxD.shape} and v {v_BxSxKxD.shape} must be"
                     f" [B, S, K, D] matching q {q_BxLxHxD.shape}")
  if h % kv_heads:
    raise ValueError(f"flash_attention: kv heads {kv_heads} must divide query heads {h}")
  if not q_BxLxHxD.dtype == k_BxSxKxD.dtype == v_BxSxKxD.dtype:
    raise ValueError(f"flash_attention: q, k, v dtypes differ: {q_BxLxHxD.dtype},"
                     f" {k_BxSxKxD.dtype}, {v_BxSxKxD.dtype}")
  if (q_segment_ids_BxL is None) != (kv_segment_ids_BxS is None):
    raise ValueError("flash_attention: pass both q and kv segment ids, or neither")
  if q_segment_ids_BxL is not None and (q_segment_ids_BxL.shape != (b, l)
                                        or kv_segment_ids_BxS.shape != (b, s)):
    raise ValueError(f"flash_attention: segment ids {q_segment_ids_BxL.shape},"
                     f" {kv_segment_ids_BxS.shape} must be [B, L] = {(b, l)} and [B, S] = {(b, s)}")
  block_q_dkdv = block_q_bwd if block_q_dkdv is None else block_q_dkdv
  block_k_dkdv = block_k_bwd if block_k_dkdv is None else block_k_dkdv
  for name, value in (("block_q", block_q), ("block_k", block_k), ("block_q_bwd", block_q_bwd),
                      ("block_k_bwd", block_k_bwd), ("block_q_dkdv", block_q_dkdv),
                      ("block_k_dkdv", block_k_dkdv)):
    _check_block(name, value)
  if interpret is None:
    interpret = jax.default_backend() != "gpu"

  block_q, block_q_bwd, block_q_dkdv = (_fit_block(x, l) for x in (block_q, block_q_bwd, block_q_dkdv))
  block_k, block_k_bwd, block_k_dkdv = (_fit_block(x, s) for x in (block_k, block_k_bwd, block_k_dkdv))
  q_blocks, k_blocks = (block_q, block_q_bwd, block_q_dkdv), (block_k, block_k_bwd, block_k_dkdv)
  if l == s:  # Self-attention: one padded length, so the diagonal stays the diagonal.
    l_pad = s_pad = _round_up(l, max(q_blocks + k_blocks))
  else:
    l_pad, s_pad = _round_up(l, max(q_blocks)), _round_up(s, max(k_blocks))
  d_pad = max(_MIN_BLOCK, common.next_power_of_2(d))

  if q_segment_ids_BxL is None and s_pad > s and l > s:
    # Real queries past the last key would see the padded keys; give real tokens id 0. (Otherwise
    # only padded queries can see padded keys: finite, sliced off, with a zero cotangent.)
    q_segment_ids_BxL = jnp.zeros((b, l), jnp.int32)
    kv_segment_ids_BxS = jnp.zeros((b, s), jnp.int32)
  has_segments = q_segment_ids_BxL is not None
  q_seg_BxL = kv_seg_BxS = None
  if has_segments:
    q_seg_BxL = jnp.pad(q_segment_ids_BxL.astype(jnp.int32), ((0, 0), (0, l_pad - l)),
                        constant_values=-1)
    kv_seg_BxS = jnp.pad(kv_segment_ids_BxS.astype(jnp.int32), ((0, 0), (0, s_pad - s)),
                         constant_values=-1)
  q_pad = ((0, 0), (0, l_pad - l), (0, 0), (0, d_pad - d))
  kv_pad = ((0, 0), (0, s_pad - s), (0, 0), (0, d_pad - d))
  warps = 4 if d_pad <= 64 else 8
  cfg = common.KernelConfig(
      sm_scale=float(d) ** -0.5, groups=h // kv_heads, has_segments=has_segments,
      block_q=block_q, block_k=block_k, block_q_bwd=block_q_bwd, block_k_bwd=block_k_bwd,
      block_q_dkdv=block_q_dkdv, block_k_dkdv=block_k_dkdv,
      num_warps=num_warps or warps, num_warps_bwd=num_warps_bwd,
      num_stages=num_stages, num_stages_bwd=num_stages_bwd, interpret=bool(interpret),
      debug=debug)
  out_BxLxHxD = _flash(jnp.pad(q_BxLxHxD, q_pad), jnp.pad(k_BxSxKxD, kv_pad),
                       jnp.pad(v_BxSxKxD, kv_pad), q_seg_BxL, kv_seg_BxS, cfg)
  return out_BxLxHxD[:, :l, :, :d]
