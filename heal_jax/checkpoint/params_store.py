"""The converted-checkpoint directory: the one place that writes and reads model parameters.

Layout of a converted checkpoint (what `heal-jax convert hf-to-orbax` writes and what training,
evaluation, generation and export restore from):

  DIR/heal_checkpoint.json   manifest: format, model config, the source HF config, dtype, and the
                             CRC-32 of every tensor's bytes ("crc32": {"layers_0/mlp/w_up/kernel": hex})
  DIR/params/                orbax checkpoint of the unscanned parameter tree (see hf_mapping)
  DIR/tokenizer/             tokenizer files (tokenizer.model, tokenizer_config.json, ...)

Parameters keep the dtype they were converted from (bf16 stays bf16), so a round trip is
bitwise exact and the checkpoint is no larger than its source.

Readers of whole tensors (`load_params`: eval and generation of a converted checkpoint;
`read_tensor`: `orbax-to-hf`) check each tensor against its CRC-32, so a flipped bit on disk is an
error naming the tensor instead of a silently different model. `restore_sharded` (training's
`init_from`, where each process reads only its own blocks) cannot, and checks finiteness only.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import zlib
from typing import Any, Iterator

import jax
import numpy as np

from heal_jax import atomic_dir
from heal_jax.checkpoint import errors, finite, hf_mapping
from heal_jax.checkpoint.errors import CheckpointError
from heal_jax.model.config import ModelConfig

_REDO = "if a file of it is truncated or missing, convert or export the checkpoint again"

MANIFEST = "heal_checkpoint.json"
FORMAT = "heal-jax/params/v1"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")  # transformers 5 / 4.4x chat templates


@contextlib.contextmanager
def atomic_output_dir(dst: pathlib.Path, overwrite: bool = False,
                      inputs: tuple[pathlib.Path, ...] = ()) -> Iterator[pathlib.Path]:
  """Yields a fresh staging directory that becomes `dst` only if the block succeeds
  (`heal_jax.atomic_dir.staged`, after `check_output`).

  On any exception the staging directory is removed, so no partial output is left behind. `inputs`
  are the directories the block reads: replacing `dst` must not delete one of them.
  """
  dst = check_output(dst, overwrite, inputs)
  with contextlib.ExitStack() as stack:
    try:
      staging = stack.enter_context(atomic_dir.staged(dst))
    except OSError as e:  # a file where a folder belongs, a read-only place: name the output, not the staging
      raise CheckpointError(f"cannot create output directory {dst}: {e.strerror or e} ({e.filename})") from None
    yield staging


def check_output(dst: pathlib.Path, overwrite: bool, inputs: tuple[pathlib.Path, ...] = ()) -> pathlib.Path:
  """Where the output `dst` goes, checked before any work: a symbolic link (to big storage) is
  followed, and stays; an existing `dst` needs `overwrite`, and must be a directory that is not
  (and does not hold) one of `inputs` and is empty or a checkpoint (heal-jax's manifest, or an HF
  config.json beside weights; never a training work directory): --overwrite replaces checkpoints, not
  any folder. CheckpointError naming `dst` otherwise."""
  dst = pathlib.Path(dst)
  if dst.is_symlink():
    try:
      target = dst.resolve(strict=False)
    except RuntimeError as e:  # a symlink loop
      raise CheckpointError(f"output {dst}: {e}") from None
    if not target.parent.is_dir():
      raise CheckpointError(f"output {dst} is a link to {target}, whose folder {target.parent} does not exist")
    dst = target
  if dst.exists() and not dst.is_dir():
    raise CheckpointError(f"output {dst} exists and is not a directory")
  if dst.exists() and not overwrite:
    raise CheckpointError(f"output directory {dst} already exists (pass --overwrite to replace it)")
  check_not_an_input(dst, inputs)
  if dst.exists() and any(dst.iterdir()) and not _replaceable_checkpoint(dst):
    held = sorted(p.name for p in dst.iterdir())
    raise CheckpointError(f"output directory {dst} is not a checkpoint (no {MANIFEST}, nor config.json with HF "
                          f"weights; it holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}): --overwrite "
                          "replaces checkpoints only; choose another output or empty it yourself")
  return dst


def _replaceable_checkpoint(path: pathlib.Path) -> bool:
  """A converted checkpoint, or an HF one (config.json beside weights); never a training work directory
  (whose config.json is the run's, beside checkpoints/)."""
  if (path / "checkpoints").is_dir():
    return False
  if (path / MANIFEST).is_file():
    return True
  weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
  return (path / "config.json").is_file() and any((path / name).is_file() for name in weights)


def check_not_an_input(dst: pathlib.Path, inputs: tuple[pathlib.Path, ...]) -> None:
  """Replacing `dst` must not delete one of `inputs` (or a directory holding one)."""
  dst_abs = pathlib.Path(dst).resolve()
  for src in inputs:
    src_abs = pathlib.Path(src).resolve()
    if src_abs == dst_abs or dst_abs in src_abs.parents:
      raise CheckpointError(f"output directory {dst} would replace the input {src}: choose another output")


def _orbax():
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return ocp


def _params_dir(ckpt_dir: pathlib.Path) -> pathlib.Path:
  """DIR/params as an absolute path (orbax refuses relative ones)."""
  return pathlib.Path(ckpt_dir).absolute() / "params"


def write_checkpoint(out_dir: pathlib.Path, params: dict[str, Any], cfg: ModelConfig,
                     hf_config: dict[str, Any] | None, dtype: str,
                     tokenizer_dir: pathlib.Path | None, extra: dict[str, Any] | None = None) -> None:
  """Writes params (nested dict of arrays, unscanned layout), manifest and tokenizer.

  Pass jax arrays to keep peak memory near one copy of the model: orbax copies numpy leaves
  before writing them. Tensors are stored uncompressed (weights barely compress, and
  compression buffers cost another copy).
  """
  out_dir = pathlib.Path(out_dir)
  ocp = _orbax()
  handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=1, use_compression=False)
  with ocp.Checkpointer(handler) as ckpt:
    ckpt.save(_params_dir(out_dir), args=ocp.args.PyTreeSave(params))
  copied = copy_tokenizer(tokenizer_dir, out_dir / "tokenizer") if tokenizer_dir else []
  crc = {"/".join(path): _crc32(x) for path, x in hf_mapping.iter_paths(params)}
  manifest = {"format": FORMAT, "model": cfg.to_dict(), "hf_config": hf_config or {},
              "dtype": dtype, "tokenizer_files": copied, "crc32": crc, **(extra or {})}
  (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _crc32(x: Any) -> str:
  """CRC-32 of an array's bytes in C order (jax CPU arrays are read in place)."""
  return f"{zlib.crc32(np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)):08x}"


def _check_crc(ckpt_dir: pathlib.Path, manifest: dict[str, Any], path: hf_mapping.ParamPath, x: Any) -> None:
  """A tensor read whole must have the CRC-32 its manifest records (checkpoints written before
  checksums existed have no "crc32" map and are not checked; a map without this tensor is damaged)."""
  if "crc32" not in manifest:
    return
  stored = manifest["crc32"].get("/".join(path))
  if stored is None:
    raise CheckpointError(f"{ckpt_dir / MANIFEST}: no CRC-32 for tensor {'/'.join(path)} in its \"crc32\" map, "
                          "which lists every tensor of a checkpoint written whole: the manifest is damaged")
  if _crc32(x) != stored:
    raise CheckpointError(f"{_params_dir(ckpt_dir)}: tensor {'/'.join(path)} does not match its CRC-32 in "
                          f"{MANIFEST} (stored {stored}, read {_crc32(x)}): the file holding it is damaged")


def copy_tokenizer(src_dir: pathlib.Path, dst_dir: pathlib.Path) -> list[str]:
  """Copies the known tokenizer files present in `src_dir`; returns their names."""
  names = [n for n in TOKENIZER_FILES if (pathlib.Path(src_dir) / n).is_file()]
  if names:
    dst_dir.mkdir(parents=True, exist_ok=True)
  for n in names:
    shutil.copyfile(pathlib.Path(src_dir) / n, dst_dir / n)
  return names


def read_manifest(ckpt_dir: pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(ckpt_dir) / MANIFEST
  if not path.is_file():
    raise CheckpointError(f"{ckpt_dir} is not a heal-jax checkpoint: {MANIFEST} is missing")
  try:
    manifest = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    raise CheckpointError(f"{path}: format {found!r}, expected {FORMAT!r}")
  if not isinstance(manifest.get("model"), dict):
    raise CheckpointError(f"{path}: no \"model\" object (the model config)")
  crc = manifest.get("crc32", {})
  if not isinstance(crc, dict) or not all(isinstance(v, str) for v in crc.values()):
    raise CheckpointError(f"{path}: \"crc32\" must map tensor names to hex strings")
  if not (pathlib.Path(ckpt_dir) / "params" / "_CHECKPOINT_METADATA").exists():
    raise CheckpointError(f"{ckpt_dir}/params: no completed orbax checkpoint")
  return manifest


def model_config(ckpt_dir: pathlib.Path, manifest: dict[str, Any] | None = None) -> ModelConfig:
  """The model config in DIR's manifest (`manifest`: that manifest when already read)."""
  manifest = manifest or read_manifest(ckpt_dir)
  try:
    return ModelConfig.from_dict(manifest["model"])
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{pathlib.Path(ckpt_dir) / MANIFEST}: \"model\": {e}") from None


def tensor_metadata(ckpt_dir: pathlib.Path) -> dict[hf_mapping.ParamPath, tuple[tuple[int, ...], np.dtype]]:
  """(shape, dtype) of every stored parameter, read from orbax metadata without loading data."""
  params_dir = _params_dir(ckpt_dir)
  try:
    meta = _orbax().PyTreeCheckpointer().metadata(params_dir)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{params_dir}: orbax metadata unreadable ({type(e).__name__}: {e}); {_REDO}") from None
  tree = getattr(meta.item_metadata, "tree", None) if meta is not None else None
  if tree is None:
    raise CheckpointError(f"{params_dir}: orbax metadata (_METADATA) missing or unreadable; {_REDO}")
  return {path: (tuple(m.shape), np.dtype(m.dtype)) for path, m in hf_mapping.iter_paths(tree)}


def read_tensor(ckpt_dir: pathlib.Path, path: hf_mapping.ParamPath,
                manifest: dict[str, Any] | None = None) -> np.ndarray:
  """Restores a single parameter as a numpy array (partial restore: nothing else is read), checked
  against its CRC-32 (`manifest`: DIR's manifest when already read)."""
  ocp = _orbax()
  item: dict[str, Any] = {}
  args: dict[str, Any] = {}
  hf_mapping.set_path(item, path, 0)
  hf_mapping.set_path(args, path, ocp.RestoreArgs(restore_type=np.ndarray))
  with errors.reading(str(_params_dir(ckpt_dir)), _REDO), ocp.PyTreeCheckpointer() as ckpt:
    restored = ckpt.restore(_params_dir(ckpt_dir),
                            args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
  tensor = hf_mapping.get_path(restored, path)
  _check_crc(ckpt_dir, manifest or read_manifest(ckpt_dir), path, tensor)
  return tensor


def check_params(ckpt_dir: pathlib.Path, cfg: ModelConfig) -> None:
  """Every expected tensor is stored with the expected shape, and nothing else is."""
  stored = tensor_metadata(ckpt_dir)
  expected = {s.path: s.shape for s in hf_mapping.tensor_specs(cfg)}
  for path, shape in expected.items():
    if path not in stored:
      raise CheckpointError(f"{ckpt_dir}: missing parameter {'/'.join(path)}")
    if stored[path][0] != shape:
      raise CheckpointError(f"{ckpt_dir}: parameter {'/'.join(path)} has shape {list(stored[path][0])},"
                            f" the model config implies {list(shape)}")
  extra = sorted(set(stored) - set(expected))
  if extra:
    raise CheckpointError(f"{ckpt_dir}: unexpected parameter {'/'.join(extra[0])}")


def load_params(ckpt_dir: pathlib.Path, cfg: ModelConfig, dtype: Any = None) -> dict[str, Any]:
  """The whole parameter tree as numpy arrays, in the layout `cfg` asks for (scanned or not), each
  tensor checked against its CRC-32 and for NaN/Inf.

  `dtype` casts every tensor (e.g. float32 master weights for training).
  """
  manifest = read_manifest(ckpt_dir)
  stored_cfg = model_config(ckpt_dir, manifest)
  check_params(ckpt_dir, stored_cfg.replace(scan_layers=False))
  with errors.reading(str(_params_dir(ckpt_dir)), _REDO), _orbax().StandardCheckpointer() as ckpt:
    params = ckpt.restore(_params_dir(ckpt_dir))
  for path, x in hf_mapping.iter_paths(params):
    _check_crc(ckpt_dir, manifest, path, x)
  if dtype is not None:
    params = _map_leaves(params, lambda x: np.asarray(x).astype(dtype))
  finite.require_finite(params, str(ckpt_dir))
  if cfg.scan_layers:
    params = hf_mapping.stack_layers(params, cfg.num_layers)
  return params


def params_placed(ckpt_dir: pathlib.Path, cfg: ModelConfig, shardings: dict[str, Any], dtype: Any = None
                  ) -> dict[str, Any]:
  """The parameter tree (unscanned: `cfg.scan_layers` must be False) read one tensor at a time, each
  checked against its CRC-32, cast to `dtype`, checked for NaN/Inf and placed by `shardings` (same
  tree) before the next is read: host memory holds one tensor, not the model."""
  if cfg.scan_layers:
    raise ValueError(f"{ckpt_dir}: a converted checkpoint is read onto devices per layer (scan_layers=False)")
  manifest = read_manifest(ckpt_dir)
  check_params(ckpt_dir, cfg)
  params: dict[str, Any] = {}
  for spec in hf_mapping.tensor_specs(cfg):
    x = read_tensor(ckpt_dir, spec.path, manifest)
    if dtype is not None:
      x = x.astype(dtype)
    one: dict[str, Any] = {}
    hf_mapping.set_path(one, spec.path, x)
    finite.require_finite(one, str(ckpt_dir))
    hf_mapping.set_path(params, spec.path, jax.device_put(x, hf_mapping.get_path(shardings, spec.path)))
    del x, one
  return params


def restore_sharded(ckpt_dir: pathlib.Path, shardings: dict[str, Any], dtype: Any) -> dict[str, Any]:
  """The stored (unscanned) parameter tree as jax arrays placed by `shardings` (same tree), cast to
  `dtype` on read: orbax reads each process's own blocks only (tensorstore chunk reads)."""
  ocp = _orbax()
  check_params(ckpt_dir, model_config(ckpt_dir).replace(scan_layers=False))
  restore_args = _map_leaves(shardings, lambda sh: ocp.ArrayRestoreArgs(sharding=sh, dtype=dtype))
  item = _map_leaves(shardings, lambda _: 0)
  with errors.reading(str(_params_dir(ckpt_dir)), _REDO), ocp.PyTreeCheckpointer() as ckpt:
    return ckpt.restore(_params_dir(ckpt_dir),
                        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args))


def _map_leaves(tree: Any, fn) -> Any:
  if isinstance(tree, dict):
    return {k: _map_leaves(v, fn) for k, v in tree.items()}
  return fn(tree)
