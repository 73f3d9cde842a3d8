"""Initial parameters of a run: from scratch, from an HF directory, or from a heal-jax checkpoint.

Every path ends with fp32 (param_dtype) master parameters laid out by the run's shardings.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np

from heal_jax.checkpoint import hf_mapping
from heal_jax.model.config import ModelConfig
from heal_jax.train import state as state_lib

_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "tie_word_embeddings")


def check_compatible(run_cfg: ModelConfig, ckpt_cfg: ModelConfig, source: str) -> None:
  """Raises ValueError naming the first shape field where the checkpoint and config.model differ."""
  for field in _SHAPE_FIELDS:
    if getattr(run_cfg, field) != getattr(ckpt_cfg, field):
      raise ValueError(f"init_from {source}: {field} is {getattr(ckpt_cfg, field)} there but "
                       f"config.model.{field} is {getattr(run_cfg, field)}")


def _place(params_np: dict[str, Any], shardings: Any, dtype: str) -> Any:
  """numpy tree -> sharded jax arrays, one tensor at a time (each device gets only its slice)."""
  def put(x, sharding):
    x = np.asarray(x).astype(dtype)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, params_np, shardings)


class _Slices:
  """One parameter of ours read from memory-mapped HF tensors: `read(index)` reads just that block.

  views: our-layout views (`TensorSpec.view_ours`) of the tensor, or of each layer's tensor when the
  model scans its layers (then the parameter has a leading layer axis).
  """

  def __init__(self, views: list[np.ndarray], stacked: bool):
    self.views, self.stacked = views, stacked
    self.shape = ((len(views),) if stacked else ()) + views[0].shape

  def read(self, index: tuple[slice, ...]) -> np.ndarray:
    if not self.stacked:
      return self.views[0][index]
    return np.stack([v[index[1:]] for v in self.views[index[0]]])


def from_hf(path: pathlib.Path, cfg: ModelConfig, shardings: Any) -> Any:
  """Reads an HF LLaMA directory (validated like the converter) into sharded arrays.

  Each process reads only the blocks its own devices hold: every tensor is memory-mapped and each
  device's block is sliced out of a strided view in our layout, cast to param_dtype and placed, so
  host memory holds one block at a time, never the model (a replicated parameter's block is the
  whole tensor). Pickle (.bin) weights are refused here as in `open_hf`; convert them first.
  """
  from heal_jax.checkpoint import hf_convert  # pylint: disable=import-outside-toplevel
  ckpt = hf_convert.open_hf(path)
  hf_convert.validate(ckpt)
  check_compatible(cfg, ckpt.cfg, str(path))
  views: dict[str, Any] = {}
  for spec in hf_mapping.tensor_specs(ckpt.cfg):
    hf_mapping.set_path(views, spec.path, spec.view_ours(ckpt.tensors[spec.hf_name].view()))
  if cfg.scan_layers:
    per_layer = [views.pop(f"layers_{i}") for i in range(cfg.num_layers)]
    views["layers"] = jax.tree.map(lambda *vs: _Slices(list(vs), stacked=True), *per_layer)
  sources = jax.tree.map(lambda v: v if isinstance(v, _Slices) else _Slices([v], stacked=False), views,
                         is_leaf=lambda v: isinstance(v, _Slices))

  def put(source: _Slices, sharding):
    return jax.make_array_from_callback(
        source.shape, sharding, lambda index: np.ascontiguousarray(source.read(index), dtype=cfg.param_dtype))
  return jax.tree.map(put, sources, shardings, is_leaf=lambda v: isinstance(v, _Slices))


def from_checkpoint(path: pathlib.Path, cfg: ModelConfig, shardings: Any) -> Any:
  """A converted checkpoint or another run's work directory (its newest step)."""
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  loaded = restore.load_model(path, dtype=cfg.param_dtype, scan_layers=cfg.scan_layers)
  check_compatible(cfg, loaded.cfg, str(path))
  return _place(loaded.params, shardings, cfg.param_dtype)


def initial_params(init_from: str, cfg: ModelConfig, shardings: Any, seed: int) -> tuple[Any, str]:
  """(params, description). init_from: "" (scratch), an HF dir, a checkpoint or a work dir."""
  if not init_from:
    init = jax.jit(lambda key: state_lib.unboxed_init(cfg, key), out_shardings=shardings)
    return init(jax.random.PRNGKey(seed)), f"from scratch (seed {seed})"
  path = pathlib.Path(init_from)
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  if restore.is_workdir(path):  # (a work directory has a config.json too: the run's config)
    return from_checkpoint(path, cfg, shardings), f"from work directory {path}"
  if (path / "config.json").is_file() and not (path / "heal_checkpoint.json").is_file():
    return from_hf(path, cfg, shardings), f"from HF {path}"
  return from_checkpoint(path, cfg, shardings), f"from {path}"
