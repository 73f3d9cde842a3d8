"""Initial parameters of a run: from scratch, from an HF directory, or from a heal-jax checkpoint.

Every path ends with fp32 (param_dtype) master parameters laid out by the run's shardings.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from heal_jax.checkpoint import hf_mapping
from heal_jax.model.config import ModelConfig
from heal_jax.train import state as state_lib

_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "tie_word_embeddings")
_TRAINED_WITH = ("rope_theta", "rms_norm_eps")


def check_compatible(run_cfg: ModelConfig, ckpt_cfg: ModelConfig, source: str,
                     notes: list[str] | None = None) -> None:
  """Raises ValueError naming every field where the checkpoint and the run's model differ, with the
  overrides that fit it: a shape, or a number the weights were trained with (rope_theta,
  rms_norm_eps), which would change every logit without an error. A different rope scaling (context
  extension sets it per phase) or context length (config.model.max_position_embeddings, and a phase's
  seq_len) is allowed and described in `notes`."""
  problems, fixes = [], []
  for field in _SHAPE_FIELDS:
    theirs, ours = getattr(ckpt_cfg, field), getattr(run_cfg, field)
    if theirs != ours:
      problems.append(f"{field} is {theirs} there, config.model.{field} is {ours}")
      fixes.append(f"--config.model.{field}={theirs}")
  for field in _TRAINED_WITH:
    theirs, ours = getattr(ckpt_cfg, field), getattr(run_cfg, field)
    if not math.isclose(theirs, ours, rel_tol=1e-6):
      problems.append(f"it was trained with {field}={theirs:g}, config.model.{field} is {ours:g} (every logit "
                      "would change)")
      fixes.append(f"--config.model.{field}={theirs:g}")
  if problems:
    raise ValueError(f"init_from {source} does not fit config.model: {'; '.join(problems)}. To start from it, "
                     f"set {' '.join(fixes)}")
  if notes is not None and ckpt_cfg.rope_scaling_factor != run_cfg.rope_scaling_factor:
    notes.append(f"its rope scaling x{ckpt_cfg.rope_scaling_factor:g} becomes this phase's "
                 f"x{run_cfg.rope_scaling_factor:g}")
  if notes is not None and ckpt_cfg.max_position_embeddings != run_cfg.max_position_embeddings:
    notes.append(f"its context of {ckpt_cfg.max_position_embeddings} positions becomes this phase's "
                 f"{run_cfg.max_position_embeddings} (config.model.max_position_embeddings, or the phase's seq_len "
                 "where longer), which exports declare")


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


def from_hf(path: pathlib.Path, cfg: ModelConfig, shardings: Any, notes: list[str] | None = None) -> Any:
  """Reads an HF LLaMA directory (validated like the converter) into sharded arrays.

  Each process reads only the blocks its own devices hold: every tensor is memory-mapped and each
  distinct block is sliced out of a strided view in our layout once, cast to param_dtype and placed,
  so host memory holds the distinct blocks of one parameter at a time, never the model (a replicated
  parameter's block is the whole tensor). Pickle (.bin) weights are refused here as in `open_hf`;
  convert them first.
  """
  from heal_jax.checkpoint import hf_convert  # pylint: disable=import-outside-toplevel
  ckpt = hf_convert.open_hf(path)
  hf_convert.validate(ckpt)
  check_compatible(cfg, ckpt.cfg, str(path), notes)
  views: dict[str, Any] = {}
  for spec in hf_mapping.tensor_specs(ckpt.cfg):
    hf_mapping.set_path(views, spec.path, spec.view_ours(ckpt.tensors[spec.hf_name].view()))
  if cfg.scan_layers:
    per_layer = [views.pop(f"layers_{i}") for i in range(cfg.num_layers)]
    views["layers"] = jax.tree.map(lambda *vs: _Slices(list(vs), stacked=True), *per_layer)
  sources = jax.tree.map(lambda v: v if isinstance(v, _Slices) else _Slices([v], stacked=False), views,
                         is_leaf=lambda v: isinstance(v, _Slices))

  def put(source: _Slices, sharding):
    blocks: dict[tuple, np.ndarray] = {}  # devices holding the same block (replicas) share one read

    def block(index):
      key = tuple((s.start, s.stop, s.step) for s in index)
      if key not in blocks:
        blocks[key] = np.ascontiguousarray(source.read(index), dtype=cfg.param_dtype)
      return blocks[key]
    return jax.make_array_from_callback(source.shape, sharding, block)
  return jax.tree.map(put, sources, shardings, is_leaf=lambda v: isinstance(v, _Slices))


def _layer_sharding(stacked: NamedSharding) -> NamedSharding:
  """The sharding of one layer's slice of a parameter stacked over layers (leading axis dropped)."""
  return NamedSharding(stacked.mesh, P(*tuple(stacked.spec)[1:]))


def _stacked_sharding(layer: NamedSharding) -> NamedSharding:
  return NamedSharding(layer.mesh, P(None, *tuple(layer.spec)))


def _convert_layout(params: dict[str, Any], num_layers: int, to_scanned: bool, shardings: Any) -> dict[str, Any]:
  """Stacks `layers_i` subtrees into `layers` (or splits it) on the devices, placed by `shardings`
  (the target tree), in one compiled program; nothing goes through the host."""
  out = {k: v for k, v in params.items() if k != "layers" and not k.startswith("layers_")}
  if to_scanned:
    per_layer = [params[f"layers_{i}"] for i in range(num_layers)]
    stack = jax.jit(lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees), out_shardings=shardings["layers"])
    out["layers"] = stack(per_layer)
  else:
    split = jax.jit(lambda tree: [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(num_layers)],
                    out_shardings=[shardings[f"layers_{i}"] for i in range(num_layers)])
    for i, tree in enumerate(split(params["layers"])):
      out[f"layers_{i}"] = tree
  return out


def from_checkpoint(path: pathlib.Path, cfg: ModelConfig, shardings: Any, notes: list[str] | None = None) -> Any:
  """A converted checkpoint or another run's work directory (its newest step, or the step of a
  WORKDIR/checkpoints/N path), read by orbax into sharded arrays (each process reads its own
  blocks), cast to param_dtype on read; a scanned / unscanned difference of layout is bridged on the
  devices."""
  from heal_jax.checkpoint import params_store, restore, workdir_restore  # pylint: disable=import-outside-toplevel
  run_dir = _source_kind(path) == "workdir"
  if run_dir:
    stored = workdir_restore.newest_step(*restore.workdir_and_step(path))
    stored_cfg = stored.cfg
  else:
    stored_cfg = params_store.model_config(path)  # CheckpointError naming the path if it is neither
  check_compatible(cfg, stored_cfg, str(path), notes)
  stored_scanned = stored_cfg.scan_layers and run_dir  # converted checkpoints are stored unscanned
  if stored_scanned == cfg.scan_layers:
    source_shardings = shardings
  elif cfg.scan_layers:  # stored per layer, run stacked
    source_shardings = {k: v for k, v in shardings.items() if k != "layers"}
    for i in range(cfg.num_layers):
      source_shardings[f"layers_{i}"] = jax.tree.map(_layer_sharding, shardings["layers"])
  else:  # stored stacked, run per layer
    source_shardings = {k: v for k, v in shardings.items() if not k.startswith("layers_")}
    source_shardings["layers"] = jax.tree.map(_stacked_sharding, shardings["layers_0"])
  if run_dir:
    params = workdir_restore.params_sharded(stored, source_shardings, cfg.param_dtype)
  else:
    params = params_store.restore_sharded(path, source_shardings, cfg.param_dtype)
  if stored_scanned != cfg.scan_layers:
    params = _convert_layout(params, cfg.num_layers, cfg.scan_layers, shardings)
  return params


def check_tokenizer(init_from: str, tokenizer_model: pathlib.Path) -> None:
  """The model in `init_from` was trained with the run's tokenizer (`tokenizer_model`, the
  sentencepiece file), where it carries one (DIR/tokenizer/ or an HF directory's tokenizer.model):
  with another, every token id would silently mean another piece."""
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  src = pathlib.Path(init_from)
  src = (restore.workdir_and_step(src) or (src, None))[0]  # a step directory: its work directory's tokenizer
  from heal_jax.data.tokenizer import MODEL_FILE  # pylint: disable=import-outside-toplevel
  theirs = next((p for p in (src / restore.WORKDIR_TOKENIZER / MODEL_FILE, src / MODEL_FILE) if p.is_file()), None)
  if theirs is not None and theirs.read_bytes() != pathlib.Path(tokenizer_model).read_bytes():
    raise ValueError(f"config.init_from {src} was trained with the tokenizer {theirs}, which differs from "
                     f"config.data.tokenizer ({tokenizer_model}): token ids would change meaning; train with "
                     f"--config.data.tokenizer={theirs.parent}")


def _source_kind(path: pathlib.Path) -> str | None:
  """"checkpoint" (converted), "workdir" (or one of its steps), "hf", or None: what `path` holds."""
  from heal_jax.checkpoint import params_store, restore  # pylint: disable=import-outside-toplevel
  if (path / params_store.MANIFEST).is_file():  # a converted checkpoint comes first, as in load_model
    return "checkpoint"
  if restore.is_workdir(path):  # (a work directory has a config.json too: the run's config)
    return "workdir"
  if (path / "config.json").is_file():
    return "hf"
  return None


def check_source(init_from: str, cfg: ModelConfig | None = None) -> None:
  """config.init_from, checked before a run locks or reads anything: "" or a directory that is an HF
  checkpoint (config.json), a converted one (heal_checkpoint.json), a work directory or one of its
  steps. With the run's model `cfg`, an HF checkpoint's weight headers (names, shapes, dtypes,
  truncation) and an HF or converted checkpoint's model config are checked against it too, reading
  no tensor data (but a tied lm_head copy, compared with the embedding). ValueError naming the key or
  tensor (a work directory's tensors are checked when they are read)."""
  if not init_from:
    return
  from heal_jax.checkpoint import params_store, restore  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(init_from)
  if not path.is_dir():
    raise ValueError(f"config.init_from={init_from!r}: {'not a directory' if path.exists() else 'no such directory'}")
  kind = _source_kind(path)
  if kind is None:
    raise ValueError(f"config.init_from={init_from!r} is neither an HF checkpoint (config.json), a converted "
                     f"checkpoint ({params_store.MANIFEST}), a work directory ({restore.WORKDIR_CHECKPOINTS}/) nor "
                     f"one of its steps")
  if cfg is None:
    return
  if kind == "hf":
    from heal_jax.checkpoint import hf_convert  # pylint: disable=import-outside-toplevel
    ckpt = hf_convert.open_hf(path)
    hf_convert.validate(ckpt)
    check_compatible(cfg, ckpt.cfg, str(path))
  elif kind == "checkpoint":
    check_compatible(cfg, params_store.model_config(path), str(path))


def initial_params(init_from: str, cfg: ModelConfig, shardings: Any, seed: int) -> tuple[Any, str]:
  """(params, description). init_from: "" (scratch), an HF dir, a checkpoint or a work dir.

  Read parameters holding NaN/Inf are a CheckpointError naming the tensors."""
  if not init_from:
    init = jax.jit(lambda key: state_lib.unboxed_init(cfg, key), out_shardings=shardings)
    return init(jax.random.PRNGKey(seed)), f"from scratch (seed {seed})"
  path = pathlib.Path(init_from)
  from heal_jax.checkpoint import finite  # pylint: disable=import-outside-toplevel
  notes: list[str] = []
  kind = _source_kind(path)
  if kind == "hf":
    params, how = from_hf(path, cfg, shardings, notes), f"from HF {path}"
  else:  # (None: from_checkpoint's CheckpointError names what is missing)
    where = f"work directory {path}" if kind == "workdir" else str(path)
    params, how = from_checkpoint(path, cfg, shardings, notes), f"from {where}"
  how += "".join(f" ({note})" for note in notes)
  finite.require_finite(params, f"init_from {path} (read as {jax.numpy.dtype(cfg.param_dtype).name})")
  return params, how
