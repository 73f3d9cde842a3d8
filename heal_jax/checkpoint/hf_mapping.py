"""Names and layouts of LLaMA2 tensors in HF checkpoints vs our parameter tree.

HF stores linear weights as [out, in]; our kernels are [in, ...out] with heads split out.
Every conversion is a transpose plus reshape, so a round trip is bitwise exact. Our layout
is always the unscanned one here (`layers_i`); `stack_layers`/`unstack_layers` adapt it to
a model with `scan_layers`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from heal_jax.model.config import ModelConfig

ParamPath = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One tensor: its HF name, our path and both shapes.

  transposed: HF [out, in] <-> ours [in, *out] (linear layers: out split into heads for q/k/v; for the
  attention output projection in = heads x head_dim) by a transpose plus reshape; else identical.
  """
  hf_name: str
  path: ParamPath
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  transposed: bool

  def view_ours(self, w: np.ndarray) -> np.ndarray:
    """`w` (HF layout) in our layout, as a strided view of it (no copy), so that slicing the view
    reads only the slice: of a memory-mapped tensor, only the bytes of that slice."""
    return w.T.reshape(self.shape) if self.transposed else w

  def to_ours(self, w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(self.view_ours(w))

  def to_hf(self, w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.reshape(self.hf_shape[::-1]).T) if self.transposed else np.asarray(w)


def _linear(hf_name: str, path: ParamPath, in_dim: int, out_shape: tuple[int, ...]) -> TensorSpec:
  """HF [prod(out), in] <-> ours [in, *out]."""
  return TensorSpec(hf_name, path, (int(np.prod(out_shape)), in_dim), (in_dim, *out_shape), transposed=True)


def _out_proj(hf_name: str, path: ParamPath, in_shape: tuple[int, ...], out_dim: int) -> TensorSpec:
  """HF [out, prod(in)] <-> ours [*in, out] (the attention output projection)."""
  return TensorSpec(hf_name, path, (out_dim, int(np.prod(in_shape))), (*in_shape, out_dim), transposed=True)


def _same(hf_name: str, path: ParamPath, shape: tuple[int, ...]) -> TensorSpec:
  return TensorSpec(hf_name, path, shape, shape, transposed=False)


def tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
  """All tensors of a LLaMA checkpoint in HF's order (embedding, layers, norm, head)."""
  d, f, h, k, hd, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                       cfg.head_dim, cfg.vocab_size)
  specs = [_same("model.embed_tokens.weight", ("embed", "embedding"), (v, d))]
  for i in range(cfg.num_layers):
    p, hf = f"layers_{i}", f"model.layers.{i}"
    specs += [
        _same(f"{hf}.input_layernorm.weight", (p, "attention_norm", "scale"), (d,)),
        _linear(f"{hf}.self_attn.q_proj.weight", (p, "attention", "wq", "kernel"), d, (h, hd)),
        _linear(f"{hf}.self_attn.k_proj.weight", (p, "attention", "wk", "kernel"), d, (k, hd)),
        _linear(f"{hf}.self_attn.v_proj.weight", (p, "attention", "wv", "kernel"), d, (k, hd)),
        _out_proj(f"{hf}.self_attn.o_proj.weight", (p, "attention", "wo", "kernel"), (h, hd), d),
        _same(f"{hf}.post_attention_layernorm.weight", (p, "mlp_norm", "scale"), (d,)),
        _linear(f"{hf}.mlp.gate_proj.weight", (p, "mlp", "w_gate", "kernel"), d, (f,)),
        _linear(f"{hf}.mlp.up_proj.weight", (p, "mlp", "w_up", "kernel"), d, (f,)),
        _linear(f"{hf}.mlp.down_proj.weight", (p, "mlp", "w_down", "kernel"), f, (d,)),
    ]
  specs.append(_same("model.norm.weight", ("final_norm", "scale"), (d,)))
  if not cfg.tie_word_embeddings:
    specs.append(_linear("lm_head.weight", ("lm_head", "kernel"), d, (v,)))
  return specs


# HF checkpoints may carry buffers that are not parameters; they are skipped, not errors.
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


def set_path(tree: dict[str, Any], path: ParamPath, value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: Any, path: ParamPath) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def iter_paths(tree: Any, prefix: ParamPath = ()) -> Iterator[tuple[ParamPath, Any]]:
  """(path, leaf) pairs of a nested dict, depth first in key order."""
  if isinstance(tree, dict):
    for key in sorted(tree):
      yield from iter_paths(tree[key], prefix + (key,))
  else:
    yield prefix, tree


def stack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """Unscanned `layers_i` subtrees -> one `layers` subtree with a leading layer axis."""
  import jax  # pylint: disable=import-outside-toplevel
  out = {k: v for k, v in params.items() if not k.startswith("layers_")}
  per_layer = [params[f"layers_{i}"] for i in range(num_layers)]
  out["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *per_layer)
  return out


def unstack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """Inverse of `stack_layers`."""
  import jax  # pylint: disable=import-outside-toplevel
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  return out
