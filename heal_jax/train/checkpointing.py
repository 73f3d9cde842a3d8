"""Training checkpoints in the work directory: orbax CheckpointManager, async, atomic.

WORKDIR/checkpoints/<step>/ holds three items, written together:
  state/  the TrainState (params, optimizer state, step, RNG, skip counters), sharded arrays
  data/   the data iterator's state: one JSON file per data shard (shard_<s>.json), each written by
          the process that reads that shard, so a run restores on any process count
  meta/   JSON: the phase, the resolved config, the model config
orbax writes a step into a temporary directory and renames it when every item is complete, so a
checkpoint that was being written when the process died is never listed, hence never restored.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from heal_jax.checkpoint import errors, fingerprint, finite
from heal_jax.checkpoint.errors import CheckpointError
from heal_jax.checkpoint.restore import WORKDIR_CHECKPOINTS
from heal_jax.checkpoint.workdir_restore import completed_steps
from heal_jax.data import pipeline
from heal_jax.model.config import ModelConfig

# Model fields that fix the shapes and dtypes of the saved arrays: a resume must keep them.
# (param_dtype may change: orbax casts on restore.)
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                "head_dim", "tie_word_embeddings", "scan_layers")


class DataStateHandler(ocp.CheckpointHandler):
  """Saves/restores a `pipeline.BatchIterator`'s state as one JSON file per data shard."""

  def save(self, directory, args: "DataStateSave"):
    state = args.iterator.get_state()
    for shard, shard_state in state["shards"].items():
      (pathlib.Path(directory) / f"shard_{shard}.json").write_text(
          json.dumps({"spec": state["spec"], "state": shard_state}))

  def restore(self, directory, args: "DataStateRestore"):
    it = args.iterator
    shards = {}
    present = sorted(int(p.stem.split("_")[1]) for p in pathlib.Path(directory).glob("shard_*.json")
                     if p.stem.split("_")[1].isdigit())  # one file per shard of the run that saved it
    for shard in it.shards:
      path = pathlib.Path(directory) / f"shard_{shard}.json"
      if not path.is_file():
        if not present or present[-1] > shard:  # a file of a lower shard is gone: damage, not a new shard count
          raise ValueError(f"{path} is missing")
        raise CheckpointError(f"{path}: the checkpoint has no data state for shard {shard}; it was saved with"
                              f" data.num_shards={len(present)} (a run resumes with the data.num_shards it started"
                              " with)")
      try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        shards[str(shard)] = saved["state"]
      except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e})") from None
    it.set_state({"spec": saved["spec"], "shards": shards})
    return it

  def metadata(self, directory):
    del directory
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  iterator: Any


def manager(workdir: pathlib.Path, keep: int, keep_period: int, async_save: bool,
            read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, keep_period=keep_period or None, enable_async_checkpointing=async_save,
      create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / WORKDIR_CHECKPOINTS, options=options,
                               item_names=("state", "data", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, iterator: Any, meta: dict[str, Any]) -> None:
  """Starts an (async) save of step `step`; the state must not be donated before it is copied.

  meta gets "fingerprints" (see `fingerprint`), computed here on the devices.
  """
  meta = {**meta, "fingerprints": fingerprint.fingerprints(state)}
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=DataStateSave(iterator), meta=ocp.args.JsonSave(meta)),
            force=True)


def warm_up(state: Any) -> None:
  """Compiles the fingerprint program of `save` for this state now: the first save may come on
  SIGTERM, inside the scheduler's grace period, where a compile of many seconds would not fit. (A
  resume compiles it already, when `restore_state` checks the fingerprints.)"""
  fingerprint.fingerprints(state)


def has_completed_step(workdir: pathlib.Path) -> bool:
  """Whether WORKDIR holds a completed checkpoint."""
  return bool(completed_steps(workdir))


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _go_back(mngr: ocp.CheckpointManager, step: int) -> str:
  earlier = [s for s in mngr.all_steps() if s < step]
  return "remove that directory to " + (f"resume from step {max(earlier)}" if earlier else "start the run again")


def _reading(mngr: ocp.CheckpointManager, step: int, keep: tuple[type[Exception], ...] = ()):
  """Failures to read step `step` become one line naming it and how to go back a step."""
  return errors.reading(str(pathlib.Path(mngr.directory) / str(step)),
                        "if a file of it is truncated or missing, " + _go_back(mngr, step), keep)


def check_resumable(mngr: ocp.CheckpointManager, step: int, cfg: ModelConfig) -> None:
  """Step `step` was saved with the shapes `cfg` implies; else CheckpointError naming each field."""
  with _reading(mngr, step):
    saved = restore_meta(mngr, step)["model"]
  now = cfg.to_dict()
  changed = [f"model.{k}: saved {saved.get(k)!r}, now {now[k]!r}" for k in SHAPE_FIELDS if saved.get(k) != now[k]]
  if changed:
    raise CheckpointError(f"{pathlib.Path(mngr.directory) / str(step)} holds a different model: "
                          f"{'; '.join(changed)}. Resume with the config it was saved with, or use a new --workdir")


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """The TrainState of `step`, laid out by the shardings in `abstract_state` (any mesh); a step that
  cannot be read, holds NaN/Inf (never saved by the trainer, whose guard skips such steps) or
  differs from the fingerprints saved with it is a CheckpointError naming it and the step to go
  back to."""
  with _reading(mngr, step):
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
  where = f"{pathlib.Path(mngr.directory) / str(step)}'s state"
  finite.require_finite(state, where, _go_back(mngr, step))
  fingerprint.require_match(state, restore_meta(mngr, step).get("fingerprints"), where, hint=_go_back(mngr, step))
  return state


def restore_data(mngr: ocp.CheckpointManager, step: int, iterator: Any) -> None:
  """Restores the data iterator of `step`; a missing or damaged state file is a CheckpointError
  naming it and the step to go back to (a state of another pipeline stays the pipeline's error)."""
  with _reading(mngr, step, keep=(pipeline.StateMismatch,)):
    mngr.restore(step, args=ocp.args.Composite(data=DataStateRestore(iterator)))


def abstract(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each array's sharding (the restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
