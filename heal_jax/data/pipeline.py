"""The Grain training pipeline: per-source shuffle -> weighted mix -> split -> pack -> batch -> shard.

Each source is a random-access source (`Source`) of encoded examples `{"tokens": int32[n],
"loss_mask": int32[n]}` (tokenized online from raw files, or read from `heal-jax data prepare`
output). For one data shard:

  `MixSplit`: each source read as one endless stream, epoch after epoch of a seeded permutation
     (a new one every epoch), of which this shard takes every num_shards-th element; split
     examples longer than seq_len into windows of seq_len that overlap by one token (that token is
     context of the next window, a target of the previous one: every token is a target exactly
     once, nothing is dropped); mix the sources by weight (weights are token shares)
  -> first-fit pack into the rows_per_shard rows of a batch, with segment ids (0 = padding) and
     positions restarting at 0 for each document; an example that fits no row may wait for the next
     batch while later ones fill the gaps (`heal_jax.data.packing.PackBatch`).

A global batch is the concatenation of `num_shards` shard batches in shard order; process p of P
builds only shards [p*S/P, (p+1)*S/P), so it reads exactly its rows of every global batch. With
`num_shards` fixed in the config, a run on any number of processes (dividing it) sees the same
global batches. The iterator state (one Grain state per shard) is a JSON-able dict saved with
every checkpoint; restoring it continues with exactly the batch an uninterrupted run would produce.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from typing import Any, Iterator, Mapping, Protocol, Sequence

import grain
import numpy as np

from heal_jax.data import examples
from heal_jax.data.packing import PackBatch
from heal_jax.data.permutation import permuted_indices

BATCH_KEYS = ("tokens", "segment_ids", "positions", "loss_mask", "source")


class Source(Protocol):
  """A random-access source of encoded examples (Grain's RandomAccessDataSource protocol; a
  `grain.MapDataset` is one too): source[i] = {"tokens": int[n], "loss_mask": int[n]}."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> Mapping[str, np.ndarray]: ...


class Slice:
  """source[start:stop] as a random-access source (picklable when the source is)."""

  def __init__(self, source: Source, start: int, stop: int):
    if not 0 <= start <= stop <= len(source):
      raise ValueError(f"slice [{start}:{stop}] out of a source of {len(source)} examples")
    self._source, self._start, self._stop = source, start, stop

  def __len__(self) -> int:
    return self._stop - self._start

  def __getitem__(self, index: int) -> Mapping[str, np.ndarray]:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of a slice of {len(self)} examples")
    return self._source[self._start + index]


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
  """What a phase asks of the pipeline.

  seq_len: row length L. global_batch: rows B of every global batch (divisible by num_shards).
  weights: source name -> mixing weight (> 0; sources not named are not read in this phase).
  instruction_tuning: True keeps each example's loss mask (loss on responses only); False makes
    every token after BOS a target (continued pretraining on instruction text as documents).
  seed: shuffle and packing seed. num_shards: shards S of every global batch.
  worker_count: Grain worker processes per host (0: in process).
  pack_defer: a batch closes when more than pack_defer examples fit none of its rows (they wait for
    the next batch while later ones fill the gaps: `PackBatch`; 0: it closes at the first).
  records: how the examples were made from the records (normalisation and dedup settings, as JSON):
    part of the data state, so a resume with other settings (other examples at the same positions,
    even in equal numbers) is refused.
  """
  seq_len: int
  global_batch: int
  weights: Mapping[str, float]
  instruction_tuning: bool = True
  seed: int = 0
  num_shards: int = 1
  worker_count: int = 0
  records: str = ""
  pack_defer: int = 0

  def __post_init__(self):
    if self.global_batch % self.num_shards:
      raise ValueError(f"global batch {self.global_batch} is not divisible by data.num_shards={self.num_shards}")
    if self.pack_defer < 0:
      raise ValueError(f"pack_defer must be >= 0, got {self.pack_defer}")
    if not self.weights or any(w <= 0 for w in self.weights.values()):
      raise ValueError(f"mixture weights must be positive, got {dict(self.weights)}")


def split_example(example: Mapping[str, np.ndarray], seq_len: int) -> list[dict[str, np.ndarray]]:
  """Windows of at most `seq_len` tokens with stride seq_len - 1 (see the module docstring).

  The first token of every window after the first is context only (its loss mask is 0).
  """
  n = len(example["tokens"])
  if n <= seq_len:
    return [dict(example)]
  windows = []
  for start in range(0, n - 1, seq_len - 1):
    window = {k: np.array(v[start:start + seq_len]) for k, v in example.items()}
    if start:
      window["loss_mask"][0] = 0
    windows.append(window)
  return windows


def overlong_examples(source: Source, seq_len: int, sample: int = 512) -> tuple[int, int, int]:
  """(examples longer than seq_len, examples looked at, longest length) among `sample` evenly spaced
  examples of `source` (all of them when it has no more). Reads (and tokenizes) those examples."""
  n = len(source)
  indices = np.unique(np.linspace(0, n - 1, min(n, sample)).astype(np.int64)) if n else []
  lengths = [len(source[int(i)]["tokens"]) for i in indices]
  return sum(length > seq_len for length in lengths), len(lengths), max(lengths, default=0)


class MixSplit(grain.IterDataset):
  """One data shard's endless weighted mix of shuffled examples, each split to <= seq_len tokens.

  Fused in one iterator over the raw random-access sources (Grain's per-stage iterators and per-read
  stats cost more than tokenizing here).

  Order: a source of N examples is one endless stream whose position g holds example
  `permuted_indices(g % N, N, seed, g // N)` (heal_jax.data.permutation: a new permutation every
  epoch, computed per index, so nothing of size N is held). This reader takes positions offset,
  offset + stride, offset + 2 * stride, ... (offset = shard, stride = num_shards; Grain worker
  processes narrow them further through `set_slice`). So the readers of a run share every epoch:
  each example is read once per epoch, by one of them, and a source smaller than the number of
  readers is still read whole. Readers move through the stream at rates set by their document
  lengths, so counts of reads agree up to that drift (one reader may be a few examples into the
  next epoch while another finishes this one, and one example can then appear twice in a global
  batch); with per-reader subsets (before 2026-11-27), 67 examples over 32 readers of 2 or 3 each
  were read 1.5x as often in one subset as in another, however long the run.

  Each example gets the loss-mask policy, is split (`split_example`) and its windows are tagged with
  the source id. Mixing is deterministic and counts tokens: the next window comes from the source
  whose tokens emitted, plus one virtual window of seq_len, are fewest per unit of weight (ties to
  the lowest index; the virtual window keeps a source of tiny weight from being read first), so in
  every prefix of the stream a source is within a few windows of its weight's share of the tokens
  (at most about seq_len tokens plus one window ahead, k - 1 windows behind, for k sources), however
  long its documents are. An empty window counts as one token, so a source of empty examples cannot
  be picked forever.

  Elements: {"tokens": int32[n], "loss_mask": int32[n], "source": int}.
  State: per source, tokens emitted, examples read, and windows already taken from the last one.
  """

  def __init__(self, sources: Sequence[Source], weights: Sequence[float], source_ids: Sequence[int],
               seeds: Sequence[int], seq_len: int, keep_mask: bool, offset: int = 0, stride: int = 1):
    super().__init__()
    self.sources, self.weights, self.source_ids = list(sources), list(weights), list(source_ids)
    self.seeds, self.seq_len, self.keep_mask = list(seeds), seq_len, keep_mask
    self.offset, self.stride = offset, stride

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    """Reads only [sl] of this reader's stream positions, in every source (Grain's in-place slicing
    of a worker process's copy)."""
    if sequential_slice or sl.stop is not None or (sl.step or 1) < 1:
      raise ValueError(f"MixSplit supports strided slices [start::step] only, got {sl} "
                       f"(sequential={sequential_slice})")
    self.offset += self.stride * (sl.start or 0)
    self.stride *= sl.step or 1

  def __iter__(self):
    return _MixSplitIterator(self)


_BLOCK = 4096  # stream positions of a source whose examples are computed at once


class _MixSplitIterator(grain.DatasetIterator):

  def __init__(self, ds: MixSplit):
    super().__init__()
    self._ds = ds
    for i, s in enumerate(ds.sources):
      if not len(s):
        raise ValueError(f"source {ds.source_ids[i]} has no examples")
    n = len(ds.sources)
    self._tokens, self._reads, self._taken = [0] * n, [0] * n, [0] * n
    self._pending = [[] for _ in range(n)]
    self._blocks = [(0, np.zeros(0, np.int64))] * n  # per source: (first read k, example indices)

  def _example(self, i: int, k: int) -> int:
    """Index into source i of this reader's k-th example (stream positions computed _BLOCK at a time)."""
    start, block = self._blocks[i]
    if not start <= k < start + len(block):
      ds, n = self._ds, len(self._ds.sources[i])
      g = ds.offset + ds.stride * np.arange(k, k + _BLOCK, dtype=np.int64)
      block = permuted_indices(g % n, n, ds.seeds[i], g // n)
      start = k
      self._blocks[i] = (start, block)
    return int(block[k - start])

  def _windows(self, i: int, k: int) -> list[dict]:
    """The windows of this reader's k-th example of source i."""
    ds = self._ds
    element = ds.sources[i][self._example(i, k)]
    tokens = np.asarray(element["tokens"], np.int32)
    if ds.keep_mask:
      mask = np.asarray(element["loss_mask"], np.int32)
    else:  # every token after BOS is a target
      mask = np.ones(len(tokens), np.int32)
      mask[:1] = 0
    windows = split_example({"tokens": tokens, "loss_mask": mask}, ds.seq_len)
    for w in windows:
      w["source"] = ds.source_ids[i]
    return windows

  def __next__(self) -> dict:
    w = self._ds.weights
    virtual = self._ds.seq_len
    i = min(range(len(w)), key=lambda j: ((self._tokens[j] + virtual) / w[j], j))
    if not self._pending[i]:
      self._pending[i] = self._windows(i, self._reads[i])
      self._reads[i] += 1
    window = self._pending[i].pop(0)
    self._taken[i] = self._taken[i] + 1 if self._pending[i] else 0
    self._tokens[i] += max(len(window["tokens"]), 1)
    return window

  def get_state(self) -> dict:
    return {"tokens": list(self._tokens), "reads": list(self._reads), "taken": list(self._taken)}

  def set_state(self, state):
    self._tokens, self._reads, self._taken = (list(state[k]) for k in ("tokens", "reads", "taken"))
    self._pending = [self._windows(i, self._reads[i] - 1)[taken:] if taken else []
                     for i, taken in enumerate(self._taken)]


_NEVER_SHARED_MEMORY = 1 << 62  # Grain's min_shm_size: arrays under it are copied, not shared


def shard_dataset(sources: Mapping[str, Source], source_names: list[str], spec: PipelineSpec,
                  shard: int) -> grain.IterDataset:
  """One shard's stream of batches [rows_per_shard, seq_len] (keys `BATCH_KEYS`)."""
  parts, weights, ids = [], [], []
  for name, weight in sorted(spec.weights.items()):  # by name: the state is positional, the spec key sorted
    if name not in sources:
      raise ValueError(f"mixture weight for unknown source {name!r}; sources: {sorted(sources)}")
    if not len(sources[name]):
      raise ValueError(f"source {name!r} has no examples")
    parts.append(sources[name])
    weights.append(float(weight))
    ids.append(source_names.index(name))
  mixed = MixSplit(parts, weights, ids, [spec.seed + 7919 * i for i in ids], spec.seq_len,
                   keep_mask=spec.instruction_tuning, offset=shard, stride=spec.num_shards)
  batched = PackBatch(mixed, spec.seq_len, spec.global_batch // spec.num_shards, spec.pack_defer)
  if spec.worker_count > 0:
    from absl import flags  # pylint: disable=import-outside-toplevel
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; we are not an absl app
      flags.FLAGS.mark_as_parsed()
    # Batches come back pickled through the worker's queue, not in shared memory: a few MB a step at
    # most, and shared-memory blocks still in flight when the iterator is dropped outlived it (left to
    # the resource tracker, a "leaked shared_memory" warning at exit; after a SIGKILL, in /dev/shm).
    batched = grain.experimental.WithOptionsIterDataset(
        batched, grain.experimental.DatasetOptions(min_shm_size=_NEVER_SHARED_MEMORY))
    batched = batched.mp_prefetch(grain.MultiprocessingOptions(num_workers=spec.worker_count),
                                  worker_init_fn=_die_with_parent)
  return batched


def _die_with_parent(worker_index: int, worker_count: int) -> None:
  """Grain worker start-up: on Linux the worker gets SIGKILL when the process that started it dies,
  however it dies (a SIGKILLed trainer used to leave its workers running for minutes)."""
  del worker_index, worker_count
  if not sys.platform.startswith("linux"):
    return
  import ctypes  # pylint: disable=import-outside-toplevel
  pr_set_pdeathsig = 1
  ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
  if os.getppid() == 1:  # the parent died before the line above
    os.kill(os.getpid(), signal.SIGKILL)


class StateMismatch(ValueError):
  """A saved data state that belongs to another pipeline (spec or shards differ); `changed`: the
  differing `PipelineSpec` fields (and "examples")."""

  def __init__(self, message: str, changed: tuple[str, ...] = ()):
    super().__init__(message)
    self.changed = changed


class BatchIterator:
  """This process's rows of every global batch: dict of int32 numpy arrays [B / P, L].

  Keys: tokens, segment_ids (0 = padding), positions, loss_mask (1 = the token is a target,
  predicted from the token before it in the same segment), source (index into `source_names`, -1
  for padding).
  """

  def __init__(self, sources: Mapping[str, Source], spec: PipelineSpec,
               process_index: int = 0, process_count: int = 1):
    if spec.num_shards % process_count:
      raise ValueError(f"data.num_shards={spec.num_shards} is not divisible by the process count {process_count}")
    self.spec = spec
    self.source_names = sorted(sources)
    per = spec.num_shards // process_count
    self.shards = list(range(process_index * per, (process_index + 1) * per))
    self._examples = {name: len(sources[name]) for name in sorted(spec.weights)}  # what the state indexes
    self._iters = [iter(shard_dataset(sources, self.source_names, spec, s)) for s in self.shards]

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def close(self) -> None:
    """Stops Grain's worker processes now (not when the iterator is garbage collected). Idempotent."""
    for it in self._iters:
      getattr(it, "close", lambda: None)()

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self._iters]
    return {k: np.concatenate([p[k] for p in parts]) for k in BATCH_KEYS}

  def _key(self) -> str:
    """The spec, and how many examples each mixed source has (a changed source or holdout would
    silently give other examples at the same stream positions)."""
    return json.dumps({**json.loads(_spec_key(self.spec)), "examples": self._examples}, sort_keys=True)

  def get_state(self) -> dict[str, Any]:
    """JSON-able state: the spec and source sizes it belongs to and one Grain state per shard."""
    return {"spec": self._key(), "shards": {str(s): it.get_state() for s, it in zip(self.shards, self._iters)}}

  def set_state(self, state: Mapping[str, Any]) -> None:
    saved, now = json.loads(state["spec"]), json.loads(self._key())
    for key in ("examples", "records"):  # saved before source sizes / record settings were recorded
      if key not in saved:
        now.pop(key)
    saved.setdefault("pack_defer", 0)  # saved before packing could defer an example: it packed as 0 does
    if saved != now:
      fields = tuple(k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
      changed = ", ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in fields)
      older = (" (fields missing from the saved state: it was written by an earlier heal-jax; to go on from its "
               "parameters, train in a new --workdir with --config.init_from=THIS_WORKDIR, which starts the "
               "optimizer state and the data afresh)") if set(now) - set(saved) else ""
      dedup = (" (examples: per source, after data.dedup and eval.holdout_examples; online runs deduplicate like "
               "`data prepare` since 2026-11-27: one started before resumes with --config.data.dedup.exact=false "
               "--config.data.dedup.near=false)") if {"examples", "records"} & set(fields) else ""
      raise StateMismatch(f"data iterator state belongs to a different pipeline ({changed}){older}; the order of "
                          f"the data depends on these, so a run resumes only with the same ones{dedup}", fields)
    for s, it in zip(self.shards, self._iters):
      if str(s) not in state["shards"]:
        raise StateMismatch(f"data iterator state has no shard {s}")
      it.set_state(state["shards"][str(s)])


def _spec_key(spec: PipelineSpec) -> str:
  d = dataclasses.asdict(spec)  # worker_count too: each Grain worker reads its own slice of the data
  d["weights"] = sorted(d["weights"].items())
  d["mixing"] = "tokens"  # states of heal-jax before 2026-11-27 mixed by windows: not resumable here
  d["order"] = "shared-stream"  # ... or read per-reader subsets of each source (until 2026-11-27)
  d["text_format"] = examples.TEXT_FORMAT  # conversations as written (until 2026-11-27)
  return json.dumps(d, sort_keys=True)


class EncodedTexts:
  """Random-access source of encoded (prompt, target) pairs, tokenized when read.

  Picklable (it holds the tokenizer's path, not the processor), so Grain workers can use it.
  """

  def __init__(self, pairs: list[tuple[str, str]], tokenizer_path: str):
    self._pairs = pairs
    self._tokenizer_path = str(tokenizer_path)
    self._tok = None

  def __len__(self) -> int:
    return len(self._pairs)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if self._tok is None:
      from heal_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
      self._tok = tokenizer_lib.Tokenizer(self._tokenizer_path)
    tokens, mask = examples.encode(self._tok, *self._pairs[index])
    return {"tokens": tokens, "loss_mask": mask}

  def __getstate__(self):
    return {"_pairs": self._pairs, "_tokenizer_path": self._tokenizer_path, "_tok": None}


def waiting_examples(state: Any) -> int:
  """Examples the packers of a `BatchIterator.get_state()` have read but not yet placed in a batch
  (`PackBatch`'s waiting ones), however Grain nests the shards' states (worker states are JSON text)."""
  if isinstance(state, str) and state.lstrip().startswith(("{", "[")):
    try:
      state = json.loads(state)
    except json.JSONDecodeError:
      return 0
  if isinstance(state, dict):
    return len(state.get("waiting", ())) + sum(waiting_examples(v) for k, v in state.items() if k != "waiting")
  if isinstance(state, (list, tuple)):
    return sum(waiting_examples(v) for v in state)
  return 0


def realised_token_shares(source_BxL: np.ndarray, loss_mask_BxL: np.ndarray,
                          num_sources: int) -> np.ndarray:
  """Fraction of target tokens from each source in a batch, float64 [num_sources] (sums to 1)."""
  counts = np.bincount(source_BxL[loss_mask_BxL > 0], minlength=num_sources).astype(np.float64)
  return counts / max(counts.sum(), 1.0)
