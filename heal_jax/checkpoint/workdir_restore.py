"""Parameters of a training work directory's newest checkpoint, for eval, generation and export."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pathlib
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from heal_jax.checkpoint import errors, fingerprint, finite, hf_mapping
from heal_jax.checkpoint.errors import CheckpointError
from heal_jax.checkpoint.restore import WORKDIR_CHECKPOINTS
from heal_jax.model.config import ModelConfig


class _DropReadOnlyNotice(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return "Given directory is read only" not in record.getMessage()


@contextlib.contextmanager
def _quiet_read_only() -> Iterator[None]:
  """Drops orbax's warning that a manager we open read-only on purpose is read-only."""
  logger, notice = logging.getLogger("absl"), _DropReadOnlyNotice()
  logger.addFilter(notice)
  try:
    yield
  finally:
    logger.removeFilter(notice)


class StoredStep(NamedTuple):
  """A completed training checkpoint: its phase's model config, state directory, step, and the
  fingerprints saved with it (None for checkpoints written before them; see `fingerprint`)."""
  cfg: ModelConfig
  state_dir: pathlib.Path
  step: int
  fingerprints: dict[str, Any] | None


_GO_BACK = "remove that step's directory to use the step before it"


def _manager(workdir: pathlib.Path) -> ocp.CheckpointManager:
  with _quiet_read_only():
    return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / WORKDIR_CHECKPOINTS,
                                 options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                                      save_interval_steps=0),
                                 item_names=("state", "data", "meta"))


def completed_steps(workdir: pathlib.Path) -> list[int]:
  """Steps of WORKDIR's completed checkpoints, ascending (orbax names one by its step only once it is
  complete; one being written has another name), read from the directory without opening orbax."""
  steps = pathlib.Path(workdir) / WORKDIR_CHECKPOINTS
  return sorted(int(p.name) for p in steps.iterdir() if p.name.isdigit()) if steps.is_dir() else []


def newest_step(workdir: pathlib.Path, step: int | None = None) -> StoredStep:
  """The newest completed step of a work directory, or its completed step `step`."""
  mngr = _manager(workdir)
  completed = list(mngr.all_steps())
  if step is not None and step not in completed:
    mngr.close()
    raise CheckpointError(f"{workdir}/{WORKDIR_CHECKPOINTS}/{step}: not a completed checkpoint (completed steps: "
                          f"{sorted(completed) or 'none'})")
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"{workdir}: no completed checkpoint in {WORKDIR_CHECKPOINTS}/")
  state_dir = pathlib.Path(workdir).absolute() / WORKDIR_CHECKPOINTS / str(step) / "state"
  try:
    with errors.reading(f"{state_dir.parent}/meta", f"if it is truncated or missing, {_GO_BACK}"):
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  finally:
    mngr.close()
  if not isinstance(meta, dict):
    raise CheckpointError(f"{state_dir.parent}/meta: not a JSON object; {_GO_BACK}")
  try:
    cfg = ModelConfig.from_dict(meta["model"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{state_dir.parent}/meta: no valid model config ({type(e).__name__}: {e})") from None
  return StoredStep(cfg, state_dir, int(step), meta.get("fingerprints"))


def _params_meta(state_dir: pathlib.Path) -> Any:
  """The metadata tree (shapes, dtypes) of a train-state checkpoint's `params`."""
  with errors.reading(str(state_dir.parent), f"if a file of it is truncated or missing, {_GO_BACK}"):
    # The handler's metadata: the item directory has no step-level _CHECKPOINT_METADATA to look for.
    handler = ocp.PyTreeCheckpointHandler()
    try:
      return handler.metadata(state_dir).tree["params"]
    finally:
      handler.close()


def _read_params(state_dir: pathlib.Path, item: Any, restore_args: Any) -> dict:
  """The leaves of the `params` subtree named by `item` (a tree of 0s), read as `restore_args` say."""
  with errors.reading(str(state_dir.parent), f"if a file of it is truncated or missing, {_GO_BACK}"), \
      ocp.PyTreeCheckpointer() as ckpt:
    return ckpt.restore(state_dir, args=ocp.args.PyTreeRestore(item={"params": item},
                                                               restore_args={"params": restore_args},
                                                               partial_restore=True))["params"]


def _restore_params(state_dir: pathlib.Path, make_args) -> dict:
  """The `params` subtree of a train-state checkpoint; make_args(metadata tree) -> RestoreArgs tree."""
  params_meta = _params_meta(state_dir)
  return _read_params(state_dir, jax.tree.map(lambda _: 0, params_meta), make_args(params_meta))


def params_sharded(stored: StoredStep, shardings: Any, dtype: Any) -> dict:
  """The params of a step (see `newest_step`) as jax arrays placed by `shardings` (a tree in the
  checkpoint's own layout, scanned or not), cast to `dtype` on read: each process reads only its
  own blocks. Checked against the step's fingerprints where not cast."""
  state_dir = stored.state_dir

  def make_args(params_meta):
    if jax.tree.structure(params_meta) != jax.tree.structure(shardings):
      raise CheckpointError(f"{state_dir}: stored parameters do not match the model's parameter tree")
    return jax.tree.map(lambda _, sh: ocp.ArrayRestoreArgs(sharding=sh, dtype=dtype), params_meta, shardings)
  params = _restore_params(state_dir, make_args)
  fingerprint.require_match(params, stored.fingerprints, f"{state_dir.parent} (params)", "params/",
                            f"{_GO_BACK} in that run, or point init_from elsewhere")
  return params


def params_placed(stored: StoredStep, shardings_for: Callable[[ModelConfig], Any], dtype: Any) -> dict:
  """The params of a step (see `newest_step`) read straight onto devices, one tensor at a time:
  `shardings_for(stored.cfg)` places each (a tree in the checkpoint's own layout, scanned or not);
  orbax reads each device's blocks in the stored dtype, which are checked against the step's
  fingerprints and for NaN/Inf, then cast to `dtype`. Device memory peaks at the cast model plus one
  stored tensor; host memory holds no whole tensor."""
  state_dir, where = stored.state_dir, f"{stored.state_dir.parent} (params)"
  shardings = shardings_for(stored.cfg)
  params_meta = _params_meta(state_dir)
  if jax.tree.structure(params_meta) != jax.tree.structure(shardings):
    raise CheckpointError(f"{state_dir}: stored parameters do not match the model's parameter tree")
  params: dict[str, Any] = {}
  for path, meta in hf_mapping.iter_paths(params_meta):
    item, args = {}, {}
    hf_mapping.set_path(item, path, 0)
    hf_mapping.set_path(args, path, ocp.ArrayRestoreArgs(sharding=hf_mapping.get_path(shardings, path),
                                                         dtype=meta.dtype))
    one = _read_params(state_dir, item, args)  # this tensor alone, named by its path as in the whole tree
    hf_mapping.set_path(params, path, hf_mapping.get_path(_checked(one, stored.fingerprints, where, dtype), path))
  return params


def _checked(params: Any, saved: dict[str, Any] | None, where: str, dtype: Any) -> Any:
  """`params` (numpy or jax arrays, as stored) checked for NaN/Inf and against the fingerprints
  `saved` with their step, then cast to `dtype` and checked for NaN/Inf again where cast."""
  finite.require_finite(params, where, f"{_GO_BACK}, or export an earlier run")
  fingerprint.require_match(params, saved, where, "params/", f"{_GO_BACK}, or export an earlier run")
  if dtype is None or all(np.dtype(x.dtype) == np.dtype(dtype) for x in jax.tree.leaves(params)):
    return params
  params = jax.tree.map(lambda x: x.astype(dtype), params)
  finite.require_finite(params, f"{where} read as {np.dtype(dtype).name}", "read it in a wider --dtype")
  return params


_RETRIES = 3  # reads of the newest step that a running trainer may remove (checkpoint.keep) meanwhile


def newest_params(workdir: pathlib.Path, dtype: Any = None, step: int | None = None,
                  shardings_for: Callable[[ModelConfig], Any] | None = None,
                  **cfg_overrides: Any) -> tuple[ModelConfig, dict, int, str | None]:
  """(model config of the checkpoint's phase, params, step, weights digest) of the newest completed
  step, or of the completed step `step`. The digest is a SHA-256 of the params' fingerprints saved
  with the step (checked against what was read; None for steps saved without). The params are numpy
  arrays, or with `shardings_for` jax arrays read straight onto devices (`params_placed`; the stored
  layout, scanned or not, is kept).

  A trainer may be running in `workdir`: the newest step can be removed (its `checkpoint.keep` is
  reached) while it is read. A failed read of the newest step is retried on the new newest, up to
  `_RETRIES` times, only when the step it read is gone by then; a step that is still there failed
  for its own reasons (damage, a bad override) and is an error naming it.
  """
  for attempt in range(1, _RETRIES + 1):
    picked = (completed_steps(workdir) or [None])[-1] if step is None else None
    try:
      return _params_of_step(workdir, dtype, step, shardings_for, cfg_overrides)
    except Exception:  # pylint: disable=broad-except  # re-raised unless the step read was removed meanwhile
      if picked is None or attempt == _RETRIES:
        raise
      time.sleep(0.5 * attempt)  # a removal in progress: let it finish
      if picked in completed_steps(workdir):
        raise
  raise AssertionError("unreachable")


def _params_of_step(workdir: pathlib.Path, dtype: Any, step: int | None, shardings_for: Any,
                    cfg_overrides: dict[str, Any]) -> tuple[ModelConfig, dict, int, str | None]:
  stored = newest_step(workdir, step)
  cfg, state_dir, step, saved = stored
  if shardings_for is not None:
    if cfg_overrides.get("scan_layers", cfg.scan_layers) != cfg.scan_layers:
      raise ValueError(f"{state_dir.parent}: read onto devices in its stored layout (scan_layers={cfg.scan_layers})")
    return cfg.replace(**cfg_overrides), params_placed(stored, shardings_for, dtype), step, _digest(saved)
  params = _restore_params(
      state_dir, lambda meta: jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta))
  params = _checked(_to_numpy(params), saved, f"{state_dir.parent} (params)", dtype)
  if cfg.scan_layers and not cfg_overrides.get("scan_layers", True):
    params = hf_mapping.unstack_layers(params, cfg.num_layers)
  elif not cfg.scan_layers and cfg_overrides.get("scan_layers", False):
    params = hf_mapping.stack_layers(params, cfg.num_layers)
  return cfg.replace(**cfg_overrides), params, step, _digest(saved)


def _digest(saved: dict[str, Any] | None) -> str | None:
  if not saved:
    return None
  return hashlib.sha256(json.dumps({k: v for k, v in saved.items() if k.startswith("params/")},
                                   sort_keys=True).encode()).hexdigest()


def _to_numpy(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)
