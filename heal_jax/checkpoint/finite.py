"""Damage that reads without an error: NaN or Inf in stored weights.

A flipped exponent bit on disk, a bad copy or a diverged run elsewhere reads back as a perfectly
shaped array. The trainer's guard never saves a non-finite state, so every reader (resume,
initialisation, eval, generation, export, conversion) refuses one, naming the tensors. A flipped
mantissa bit stays finite and is not caught here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from heal_jax.checkpoint.errors import CheckpointError

_LISTED = 3


def _floating(tree: Any) -> list[tuple[str, Any]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [(jax.tree_util.keystr(p, simple=True, separator="/"), x) for p, x in leaves
          if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]


@jax.jit
def _count_nonfinite(arrays: list[jax.Array]) -> list[jax.Array]:
  # float32: a stacked 13B kernel has more than 2**31 values; counts above 2**24 are approximate.
  return [jnp.sum(~jnp.isfinite(x), dtype=jnp.float32) for x in arrays]


def nonfinite_counts(tree: Any) -> dict[str, int]:
  """{leaf path ("a/b/c"): number of NaN/Inf values} for each floating leaf of `tree` that has any.

  numpy leaves are counted on the host; jax arrays where they live (sharded arrays stay sharded, and
  every process gets the same counts).
  """
  leaves = _floating(tree)
  on_host = [(k, x) for k, x in leaves if not isinstance(x, jax.Array)]
  on_device = [(k, x) for k, x in leaves if isinstance(x, jax.Array)]
  counts = {k: int(np.count_nonzero(~np.isfinite(x))) for k, x in on_host}
  if on_device:
    device_counts = _count_nonfinite([x for _, x in on_device])
    counts.update({k: int(round(float(c))) for (k, _), c in zip(on_device, device_counts)})
  return {k: counts[k] for k, _ in leaves if counts[k]}  # in the tree's order


def require_finite(tree: Any, where: str, hint: str = "") -> None:
  """Raises CheckpointError naming `where` and the first leaves with NaN/Inf, if any has one."""
  bad = nonfinite_counts(tree)
  if not bad:
    return
  sizes = dict(_floating(tree))
  listed = ", ".join(f"{k} ({c:,} of {int(np.prod(sizes[k].shape)):,} {np.dtype(sizes[k].dtype).name} values)"
                     for k, c in list(bad.items())[:_LISTED])
  more = f" and {len(bad) - _LISTED} more tensors" if len(bad) > _LISTED else ""
  raise CheckpointError(f"{where} holds NaN/Inf in {listed}{more}: damaged data, or values beyond the range of "
                        "that dtype" + (f"; {hint}" if hint else ""))
