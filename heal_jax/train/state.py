"""The typed train state and its shardings."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from heal_jax.model import llama
from heal_jax.model.config import ModelConfig
from heal_jax.parallel import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes (the data-iterator state travels beside it, on the host).

  step: int32 [], train steps (global batches) taken in the whole run, all phases, skipped ones included.
  params: fp32 master parameters (unboxed tree of the model).
  opt_state: the phase's optax state (reset at every phase start).
  rng: uint32 [2] PRNG key data, split every step.
  skipped: int32 [], steps skipped in the whole run (a non-finite loss or gradient, or no target token).
  bad_streak: int32 [], consecutive skipped steps up to now (0 after a good step).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  skipped: jax.Array
  bad_streak: jax.Array


def new_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array, step: int = 0,
              skipped: int = 0) -> TrainState:
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
                    skipped=jnp.asarray(skipped, jnp.int32), bad_streak=jnp.zeros((), jnp.int32))


def param_shardings(cfg: ModelConfig, mesh: Mesh) -> Any:
  """NamedShardings of the (unboxed) parameter tree from the logical axis rules."""
  return mesh_lib.logical_shardings(llama.param_shapes(cfg), mesh)


def _key_path(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def state_shardings(abstract_state: TrainState, params_shardings: Any, mesh: Mesh) -> TrainState:
  """Shardings for a whole TrainState: optimizer moments follow their parameter, scalars replicate."""
  by_path = {_key_path(p): s for p, s in jax.tree_util.tree_flatten_with_path(
      params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]}
  depth = {len(k) for k in by_path}

  def pick(path, leaf):
    keys = _key_path(path)
    for d in depth:
      if len(keys) >= d and keys[-d:] in by_path and by_path[keys[-d:]].spec is not None:
        sharding = by_path[keys[-d:]]
        if len(sharding.spec) <= leaf.ndim:
          return sharding
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(pick, abstract_state)


def unboxed_init(cfg: ModelConfig, rng: jax.Array) -> Any:
  return nn.unbox(llama.init_params(cfg, rng))
