"""Packing: first fit, deferral of examples that fit no row (hand-worked cases), conservation, resume."""

from __future__ import annotations

import grain
import numpy as np

from heal_jax.data import packing, pipeline


def _length_stream(lengths: list[int]) -> grain.IterDataset:
  """Elements of the given lengths; element i's tokens are 100 * i + 0, 1, ... (its id is token // 100)."""
  items = [{"tokens": (100 * i + np.arange(n)).astype(np.int32), "loss_mask": np.ones(n, np.int32), "source": 0}
           for i, n in enumerate(lengths)]
  return grain.MapDataset.source(items).to_iter_dataset()


def _rows(batch: dict[str, np.ndarray]) -> list[list[int]]:
  """Per row, the ids of the elements in it, in row order."""
  out = []
  for seg, tok in zip(batch["segment_ids"], batch["tokens"]):
    out.append([int(tok[seg == s][0]) // 100 for s in range(1, seg.max() + 1)])
  return out


_LENGTHS = [9, 3, 2, 7, 1, 5, 3, 6, 6, 6, 6, 6, 6]


def test_packing_closes_at_the_first_misfit_without_deferral():
  """One row of 10, lengths 9, 3, 2, 7, 1, 5, 3, 6: [9] (3 does not fit), [3, 2] (7 does not), [7, 1], [5, 3]."""
  it = iter(packing.PackBatch(_length_stream(_LENGTHS), seq_len=10, rows=1, defer=0))
  assert [_rows(next(it)) for _ in range(4)] == [[[0]], [[1, 2]], [[3, 4]], [[5, 6]]]


def test_deferred_examples_wait_and_are_placed_oldest_then_longest_first():
  """Hand-worked, one row of 10, defer 3 (ids in brackets, lengths 9, 3, 2, 7, 1, 5, 3):
  round 1: 9 [0] in; 3 [1], 2 [2], 7 [3] fit no row and wait (3 waiting: not more than 3); 1 [4] fills the
  row: [0, 4]. Round 2: the oldest waiting, 3 [1], then the rest longest first: 7 [3] (row full at 10), 2 [2]
  waits again: [1, 3] (first-in-first-out would give 3 + 2 and leave 7 waiting). Round 3: 2 [2], then 5 [5],
  3 [6] fill it: [2, 5, 6]. 100% fill against 9/10, 5/10 and 8/10 without deferral."""
  it = iter(packing.PackBatch(_length_stream(_LENGTHS), seq_len=10, rows=1, defer=3))
  assert [_rows(next(it)) for _ in range(3)] == [[[0, 4]], [[1, 3]], [[2, 5, 6]]]
  two = iter(packing.PackBatch(_length_stream([7, 8, 9, 5, 2, 3, 4, 1, 6, 6]), seq_len=10, rows=2, defer=2))
  # rows first-fit: 7 -> row 0, 8 -> row 1, 9 and 5 wait, 2 -> row 0, 3 waits (3 > 2: the batch closes);
  # then 9 -> row 0, 5 -> row 1, 3 -> row 1, 4 waits, 1 -> row 0, 6 and 6 wait
  assert [_rows(next(two)) for _ in range(2)] == [[[0, 4], [1]], [[2, 7], [3, 5]]]


def _close_at_first_misfit(lengths: list[int], seq_len: int, rows: int, batches: int) -> list[list[list[int]]]:
  """The packer before deferral (heal-jax until 2026-11-29), written plainly: ids per row per batch."""
  out, i, pending = [], 0, None
  for _ in range(batches):
    fill, ids = [0] * rows, [[] for _ in range(rows)]
    while True:
      if pending is None:
        pending, i = i, i + 1
      r = next((r for r in range(rows) if fill[r] + lengths[pending] <= seq_len), None)
      if r is None:
        break
      fill[r] += lengths[pending]
      ids[r].append(pending)
      pending = None
    out.append(ids)
  return out


def test_without_deferral_the_batches_are_those_of_the_packer_before_it():
  lengths = [int(n) for n in np.random.default_rng(1).integers(1, 30, 3000)]
  it = iter(packing.PackBatch(_length_stream(lengths), seq_len=32, rows=3, defer=0))
  assert [_rows(next(it)) for _ in range(200)] == _close_at_first_misfit(lengths, 32, 3, 200)


def test_deferral_loses_and_repeats_nothing_and_every_state_resumes_exactly():
  """Short examples (1-3 tokens) among long ones (30-47): rows often fill exactly, so batches close both
  ways (more than `defer` waiting, or full rows with examples still waiting). Over 60 batches the packed
  examples and the waiting ones are exactly the examples read, each once; restoring any state between
  batches, into a new iterator or one that has run on, gives the uninterrupted run's next batches."""
  rng = np.random.default_rng(0)
  lengths = [int(rng.integers(1, 4)) if rng.random() < 0.7 else int(rng.integers(30, 48)) for _ in range(5000)]
  packer = packing.PackBatch(_length_stream(lengths), seq_len=48, rows=3, defer=6)
  it = iter(packer)
  states, batches = [], []
  for _ in range(60):
    states.append(it.get_state())
    batches.append(next(it))
  state = it.get_state()
  read = state["parent"]["next_index"]
  waiting = [s["next_index"] for s in state["waiting"]]  # the parent's state before each: its id
  packed = [i for b in batches for row in _rows(b) for i in row]
  assert sorted(packed + waiting) == list(range(read))
  closed_full = [s for s in states if s["waiting"] and s["parent"]["next_index"] != s["waiting"][-1]["next_index"] + 1]
  closed_waiting = [s for s in states if len(s["waiting"]) == 7]
  assert closed_full and closed_waiting, (len(closed_full), len(closed_waiting))
  used = iter(packer)
  for _ in range(5):
    next(used)
  for start in range(0, 60, 3):
    for resumed in (iter(packer), used):
      resumed.set_state(states[start])
      for expected in batches[start:start + 3]:
        got = next(resumed)
        assert all(np.array_equal(got[k], expected[k]) for k in pipeline.BATCH_KEYS), start
