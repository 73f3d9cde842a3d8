"""The device mesh (data, fsdp, tensor) and the rules that map logical axis names onto it.

Parameters carry logical axis names (heal_jax/model/llama.py); these rules say where each lands:

  parameter axis   mesh axes      activation axis   mesh axes
  vocab            tensor         batch             (data, fsdp)
  embed            fsdp           data_batch        data   (the embedding lookup's output)
                                  act_len           -
  q_heads          tensor         act_embed         -
  kv_heads         tensor         act_heads         tensor
  mlp              tensor         act_kv_heads      tensor
  head_dim, norm, layers  -       act_mlp, act_vocab tensor

So weights are split over fsdp (ZeRO-3 style: gathered per layer in the forward pass) and over
tensor (Megatron-style heads/MLP split); the batch is split over data x fsdp. A dimension that the
mesh axis does not divide is left unsplit on that axis, and `check_no_large_replicated` refuses a
start-up where a large parameter would end up fully replicated by mistake.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("batch", ("data", "fsdp")),
    ("data_batch", "data"),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_len", None),
)


class ShardingError(ValueError):
  """A mesh that does not fit the devices, or parameters that would be replicated by mistake."""


def mesh_shape(spec: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes; exactly one may be -1 and takes the devices left over."""
  sizes = [int(spec[a]) for a in AXES]
  if sizes.count(-1) > 1:
    raise ShardingError(f"mesh {dict(zip(AXES, sizes))}: at most one axis may be -1")
  bad = [f"{a}={s}" for a, s in zip(AXES, sizes) if s == 0 or s < -1]
  if bad:
    raise ShardingError(f"mesh {dict(zip(AXES, sizes))}: {', '.join(bad)}; each axis is >= 1, or -1 for the "
                        "devices left over")
  known = int(np.prod([s for s in sizes if s != -1]))
  if num_devices % known:
    raise ShardingError(f"mesh {dict(zip(AXES, sizes))} does not fit {num_devices} devices")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != num_devices:
    raise ShardingError(f"mesh {dict(zip(AXES, sizes))} uses {int(np.prod(sizes))} devices, "
                        f"{num_devices} are present")
  return tuple(sizes)


def make_mesh(spec: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh over `devices` (default: all) with axes data, fsdp, tensor in Auto mode."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(spec, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _divisible_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops the mesh axes of a dimension they do not divide (e.g. 8 KV heads on tensor=16)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    out.append(axes if size > 1 and dim % size == 0 else None)
  return P(*out)


def logical_shardings(boxed_shapes: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree of boxed (nn.Partitioned) arrays or ShapeDtypeStructs."""
  specs = nn.get_partition_spec(boxed_shapes)
  mesh_specs = nn.logical_to_mesh(specs, LOGICAL_RULES)
  shapes = nn.unbox(boxed_shapes)
  return jax.tree.map(lambda s, x: NamedSharding(mesh, _divisible_spec(s, x.shape, mesh)),
                      mesh_specs, shapes, is_leaf=lambda s: isinstance(s, P))


def check_no_large_replicated(shapes: Any, shardings: Any, max_replicated_elements: int) -> None:
  """Raises ShardingError naming the first parameter above the limit that no mesh axis splits, on a mesh
  of more than one device (data parallelism alone included: it copies every parameter to every device).
  A single device holds each parameter once, and nothing is refused."""
  flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
  flat_shardings = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  if flat_shardings and flat_shardings[0].mesh.size == 1:  # (every parameter's sharding is on the one mesh)
    return
  for (path, shape), sharding in zip(flat_shapes, flat_shardings):
    splits = int(np.prod([sharding.mesh.shape[a] for axes in sharding.spec if axes
                          for a in ((axes,) if isinstance(axes, str) else axes)]))
    size = int(np.prod(shape.shape))
    if splits == 1 and size > max_replicated_elements:
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      model_split = sharding.mesh.shape.get("fsdp", 1) * sharding.mesh.shape.get("tensor", 1) > 1
      raise ShardingError(
          f"parameter {name} {list(shape.shape)} ({size:,} elements) would be replicated on every device of "
          f"mesh {dict(sharding.mesh.shape)}: " + (
              "no mesh axis divides its dimensions. Change the mesh" if model_split else
              "fsdp and tensor are 1, so no axis splits parameters (data parallelism alone copies them all). Set "
              "mesh.fsdp (or mesh.tensor)") + " or raise mesh.max_replicated_elements")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a [B, L] batch split over data x fsdp."""
  return NamedSharding(mesh, P(("data", "fsdp"), None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def place_rows(array: np.ndarray, sharding: NamedSharding | None) -> np.ndarray | jax.Array:
  """`array` [B, ...] (the whole batch, the same on every process) as a global array whose rows are
  split as `sharding` (a `batch_sharding`) splits them, each process filling its own devices: what a
  jitted call over a mesh of several processes needs. Unchanged without a sharding."""
  if sharding is None:
    return array
  rows = NamedSharding(sharding.mesh, P(sharding.spec[0], *[None] * (array.ndim - 1)))
  return jax.make_array_from_callback(array.shape, rows, lambda index: array[index])


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of `x` as numpy on every process, gathered from the other processes where this one
  holds only part of it (then every process must call this for the same arrays, in the same order)."""
  whole = x.is_fully_addressable or x.is_fully_replicated
  return np.asarray(x if whole else multihost_utils.process_allgather(x, tiled=True))
