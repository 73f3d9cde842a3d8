"""A model on several devices for `heal-jax generate` and `heal-jax eval`: `--mesh data=D,fsdp=F,tensor=T`.

The parameters are placed by the training partition rules (`heal_jax.parallel.mesh`: heads, MLP and
vocabulary over tensor, the embedding dimension over fsdp), and the command runs under that mesh and its
logical axis rules, as the trainer's own evaluations do. So a model larger than one device's memory is
split over the devices (tensor parallelism within a host is the fast choice for decoding), and rows of a
batch are split over data x fsdp: batches take a multiple of data x fsdp rows. The axes not named are
1; one axis may be -1 and takes the devices left over; the mesh must use every device of the process.
The weights are read whole into host memory first, then placed.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import dataclasses

import flax.linen as nn
import jax

from heal_jax.checkpoint.restore import LoadedModel
from heal_jax.model import llama
from heal_jax.parallel import mesh as mesh_lib


def parse_mesh(spec: str) -> dict[str, int]:
  """"tensor=4" -> {"data": 1, "fsdp": 1, "tensor": 4}. Raises ValueError naming a bad item."""
  sizes = dict.fromkeys(mesh_lib.AXES, 1)
  for item in filter(None, (s.strip() for s in spec.split(","))):
    axis, _, value = item.partition("=")
    if axis.strip() not in sizes:
      raise ValueError(f"--mesh {spec!r}: unknown axis {axis.strip()!r} (axes: {', '.join(mesh_lib.AXES)})")
    try:
      sizes[axis.strip()] = int(value)
    except ValueError:
      raise ValueError(f"--mesh {spec!r}: {item!r} is not AXIS=INTEGER") from None
  return sizes


def batch_rows(rows: int, spec: str | None) -> int:
  """`rows` rounded up to a multiple of the mesh's data x fsdp (unchanged without a mesh)."""
  if not spec:
    return rows
  sizes = mesh_lib.mesh_shape(parse_mesh(spec), jax.device_count())
  split = sizes[0] * sizes[1]
  return -(-rows // split) * split


@contextlib.contextmanager
def placed(loaded: LoadedModel, spec: str | None) -> Iterator[LoadedModel]:
  """`loaded` with its parameters placed on the mesh of `spec` (None: unchanged), with that mesh and
  the logical axis rules active for the block. Raises ShardingError (a ValueError) for a mesh that
  does not fit the devices."""
  if not spec:
    yield loaded
    return
  mesh = mesh_lib.make_mesh(parse_mesh(spec))
  params = jax.device_put(loaded.params, mesh_lib.logical_shardings(llama.param_shapes(loaded.cfg), mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
    yield dataclasses.replace(loaded, params=params)  # the same weights: weights_digest still holds
