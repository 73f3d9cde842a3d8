"""A model on several devices for `heal-jax generate` and `heal-jax eval`: `--mesh data=D,fsdp=F,tensor=T`.

The parameters are placed by the training partition rules (`heal_jax.parallel.mesh`: heads, MLP and
vocabulary over tensor, the embedding dimension over fsdp), and the command runs under that mesh and its
logical axis rules, as the trainer's own evaluations do. So a model larger than one device's memory is
split over the devices (tensor parallelism within a host is the fast choice for decoding), and rows of a
batch are split over data x fsdp: batches take a multiple of data x fsdp rows. The axes not named are
1; one axis may be -1 and takes the devices left over; the mesh must use every device of the process.
A mesh with fsdp or tensor above 1 that would leave a large parameter whole on every device (40 heads
on tensor=16) is refused, as the trainer refuses it. One process only. `load` reads each tensor straight
onto its devices (a 70B work directory's float32 weights never pass through host memory whole); the
checks of a whole read (CRC-32s or fingerprints, NaN/Inf) are made tensor by tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import dataclasses
from typing import Any

import flax.linen as nn
import jax

from heal_jax.checkpoint.restore import LoadedModel, load_model
from heal_jax.model import llama
from heal_jax.model.config import ModelConfig
from heal_jax.parallel import mesh as mesh_lib


_REPLICATED_LIMIT = 1 << 20  # elements a parameter may have whole on every device of a splitting mesh


def parse_mesh(spec: str) -> dict[str, int]:
  """"tensor=4" -> {"data": 1, "fsdp": 1, "tensor": 4}. Raises ValueError naming a bad item."""
  sizes = dict.fromkeys(mesh_lib.AXES, 1)
  seen = set()
  for item in filter(None, (s.strip() for s in spec.split(","))):
    axis, _, value = item.partition("=")
    if axis.strip() not in sizes:
      raise ValueError(f"--mesh {spec!r}: unknown axis {axis.strip()!r} (axes: {', '.join(mesh_lib.AXES)})")
    if axis.strip() in seen:
      raise ValueError(f"--mesh {spec!r}: axis {axis.strip()!r} is given twice")
    seen.add(axis.strip())
    try:
      sizes[axis.strip()] = int(value)
    except ValueError:
      raise ValueError(f"--mesh {spec!r}: {item!r} is not AXIS=INTEGER") from None
  return sizes


def batch_rows(rows: int, spec: str | None) -> int:
  """`rows` rounded up to a multiple of the mesh's data x fsdp (unchanged without a mesh)."""
  if not spec:
    return rows
  _one_process()
  sizes = mesh_lib.mesh_shape(parse_mesh(spec), jax.local_device_count())
  split = sizes[0] * sizes[1]
  return -(-rows // split) * split


def _mesh(spec: str) -> jax.sharding.Mesh:
  _one_process()
  return mesh_lib.make_mesh(parse_mesh(spec), jax.local_devices())


def _shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh, spec: str) -> Any:
  """The parameters' shardings on `mesh` (a tree like the model's params); ShardingError for a mesh
  that would leave a large parameter whole on every device."""
  boxed = llama.param_shapes(cfg)
  shardings = mesh_lib.logical_shardings(boxed, mesh)
  if mesh.shape["fsdp"] * mesh.shape["tensor"] > 1:  # (data only: a copy of the model per row group, on purpose)
    try:
      mesh_lib.check_no_large_replicated(nn.unbox(boxed), shardings, _REPLICATED_LIMIT)
    except mesh_lib.ShardingError as e:
      raise mesh_lib.ShardingError(f"--mesh {spec}: {str(e).split('. Change the mesh')[0]}: choose fsdp and "
                                   "tensor sizes that divide the model's dimensions (heads, MLP, vocabulary)") from None
  return shardings


def load(checkpoint: str, spec: str | None, dtype: Any = None, **cfg_overrides: Any) -> LoadedModel:
  """`restore.load_model`; with a mesh `spec`, each tensor is read straight onto its devices (the host
  holds one tensor at a time, never the model), in the layout `placed` then uses as it is."""
  if not spec:
    return load_model(checkpoint, dtype, **cfg_overrides)
  mesh = _mesh(spec)
  return load_model(checkpoint, dtype, shardings_for=lambda cfg: _shardings(cfg, mesh, spec), **cfg_overrides)


@contextlib.contextmanager
def placed(loaded: LoadedModel, spec: str | None) -> Iterator[LoadedModel]:
  """`loaded` with its parameters placed on the mesh of `spec` (None: unchanged; parameters `load`
  already read onto it stay where they are), with that mesh and the logical axis rules active for
  the block. Raises ShardingError (a ValueError) for a mesh that does not fit the devices."""
  if not spec:
    yield loaded
    return
  mesh = _mesh(spec)
  shardings = _shardings(loaded.cfg, mesh, spec)
  out = dataclasses.replace(loaded, params=jax.device_put(loaded.params, shardings))  # same values: digest holds
  del loaded  # the host copy of the weights goes once the caller drops its own
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
    yield out


def _one_process() -> None:
  if jax.process_count() > 1:
    raise ValueError("--mesh: eval and generate run in one process (over its local devices)")
