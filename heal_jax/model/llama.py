"""LLaMA2 decoder in Flax linen.

Parameter layout (unscanned; with `scan_layers` the per-layer trees are stacked under `layers`
with a leading 'layers' axis):

  embed/embedding            [V, D]        ('vocab', 'embed')
  layers_i/attention_norm/scale [D]        ('norm',)
  layers_i/attention/wq/kernel  [D, H, Dh] ('embed', 'q_heads', 'head_dim')
  layers_i/attention/wk/kernel  [D, K, Dh] ('embed', 'kv_heads', 'head_dim')
  layers_i/attention/wv/kernel  [D, K, Dh] ('embed', 'kv_heads', 'head_dim')
  layers_i/attention/wo/kernel  [H, Dh, D] ('q_heads', 'head_dim', 'embed')
  layers_i/mlp_norm/scale       [D]        ('norm',)
  layers_i/mlp/w_gate/kernel    [D, F]     ('embed', 'mlp')
  layers_i/mlp/w_up/kernel      [D, F]     ('embed', 'mlp')
  layers_i/mlp/w_down/kernel    [F, D]     ('mlp', 'embed')
  final_norm/scale              [D]        ('norm',)
  lm_head/kernel                [D, V]     ('embed', 'vocab')   (absent when embeddings are tied)

KV cache (inference only; see `init_cache`): an explicit pytree passed in and returned, never a
flax collection. It mirrors the layer layout of the parameters:

  layers_i/k                    [B, K, Dh, S] ('batch', 'kv_heads', 'head_dim', 'cache_len')
  layers_i/v                    [B, K, S, Dh] ('batch', 'kv_heads', 'cache_len', 'head_dim')
  layers/k, layers/v            the same with a leading 'layers' axis [N, ...] when scan_layers

(heads-major, keys transposed: both attention products then read the cache in the layout a
matrix product wants, so XLA neither transposes it nor copies it at every decoding step; with keys
[.., S, Dh] XLA:CPU copied each layer's cache two to three times per step).

Slot s of a row holds the key/value of the token written at cache index s; `cache_segment_ids_BxS`
says which slots are real (1) or padding (0), and causality is by slot index.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from heal_jax.model import attention as attention_lib
from heal_jax.model import rope
from heal_jax.model.config import ModelConfig

_INIT = nn.initializers.normal(stddev=0.02)
CACHE_AXES = {"k": ("batch", "kv_heads", "head_dim", "cache_len"),
              "v": ("batch", "kv_heads", "cache_len", "head_dim")}


def _dtype(name: str) -> Any:
  return jnp.dtype(name)


def _constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Activation sharding by logical names; a no-op outside a mesh with axis rules."""
  return nn.with_logical_constraint(x, names)


class RMSNorm(nn.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale, in float32, cast to the compute dtype."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    scale_D = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                         (x_BxLxD.shape[-1],), _dtype(self.cfg.param_dtype))
    x = x_BxLxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.cfg.rms_norm_eps)
    return (x.astype(_dtype(self.cfg.compute_dtype)) * scale_D.astype(_dtype(self.cfg.compute_dtype)))


class _Dense(nn.Module):
  """Bias-free linear map contracting the last `len(in_shape)` input axes; kernel [*in, *out].

  (flax's DenseGeneral initialises a flattened kernel, which breaks its logical-axis boxing when
  sharding rules are active; this creates the kernel in its real shape.)
  """
  in_features: tuple[int, ...]
  out_features: tuple[int, ...]
  names: tuple[str, ...]
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(_INIT, self.names),
                        self.in_features + self.out_features, _dtype(self.cfg.param_dtype))
    dtype = _dtype(self.cfg.compute_dtype)
    n_in = len(self.in_features)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (contract, ((), ())))


def _dense(features: Any, axis: Any, names: tuple[str, ...], cfg: ModelConfig, name: str) -> nn.Module:
  """A `_Dense` from DenseGeneral-style arguments; `axis` -1 or (-2, -1) picks the input axes."""
  out = tuple(features) if isinstance(features, tuple) else (features,)
  n_in = 1 if axis == -1 else len(axis)
  in_sizes = {"embed": cfg.hidden_size, "q_heads": cfg.num_heads, "head_dim": cfg.head_dim,
              "mlp": cfg.intermediate_size}
  return _Dense(tuple(in_sizes[n] for n in names[:n_in]), out, names, cfg, name=name)


def _write_slots(cache: jax.Array, update: jax.Array, cache_index: jax.Array, axis: int) -> jax.Array:
  """`cache` with `update` written along its slot `axis` from `cache_index` on: a scalar (every row
  at the same slot) or [B] int32 (row b from slot cache_index[b]). Slots must fit: a start past
  S - L would be clamped."""
  update = update.astype(cache.dtype)
  if jnp.ndim(cache_index) == 0:
    return jax.lax.dynamic_update_slice_in_dim(cache, update, cache_index, axis)
  return jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice_in_dim(c, u, i, axis - 1))(
      cache, update, cache_index)


class Attention(nn.Module):
  """Grouped-query self-attention with rotary embeddings.

  With `cache` ({"k": [B, K, Dh, S], "v": [B, K, S, Dh]}) the new keys/values are written at slots
  `cache_index + arange(L)`, the queries attend over all S slots (masked by `cache_segment_ids_BxS`
  and slot order, always on the 'xla' path) and (out, new_cache) is returned.
  """
  cfg: ModelConfig
  packed: bool = True

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, cos_BxLxDh: jax.Array, sin_BxLxDh: jax.Array, segment_ids_BxL: jax.Array,
               index_BxL: jax.Array, cache: dict[str, jax.Array] | None = None, cache_index: jax.Array | None = None,
               cache_segment_ids_BxS: jax.Array | None = None) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """x: [B, L, D] compute dtype; cos/sin: [B, L, Dh] float32 rotary angles; segment_ids (0 =
    padding) and index (position within the document): [B, L] int32. Returns [B, L, D] (and the
    updated cache when one is given; cache_index: int32 slot of the first new token, a scalar or
    one per row [B])."""
    cfg = self.cfg
    q = _dense((cfg.num_heads, cfg.head_dim), -1, ("embed", "q_heads", "head_dim"), cfg, "wq")(x_BxLxD)
    k = _dense((cfg.num_kv_heads, cfg.head_dim), -1, ("embed", "kv_heads", "head_dim"), cfg, "wk")(x_BxLxD)
    v = _dense((cfg.num_kv_heads, cfg.head_dim), -1, ("embed", "kv_heads", "head_dim"), cfg, "wv")(x_BxLxD)
    q_BxLxHxDh = rope.apply_rope(q, cos_BxLxDh, sin_BxLxDh)
    k_BxLxKxDh = rope.apply_rope(k, cos_BxLxDh, sin_BxLxDh)
    q_BxLxHxDh = _constrain(q_BxLxHxDh, ("batch", "act_len", "act_heads", None))
    k_BxLxKxDh = _constrain(k_BxLxKxDh, ("batch", "act_len", "act_kv_heads", None))
    wo = _dense(cfg.hidden_size, (-2, -1), ("q_heads", "head_dim", "embed"), cfg, "wo")
    if cache is None:
      out_BxLxHxDh = attention_lib.attention(
          q_BxLxHxDh, k_BxLxKxDh, v, q_segment_ids_BxL=segment_ids_BxL, kv_segment_ids_BxS=segment_ids_BxL,
          q_index_BxL=index_BxL, kv_index_BxS=index_BxL, impl=cfg.attention_impl, packed=self.packed)
      out_BxLxHxDh = checkpoint_name(out_BxLxHxDh, "attention_out")
      return wo(out_BxLxHxDh)
    new_cache = {
        "k": _constrain(_write_slots(cache["k"], k_BxLxKxDh.transpose(0, 2, 3, 1), cache_index, axis=3),
                        CACHE_AXES["k"]),
        "v": _constrain(_write_slots(cache["v"], v.transpose(0, 2, 1, 3), cache_index, axis=2),
                        CACHE_AXES["v"]),
    }
    b, s = cache_segment_ids_BxS.shape
    mask_BxLxS = attention_lib.make_mask(
        segment_ids_BxL, cache_segment_ids_BxS, index_BxL,
        jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s)))
    out_BxLxHxDh = attention_lib.cached_attention(
        q_BxLxHxDh, new_cache["k"].astype(q_BxLxHxDh.dtype), new_cache["v"].astype(v.dtype), mask_BxLxS)
    return wo(out_BxLxHxDh), new_cache


class MLP(nn.Module):
  """SwiGLU: w_down(silu(w_gate x) * w_up x)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    """[B, L, D] -> [B, L, D] (hidden F = intermediate_size in between)."""
    cfg = self.cfg
    gate = _dense(cfg.intermediate_size, -1, ("embed", "mlp"), cfg, "w_gate")(x_BxLxD)
    up = _dense(cfg.intermediate_size, -1, ("embed", "mlp"), cfg, "w_up")(x_BxLxD)
    h_BxLxF = _constrain(nn.silu(gate) * up, ("batch", "act_len", "act_mlp"))
    return _dense(cfg.hidden_size, -1, ("mlp", "embed"), cfg, "w_down")(h_BxLxF)


class DecoderLayer(nn.Module):
  """Pre-norm residual block. Signature fits `nn.scan`: (carry, *broadcast) -> (carry, new_cache).

  Without a cache the second output is None; with one it is the layer's updated {"k", "v"}.
  """
  cfg: ModelConfig
  packed: bool = True

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, cos_BxLxDh: jax.Array, sin_BxLxDh: jax.Array, segment_ids_BxL: jax.Array,
               index_BxL: jax.Array, cache: dict[str, jax.Array] | None = None, cache_index: jax.Array | None = None,
               cache_segment_ids_BxS: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Arguments as `Attention`'s; returns ([B, L, D], the updated cache or None)."""
    x_BxLxD = _constrain(x_BxLxD, ("batch", "act_len", "act_embed"))
    attention = Attention(self.cfg, self.packed, name="attention")
    normed_BxLxD = RMSNorm(self.cfg, name="attention_norm")(x_BxLxD)
    new_cache = None
    if cache is None:
      h = attention(normed_BxLxD, cos_BxLxDh, sin_BxLxDh, segment_ids_BxL, index_BxL)
    else:
      h, new_cache = attention(normed_BxLxD, cos_BxLxDh, sin_BxLxDh, segment_ids_BxL, index_BxL, cache, cache_index,
                               cache_segment_ids_BxS)
    x_BxLxD = x_BxLxD + h
    x_BxLxD = x_BxLxD + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x_BxLxD))
    return x_BxLxD, new_cache


_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def _layer_class(cfg: ModelConfig) -> type[nn.Module]:
  if cfg.remat_policy == "none":
    return DecoderLayer
  return nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy],
                  prevent_cse=not cfg.scan_layers)


class Llama(nn.Module):
  """Token ids -> float32 logits.

  Args of `__call__`:
    tokens_BxL: int32 token ids.
    segment_ids_BxL: int32 document ids within each packed row (0 = padding); default all ones.
    positions_BxL: int32 positions, restarting at 0 for each document; default arange(L).
    packed: False promises one document per row, padding (if any) only after it: 'cudnn' needs
      that, and 'pallas' then masks by causal order alone (left padding would break both).
    cache: a KV cache from `init_cache` (inference). The L tokens are written at slots
      `cache_index + arange(L)` and attend to every earlier real slot of their row.
    cache_index: int32, the slot of the first of the L tokens (cache mode only): a scalar, or [B]
      for rows at different slots (speculative decoding).
    cache_segment_ids_BxS: int32, 1 for slots holding (or going to hold) real tokens, 0 for
      padding slots (cache mode only; queries with segment id 1 see only slots with id 1).
    last_only: return logits of the last position only (L -> 1), e.g. after a left-padded prefill.
  Returns logits_BxLxV in float32; in cache mode (logits_BxLxV, new_cache).
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array, segment_ids_BxL: jax.Array | None = None,
               positions_BxL: jax.Array | None = None, packed: bool = True, *,
               cache: Any = None, cache_index: jax.Array | None = None,
               cache_segment_ids_BxS: jax.Array | None = None, last_only: bool = False) -> Any:
    cfg = self.cfg
    b, l = tokens_BxL.shape
    index_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    if cache is not None:
      cache_index = jnp.asarray(cache_index, jnp.int32)
      index_BxL = index_BxL + (cache_index[:, None] if cache_index.ndim else cache_index)
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones((b, l), jnp.int32)
    if positions_BxL is None:
      positions_BxL = index_BxL
    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="embed",
                     dtype=_dtype(cfg.compute_dtype), param_dtype=_dtype(cfg.param_dtype),
                     embedding_init=nn.with_logical_partitioning(_INIT, ("vocab", "embed")))
    # The lookup's output first keeps the table's hidden split (fsdp) with the batch split over data only,
    # then takes the layers' batch split: an all-to-all inside each fsdp group, both ways. Left to itself,
    # XLA replicated the whole [B, L, D] cotangent on every device to scatter it into the table's
    # gradient whenever data > 1 ("involuntary full rematerialization").
    x_BxLxD = _constrain(embed(tokens_BxL), ("data_batch", "act_len", "embed"))
    x_BxLxD = _constrain(x_BxLxD, ("batch", "act_len", "act_embed"))
    cos, sin = rope.rope_angles(positions_BxL, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_factor)
    args = (cos, sin, segment_ids_BxL, index_BxL)
    new_cache = None
    if cache is None:
      layer_cls = _layer_class(cfg)
      if cfg.scan_layers:
        stack = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,) * 4, length=cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x_BxLxD, _ = stack(cfg, packed, name="layers")(x_BxLxD, *args)
      else:
        for i in range(cfg.num_layers):
          x_BxLxD, _ = layer_cls(cfg, packed, name=f"layers_{i}")(x_BxLxD, *args)
    else:  # inference: no remat; the cache is scanned with the layers or indexed per layer
      cache_args = (cache_index, cache_segment_ids_BxS)
      if cfg.scan_layers:
        stack = nn.scan(DecoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,) * 4 + (0, nn.broadcast, nn.broadcast),
                        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        x_BxLxD, layers_cache = stack(cfg, packed, name="layers")(
            x_BxLxD, *args, cache["layers"], *cache_args)
        new_cache = {"layers": layers_cache}
      else:
        new_cache = {}
        for i in range(cfg.num_layers):
          name = f"layers_{i}"
          x_BxLxD, new_cache[name] = DecoderLayer(cfg, packed, name=name)(
              x_BxLxD, *args, cache[name], *cache_args)
    if last_only:
      x_BxLxD = x_BxLxD[:, -1:]
    x_BxLxD = RMSNorm(cfg, name="final_norm")(x_BxLxD)
    if cfg.tie_word_embeddings:
      logits_BxLxV = embed.attend(x_BxLxD)
    else:
      logits_BxLxV = _dense(cfg.vocab_size, -1, ("embed", "vocab"), cfg, "lm_head")(x_BxLxD)
    logits_BxLxV = _constrain(logits_BxLxV.astype(jnp.float32), ("batch", "act_len", "act_vocab"))
    return logits_BxLxV if cache is None else (logits_BxLxV, new_cache)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> dict[str, Any]:
  """An all-zero KV cache of `length` slots per row (layout in the module docstring).

  dtype defaults to `cfg.compute_dtype`. Under a mesh with logical axis rules, pass the result
  through `nn.with_logical_constraint` with `cache_logical_axes(cfg)` (or jit with matching
  shardings) to place it like the model.
  """
  dtype = _dtype(dtype or cfg.compute_dtype)
  k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, length)
  v_shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
  if cfg.scan_layers:
    layers = (cfg.num_layers,)
    return {"layers": {"k": jnp.zeros(layers + k_shape, dtype), "v": jnp.zeros(layers + v_shape, dtype)}}
  return {f"layers_{i}": {"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(v_shape, dtype)}
          for i in range(cfg.num_layers)}


def cache_logical_axes(cfg: ModelConfig) -> dict[str, Any]:
  """PartitionSpecs of logical names for the tree `init_cache(cfg, ...)` returns."""
  lead = ("layers",) if cfg.scan_layers else ()
  specs = {name: jax.sharding.PartitionSpec(*lead, *axes) for name, axes in CACHE_AXES.items()}
  if cfg.scan_layers:
    return {"layers": dict(specs)}
  return {f"layers_{i}": dict(specs) for i in range(cfg.num_layers)}


def init_params(cfg: ModelConfig, rng: jax.Array) -> Any:
  """Randomly initialised parameters (boxed with logical axis names), shapes only traced once."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  # The shapes do not depend on the attention implementation; 'xla' traces on any host (a 'cudnn'
  # or 'pallas' config is planned on CPU, and 'cudnn' refuses the default packed rows).
  return Llama(cfg.replace(attention_impl="xla")).init(rng, tokens)["params"]


def param_shapes(cfg: ModelConfig) -> Any:
  """Boxed ShapeDtypeStructs of the parameters, without allocating them."""
  return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def logical_axes(cfg: ModelConfig) -> Any:
  """Pytree of logical axis-name tuples, one per parameter (PartitionSpecs of logical names)."""
  return nn.get_partition_spec(param_shapes(cfg))
