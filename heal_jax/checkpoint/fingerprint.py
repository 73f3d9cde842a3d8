"""Fingerprints of training checkpoints: damage that reads back finite (a flipped mantissa bit).

`finite` catches NaN/Inf; this catches any changed bit. Each array of the train state gets two
32-bit sums over its values' bit patterns (each value widened to uint32):

  plain  = sum(bits) mod 2^32                                (any single flipped bit changes it)
  hashed = sum(fmix32(bits ^ fmix32(flat_index))) mod 2^32   (values moved within the array change it,
           but for a chance of 2^-32; fmix32 is MurmurHash3's finalizer, a bijection of uint32)

Device arrays are summed where they live, by one jitted call (a sharded array stays sharded: each
device sums its block and the partial sums are added); host (numpy) arrays with NumPy, a chunk at a
time. Integer sums do not depend on the order of addition, so every process, mesh and backend gets
the same numbers. The trainer stores them in each checkpoint's meta; readers that restore an array
in its saved dtype recompute and compare (a cast on read, e.g. float32 weights read as bfloat16,
cannot be compared and is not). Leaves of 8-byte dtypes (none in a train state without x64) get no
fingerprint.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from heal_jax.checkpoint.errors import CheckpointError

_LISTED = 3


def _bits(x: jax.Array) -> jax.Array:
  """The values' bit patterns widened to uint32 (same shape)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
  """uint32 row-major flat index of every element, mod 2^32 (arrays may have more than 2^32)."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for d in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2**32)
    stride *= shape[d]
  return index


def _fmix32(x: jax.Array) -> jax.Array:
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


@jax.jit
def _sums(arrays: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
  """Whole device arrays. Scalar results only: a scalar is replicated, so every process holds it.
  (XLA:CPU keeps two uint32 temporaries of each array's size; GPU backends are expected to fuse the
  elementwise work into the reductions, not yet measured.)"""
  out = []
  for x in arrays:
    bits = _bits(x)
    out.append((jnp.sum(bits, dtype=jnp.uint32),
                jnp.sum(_fmix32(bits ^ _fmix32(_flat_index(x.shape))), dtype=jnp.uint32)))
  return out


_HOST_CHUNK = 1 << 22  # elements of a host array summed at once (16 MB of float32)
_U32 = np.uint32


def _fmix32_np(x: np.ndarray) -> np.ndarray:
  """`_fmix32` on a uint32 NumPy array (array arithmetic wraps mod 2^32)."""
  x = x ^ (x >> _U32(16))
  x = x * _U32(0x85EBCA6B)
  x = x ^ (x >> _U32(13))
  x = x * _U32(0xC2B2AE35)
  return x ^ (x >> _U32(16))


def _host_sums(x: np.ndarray) -> list[int]:
  """The two sums of a host array with NumPy, `_HOST_CHUNK` elements at a time (little memory
  beside the array; no jax backend needed)."""
  flat = np.ascontiguousarray(x).reshape(-1)
  unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[flat.dtype.itemsize]
  plain = hashed = 0
  for start in range(0, flat.size, _HOST_CHUNK):
    bits = flat[start:start + _HOST_CHUNK].view(unsigned).astype(np.uint32)
    index = ((np.arange(len(bits), dtype=np.uint64) + np.uint64(start)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    plain = (plain + int(bits.sum(dtype=np.uint64))) % 2**32
    hashed = (hashed + int(_fmix32_np(bits ^ _fmix32_np(index)).sum(dtype=np.uint64))) % 2**32
  return [plain, hashed]


def _leaves(tree: Any) -> list[tuple[str, Any]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [(jax.tree_util.keystr(p, simple=True, separator="/"), x) for p, x in leaves if hasattr(x, "dtype")]


def fingerprints(tree: Any) -> dict[str, list]:
  """{leaf path ("params/layers_0/..."): [dtype name, plain, hashed]} for every array leaf of 1-,
  2- or 4-byte values.

  jax arrays are summed where they are, all in one call; numpy leaves on the host with NumPy.
  """
  leaves = [(k, x) for k, x in _leaves(tree) if np.dtype(x.dtype).itemsize in (1, 2, 4)]
  on_device = [(k, x) for k, x in leaves if isinstance(x, jax.Array)]
  sums: dict[str, list[int]] = {}
  if on_device:
    pairs = _sums([x for _, x in on_device])
    sums.update({k: [int(np.asarray(s.addressable_data(0))) for s in pair] for (k, _), pair in zip(on_device, pairs)})
  for k, x in leaves:
    if k not in sums:
      sums[k] = _host_sums(np.asarray(x))
  return {k: [np.dtype(x.dtype).name, *sums[k]] for k, x in leaves}


def require_match(tree: Any, saved: Mapping[str, Any] | None, where: str, prefix: str = "",
                  hint: str = "") -> int:
  """Compares `tree`'s fingerprints with `saved` (from `fingerprints` of the tree it was read from).

  prefix: the path of `tree` inside the saved tree ("params/" for the params of a train state).
  Leaves absent from `saved` or read in another dtype are not compared; `saved` None (a checkpoint
  written before fingerprints) compares nothing. Returns the number of leaves compared; raises
  CheckpointError naming `where` and the first differing leaves.
  """
  if not saved:
    return 0
  now = fingerprints(tree)
  if now and not any(prefix + k in saved for k in now):  # a path format that changed would skip every check
    raise CheckpointError(f"{where}: none of its arrays (e.g. {prefix + next(iter(now))}) is among the "
                          f"{len(saved)} fingerprints saved with it (e.g. {next(iter(saved))})")
  compared = [k for k, v in now.items() if prefix + k in saved and saved[prefix + k][0] == v[0]]
  bad = [prefix + k for k in compared if list(saved[prefix + k]) != now[k]]
  if bad:
    more = f" and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
    raise CheckpointError(f"{where}: {', '.join(bad[:_LISTED])}{more} differ from the fingerprints saved with "
                          "the checkpoint: the data changed on disk after it was written"
                          + (f"; {hint}" if hint else ""))
  return len(compared)
