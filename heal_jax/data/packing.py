"""Packing examples into the rows of a batch: first fit, with examples that fit no row deferred.

An element is {"tokens": int32[n], "loss_mask": int32[n], "source": int} with n <= seq_len (the
pipeline's `MixSplit` splits longer examples); a batch is int32 arrays [rows, seq_len] under
`pipeline.BATCH_KEYS`, segment ids counting 1, 2, ... per row (0 = padding) and positions restarting
at 0 for each example.
"""

from __future__ import annotations

import grain
import numpy as np


class PackBatch(grain.IterDataset):
  """First-fit packing fused with batching: each batch is one packing round of `rows` rows.

  Examples (already at most seq_len tokens) go into the first row with room. One that fits in no row
  waits for the next round, and later examples go on filling the rows' gaps until more than `defer`
  examples wait; then the rows are emitted as a batch (at once if every row is full). A round first
  places the waiting examples: the oldest, which always fits an empty row, then the others longest
  first (first-fit decreasing: the short ones are left for the gaps). So none waits more than
  `defer` + 1 rounds and nothing is dropped. `defer=0` closes a round at the first example that fits
  no row. Numpy slice copies only, so it costs a few microseconds per example (Grain's
  FirstFitPackIterDataset costs ~0.35 us per token here).

  State, taken between batches: the parent's state and, for each waiting example, the parent's state
  before it; restoring re-reads those examples, so the next batch is exactly the uninterrupted one.
  The parent's `get_state` must return a new object each call (MixSplit's and Grain's do): the states
  of waiting examples are kept as returned, not copied, which would cost ~5 us per example read.
  """

  def __init__(self, parent: grain.IterDataset, seq_len: int, rows: int, defer: int = 0):
    super().__init__(parent)
    if defer < 0:
      raise ValueError(f"defer must be >= 0, got {defer}")
    self.seq_len, self.rows, self.defer = seq_len, rows, defer

  def __iter__(self):
    return _PackBatchIterator(self._parent.__iter__(), self.seq_len, self.rows, self.defer)


class _PackBatchIterator(grain.DatasetIterator):

  def __init__(self, parent, seq_len: int, rows: int, defer: int):
    super().__init__(parent)
    self._seq_len, self._rows, self._defer = seq_len, rows, defer
    self._waiting = []  # (parent state before it, element): read, fitted no row, not yet placed

  def _place(self, element, batch, fill, segments) -> bool:
    n = len(element["tokens"])
    if n > self._seq_len:
      raise ValueError(f"an example of {n} tokens does not fit a row of {self._seq_len}")
    room = self._seq_len - n
    r = next((r for r, f in enumerate(fill) if f <= room), None)
    if r is None:
      return False
    start = fill[r]
    segments[r] += 1
    batch["tokens"][r, start:start + n] = element["tokens"]
    batch["loss_mask"][r, start:start + n] = element["loss_mask"]
    batch["source"][r, start:start + n] = element["source"]
    batch["segment_ids"][r, start:start + n] = segments[r]
    batch["positions"][r, start:start + n] = np.arange(n, dtype=np.int32)
    fill[r] += n
    return True

  def __next__(self):
    shape = (self._rows, self._seq_len)
    batch = {k: np.zeros(shape, np.int32) for k in ("tokens", "segment_ids", "positions", "loss_mask")}
    batch["source"] = np.full(shape, -1, np.int32)
    fill, segments = [0] * self._rows, [0] * self._rows
    waiting = self._waiting  # oldest first
    order = [0] + sorted(range(1, len(waiting)), key=lambda i: -len(waiting[i][1]["tokens"])) if waiting else []
    placed = {i for i in order if self._place(waiting[i][1], batch, fill, segments)}
    self._waiting = [w for i, w in enumerate(waiting) if i not in placed]
    while len(self._waiting) <= self._defer and min(fill) < self._seq_len:
      state = self._parent.get_state()
      element = next(self._parent)
      if not self._place(element, batch, fill, segments):
        self._waiting.append((state, element))
    return batch

  def get_state(self):
    return {"parent": self._parent.get_state(), "waiting": [state for state, _ in self._waiting]}

  def set_state(self, state):
    self._waiting = []
    if "placed" in state:  # heal-jax before 2026-11-29: the state before the next batch's first example
      if state["placed"]:
        raise ValueError(f"packing state {state} was taken inside a batch; states are saved between batches")
      self._parent.set_state(state["parent"])
      return
    for before in state["waiting"]:
      self._parent.set_state(before)
      self._waiting.append((before, next(self._parent)))
    self._parent.set_state(state["parent"])
