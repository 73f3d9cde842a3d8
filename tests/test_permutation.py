"""Per-epoch permutations: bijections of range(n), new per (seed, epoch), equal to the documented
network computed with Python integers one index at a time."""

from __future__ import annotations

import numpy as np
import pytest

from heal_jax.data import permutation


def _mix64_reference(x: int) -> int:
  x = (x + 0x9E3779B97F4A7C15) % 2**64
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
  return x ^ (x >> 31)


def _permuted_index_reference(j: int, n: int, seed: int, epoch: int) -> int:
  """The documented network with Python integers, one index at a time."""
  h = max(1, ((n - 1).bit_length() + 1) // 2)
  keys = [_mix64_reference(seed ^ _mix64_reference(epoch ^ _mix64_reference(r + 1))) for r in range(4)]
  x = j
  while True:
    left, right = x >> h, x % 2**h
    for key in keys:
      left, right = right, left ^ (_mix64_reference(right ^ key) % 2**h)
    x = (left << h) | right
    if x < n:
      return x


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 65, 1000, 4099])
def test_permuted_indices_are_a_permutation_new_every_epoch(n):
  j = np.tile(np.arange(n), 3)
  epochs = np.repeat([0, 1, 5], n)
  got = permutation.permuted_indices(j, n, 3, epochs).reshape(3, n)
  for order in got:
    assert sorted(order.tolist()) == list(range(n))
  if n >= 7:
    other_seed = permutation.permuted_indices(np.arange(n), n, 4, np.zeros(n, int))
    assert got[0].tolist() != got[1].tolist() and got[0].tolist() != other_seed.tolist()
  picks = np.random.default_rng(n).integers(0, 3 * n, 20)
  expected = [_permuted_index_reference(int(j[p]), n, 3, int(epochs[p])) for p in picks]
  assert [int(got.reshape(-1)[p]) for p in picks] == expected
  assert permutation.permuted_index(n - 1, n, 3, 5) == int(got[2, n - 1])
  with pytest.raises(IndexError):
    permutation.permuted_index(n, n, 3, 0)
