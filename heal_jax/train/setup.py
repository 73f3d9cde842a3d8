"""What the trainer and `heal-jax plan` both build from a run config, so that the plan compiles
exactly what the trainer runs: the device mesh, the checks of a phase against it, and the phase's
jitted train step. The one reader of `config.mesh`, `config.train.{micro_steps, z_loss}` and
`config.data.num_shards`.
"""

from __future__ import annotations

from typing import Any

import jax

from heal_jax.model.config import ModelConfig
from heal_jax.parallel import mesh as mesh_lib
from heal_jax.train import phases as phases_lib
from heal_jax.train import state as state_lib
from heal_jax.train import step as step_lib


def make_mesh(config: Any, devices: list[Any] | None = None) -> jax.sharding.Mesh:
  """The (data, fsdp, tensor) mesh of `config.mesh` over `devices` (default: all of them)."""
  return mesh_lib.make_mesh({k: config.mesh[k] for k in mesh_lib.AXES}, devices)


def num_shards(config: Any) -> int:
  """Shards of every global batch: config.data.num_shards, or one per process."""
  return config.data.num_shards or jax.process_count()


def check_phase(config: Any, phase: phases_lib.Phase, cfg: ModelConfig, mesh: jax.sharding.Mesh) -> None:
  """ValueError if the phase's batch does not split into micro-batches over the data x fsdp devices
  or into the data shards, or if a parameter above config.mesh.max_replicated_elements would be
  replicated on every device."""
  phases_lib.check_batch(phase, config.train.micro_steps, mesh.shape["data"] * mesh.shape["fsdp"])
  if phase.global_batch % num_shards(config):
    raise ValueError(f"phase {phase.name}: global batch {phase.global_batch} is not divisible by the data shards "
                     f"({num_shards(config)}, config.data.num_shards or one per process)")
  shapes = jax.eval_shape(lambda: state_lib.unboxed_init(cfg, jax.random.PRNGKey(0)))
  mesh_lib.check_no_large_replicated(shapes, state_lib.param_shardings(cfg, mesh), config.mesh.max_replicated_elements)


def phase_train_step(config: Any, cfg: ModelConfig, state_shardings: Any, mesh: jax.sharding.Mesh,
                     num_sources: int):
  """The jitted train step for a phase's model `cfg` (see step.jit_train_step), fed batches sharded over
  the mesh and the phase's `step.replicated_hyperparams`."""
  return step_lib.jit_train_step(cfg, config.train.micro_steps, config.train.z_loss, num_sources, state_shardings,
                                 mesh_lib.batch_sharding(mesh))
