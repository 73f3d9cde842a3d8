"""Attention dispatch: one entry point, implementations chosen by name in the config.

All implementations take grouped-query layouts natively: queries [B, L, H, D] and keys/values
[B, S, K, D] with K dividing H; the K/V heads are never repeated in memory on the XLA path.
Masking is by segment ids (packed documents never attend to each other; id 0 marks padding)
and by causal order of the given indices (`q_index <= kv_index` is masked out when later).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


def make_mask(q_segment_ids_BxL: jax.Array, kv_segment_ids_BxS: jax.Array,
              q_index_BxL: jax.Array, kv_index_BxS: jax.Array) -> jax.Array:
  """Boolean [B, L, S]: True where query l may attend to key s (same segment, not in its future)."""
  same_segment = q_segment_ids_BxL[:, :, None] == kv_segment_ids_BxS[:, None, :]
  causal = q_index_BxL[:, :, None] >= kv_index_BxS[:, None, :]
  return same_segment & causal


def _queries_heads_major(q_BxLxHxD: jax.Array, kv_heads: int) -> jax.Array:
  """[B, L, H, D] -> [B, K, G, L, D]: G = H / K query heads share each K/V head (head h uses h // G)."""
  b, l, h, d = q_BxLxHxD.shape
  return q_BxLxHxD.reshape(b, l, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)


def _heads_major(q_BxLxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array):
  """q [B, K, G, L, D], k and v [B, K, S, D]."""
  return (_queries_heads_major(q_BxLxHxD, k_BxSxKxD.shape[2]), k_BxSxKxD.transpose(0, 2, 1, 3),
          v_BxSxKxD.transpose(0, 2, 1, 3))


def _tokens_major(out_BxKxGxLxD: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """[B, K, G, L, D] -> [B, L, H, D] in `dtype`."""
  b, k, g, l, d = out_BxKxGxLxD.shape
  return out_BxKxGxLxD.transpose(0, 3, 1, 2, 4).reshape(b, l, k * g, d).astype(dtype)


def _attend(q_BxKxGxLxD: jax.Array, k: jax.Array, v_BxKxSxD: jax.Array, mask_BxLxS: jax.Array,
            keys_transposed: bool = False) -> jax.Array:
  """Softmax attention in heads-major layouts, scores and softmax in float32; [B, K, G, L, D] float32.
  k: [B, K, S, D], or [B, K, D, S] with `keys_transposed` (the KV cache's layout).

  With the batch axes (b, k) leading on every operand, the products' results are in the layout
  the softmax and the next product read. When the products took q, k, v as [B, L, H, D], XLA:CPU
  copied the [.., L, S] score tensors between layouts, forward and backward (on the 2-core CPU VM,
  2026-11-29, one layer's forward and backward at [2, 2048, 4 heads, 32]: 319 ms then, 245 ms now)."""
  d = q_BxKxGxLxD.shape[-1]
  keys = "bkds" if keys_transposed else "bksd"
  scores_BxKxGxLxS = jnp.einsum(f"bkgld,{keys}->bkgls", q_BxKxGxLxD, k,
                                preferred_element_type=jnp.float32) * (d ** -0.5)
  scores_BxKxGxLxS = jnp.where(mask_BxLxS[:, None, None], scores_BxKxGxLxS, _NEG_INF)
  probs = jax.nn.softmax(scores_BxKxGxLxS, axis=-1).astype(v_BxKxSxD.dtype)
  return jnp.einsum("bkgls,bksd->bkgld", probs, v_BxKxSxD, preferred_element_type=jnp.float32)


def xla_attention(q_BxLxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                  mask_BxLxS: jax.Array) -> jax.Array:
  """Reference attention in plain XLA ops, softmax in float32. Returns [B, L, H, D] in q's dtype."""
  return _tokens_major(_attend(*_heads_major(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD), mask_BxLxS), q_BxLxHxD.dtype)


XLA_BLOCK = 256  # query rows per block of `_xla_blocks`


def _xla_blocks(q_BxLxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                mask_BxLxS: jax.Array) -> jax.Array:
  """`xla_attention` of the self-attention of a sequence (L == S), one block of XLA_BLOCK query rows
  at a time against the keys up to the block's end: the keys after it are masked for every row of
  the block (a query never sees a later slot: within a document index order is slot order, and
  other documents are masked), so their scores, half of the work at long L, are never computed.
  The Pallas kernels skip the same blocks. Each real token's result is the full computation's
  (padding, segment id 0, may see fewer keys; no loss or score reads it); shorter sequences, and
  queries against a cache, take one block."""
  l, s = q_BxLxHxD.shape[1], k_BxSxKxD.shape[1]
  if l != s or l <= XLA_BLOCK:
    return xla_attention(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxLxS)
  q_BxKxGxLxD, k_BxKxSxD, v_BxKxSxD = _heads_major(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD)
  outs = []
  for start in range(0, l, XLA_BLOCK):
    end = min(start + XLA_BLOCK, l)
    outs.append(_attend(q_BxKxGxLxD[:, :, :, start:end], k_BxKxSxD[:, :, :end], v_BxKxSxD[:, :, :end],
                        mask_BxLxS[:, start:end, :end]))
  return _tokens_major(jnp.concatenate(outs, axis=3), q_BxLxHxD.dtype)


def cached_attention(q_BxLxHxD: jax.Array, k_BxKxDxS: jax.Array, v_BxKxSxD: jax.Array,
                     mask_BxLxS: jax.Array) -> jax.Array:
  """`xla_attention` over a KV cache stored heads-major, keys transposed (the decode layout).

  Both products then have their batch axes (b, k) leading and contract the cache along the axis a
  matrix product wants (keys [B, K, D, S]: q @ k; values [B, K, S, D]: p @ v), so the cache is
  never transposed, which would copy it whole at every decoding step. Returns [B, L, H, D] in q's
  dtype.
  """
  q_BxKxGxLxD = _queries_heads_major(q_BxLxHxD, k_BxKxDxS.shape[1])
  return _tokens_major(_attend(q_BxKxGxLxD, k_BxKxDxS, v_BxKxSxD, mask_BxLxS, keys_transposed=True),
                       q_BxLxHxD.dtype)


def _cudnn_attention(q, k, v, q_seg, kv_seg, q_idx, kv_idx):
  # cuDNN ignores segment ids when sequences are packed (MaxText found so), so we only send it
  # batches that the caller declared unpacked; causal order is then the plain index order.
  del q_seg, kv_seg, q_idx, kv_idx
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def _per_shard(kernel, q, k, v, q_seg, kv_seg):
  """Runs a Pallas kernel on each device's block under the mesh in context (if any).

  XLA cannot partition a Pallas custom call, so under a mesh the kernel is wrapped in shard_map:
  rows split over (data, fsdp), heads over tensor (when it divides both head counts), sequence whole.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q, k, v, q_seg, kv_seg)
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  names = set(mesh.axis_names)
  rows = tuple(a for a in ("data", "fsdp") if a in names and q.shape[0] % mesh.shape[a] == 0) or None
  heads = "tensor" if ("tensor" in names and q.shape[2] % mesh.shape["tensor"] == 0
                       and k.shape[2] % mesh.shape["tensor"] == 0) else None
  qkv, seg = P(rows, None, heads, None), P(rows, None)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv,
                       check_vma=False)(q, k, v, q_seg, kv_seg)


def resolve_impl(impl: str, platform: str | None = None) -> str:
  """Maps 'auto' to the best implementation for `platform` (default: jax's default backend)."""
  if impl != "auto":
    return impl
  platform = platform or jax.default_backend()
  if platform == "gpu":
    return "pallas"
  if platform == "tpu":
    return "splash"
  return "xla"


def attention(q_BxLxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array, *,
              q_segment_ids_BxL: jax.Array, kv_segment_ids_BxS: jax.Array,
              q_index_BxL: jax.Array, kv_index_BxS: jax.Array,
              impl: str = "xla", packed: bool = True) -> jax.Array:
  """Masked causal attention; see the module docstring for the layout and mask rules.

  `packed=False` promises that every row is one document, optionally followed (never preceded) by
  padding, which 'cudnn' requires and 'pallas' uses to skip segment masking; 'xla' masks by the
  segment ids either way.
  """
  impl = resolve_impl(impl)
  if impl == "xla":
    mask = make_mask(q_segment_ids_BxL, kv_segment_ids_BxS, q_index_BxL, kv_index_BxS)
    return _xla_blocks(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, mask)
  if impl == "cudnn":
    if packed:
      raise ValueError("attention_impl='cudnn' cannot honour segment ids of packed rows;"
                       " use 'pallas' or 'xla' for packed batches")
    return _cudnn_attention(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_segment_ids_BxL,
                            kv_segment_ids_BxS, q_index_BxL, kv_index_BxS)
  if impl == "pallas":
    from heal_jax.kernels import flash_attention  # pylint: disable=import-outside-toplevel
    if packed:
      return _per_shard(lambda q, k, v, qs, ks: flash_attention.flash_attention(q, k, v, qs, ks),
                        q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_segment_ids_BxL, kv_segment_ids_BxS)
    # One document per row: causal order alone is the mask (a padding tail only sees real tokens
    # before it, and no real token sees it), so the kernel skips segment masking.
    return _per_shard(lambda q, k, v, qs, ks: flash_attention.flash_attention(q, k, v),
                      q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_segment_ids_BxL, kv_segment_ids_BxS)
  if impl == "splash":
    from heal_jax.kernels import splash  # pylint: disable=import-outside-toplevel
    return _per_shard(lambda q, k, v, qs, ks: splash.splash_attention(q, k, v, qs),
                      q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, q_segment_ids_BxL, kv_segment_ids_BxS)
  raise ValueError(f"attention_impl={impl!r} is not available; expected xla, pallas, cudnn, splash or auto")
