"""Per-epoch shuffles of a source of n examples, computed per index (nothing of size n is held).

`permuted_indices(j, n, seed, epoch)` is element j of a pseudo-random permutation of range(n), a new
one for every (seed, epoch): the training pipeline reads position g of a source's endless stream as
example `permuted_indices(g % n, n, seed, g // n)`.
"""

from __future__ import annotations

import functools

import numpy as np

_M64 = (1 << 64) - 1


def _mix64(x):
  """splitmix64's finalizer, a bijective scramble of 64-bit integers: Python ints or uint64 arrays."""
  if isinstance(x, np.ndarray):
    x = x + np.uint64(0x9E3779B97F4A7C15)  # uint64 arrays wrap mod 2^64
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
  x = (x + 0x9E3779B97F4A7C15) & _M64
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
  return x ^ (x >> 31)


@functools.lru_cache(maxsize=64)
def _round_keys(seed: int, epoch: int) -> tuple[int, ...]:
  return tuple(_mix64((seed & _M64) ^ _mix64((epoch & _M64) ^ _mix64(r + 1))) for r in range(4))


def permuted_indices(j: np.ndarray, n: int, seed: int, epoch: np.ndarray) -> np.ndarray:
  """Elements j of pseudo-random permutations of range(n), one per (seed, epoch): int64 array.

  j, epoch: int arrays of one shape, 0 <= j < n. A 4-round Feistel network on the smallest domain of
  2^(2h) >= n indices (h bits per half) with round keys from (seed, epoch), walked until the value
  falls below n (fewer than 4 passes of the network on average): a bijection of range(n) for each
  epoch, computed per index (nothing of size n), vectorized over the array.
  """
  j, epoch = np.asarray(j, np.int64), np.asarray(epoch, np.int64)
  if j.size and not (0 <= j.min() and j.max() < n):
    raise IndexError(f"indices outside range({n})")
  h = max(1, ((n - 1).bit_length() + 1) // 2)
  mask, shift = np.uint64((1 << h) - 1), np.uint64(h)
  epochs, which = np.unique(epoch, return_inverse=True)
  keys = np.array([_round_keys(seed, int(e)) for e in epochs], np.uint64)[which.reshape(-1)]  # [size, 4]
  x = j.reshape(-1).astype(np.uint64)
  todo = np.arange(x.size)
  while todo.size:
    left, right = x[todo] >> shift, x[todo] & mask
    for r in range(4):
      left, right = right, left ^ (_mix64(right ^ keys[todo, r]) & mask)
    x[todo] = (left << shift) | right
    todo = todo[x[todo] >= np.uint64(n)]
  return x.astype(np.int64).reshape(j.shape)


def permuted_index(j: int, n: int, seed: int, epoch: int) -> int:
  """`permuted_indices` of one index."""
  if not 0 <= j < n:
    raise IndexError(f"index {j} is outside range({n})")
  return int(permuted_indices(np.array([j]), n, seed, np.array([epoch]))[0])
