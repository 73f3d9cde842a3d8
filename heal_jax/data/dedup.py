"""Text normalisation and duplicate removal: exact (hash of the normalised text) and near (MinHash + LSH).

Normalisation. Preparation writes text in Unicode NFC (`normalize_text`): canonically equivalent
spellings ("e" + combining acute vs the precomposed "é") become one, and nothing else changes, so "m²"
or "µg" keep their meaning. Dedup keys (`dedup_key`) go further: NFKC (compatibility forms folded:
"ﬁ" -> "fi", full-width digits -> ASCII), case folded, and every whitespace run collapsed to one space,
so two records that differ only in case, spacing or Unicode spelling are exact duplicates.

Exact duplicates. A record whose key's BLAKE2b-128 digest was seen before is an "exact" duplicate.

Near duplicates. The key is split into words and each run of `shingle` consecutive words is one
shingle (a key with fewer words is one shingle). The Jaccard similarity of two records is |A ∩ B| /
|A ∪ B| over their shingle sets. MinHash estimates it: `num_perm` seeded hash functions
h_i(x) = ((a_i x + b_i) mod 2^64) >> 32 (multiply-shift, a_i odd) over 64-bit shingle hashes; a
record's signature is the per-function minimum, uint32[num_perm], and the fraction of equal signature
entries of two records is an unbiased estimate of their Jaccard similarity. LSH banding finds
candidates without comparing all pairs: the signature is cut into `bands` bands of r = num_perm / bands
rows, and two records are candidates when any band is equal, which happens with probability
1 - (1 - J^r)^bands for similarity J (defaults 16 bands x 8 rows: 0.06 at J=0.5, 0.24 at 0.6, 0.49 at
0.67, 0.95 at 0.8, 0.9999 at 0.9). A candidate is a "near" duplicate when its estimated similarity to an earlier kept
record is at least `threshold`.

So `threshold` is the estimated Jaccard similarity of word-shingle sets at or above which a record
is dropped: 0.8 with 5-word shingles drops a 200-word document with about two words changed per 100
(each changed word alters up to 5 shingles), and keeps documents that share only boilerplate.
Records are compared with those kept before them, in the order they are fed, so the first of a
group of duplicates is the one kept; with the same parameters, seed and order the decisions are
identical on every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any
import unicodedata

import numpy as np

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHINGLE_BASE = np.uint64(0x9E3779B97F4A7C15)
_MAX_ROWS = 4096  # shingles hashed per MinHash block, bounding memory at _MAX_ROWS x num_perm x 8 bytes


def normalize_text(text: str, form: str = "NFC") -> str:
  """`text` in Unicode normal form `form` (NFC for written text; see the module docstring)."""
  return unicodedata.normalize(form, text)


def dedup_key(text: str) -> str:
  """NFKC, case folded, whitespace runs collapsed to single spaces, stripped."""
  return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _splitmix(x_N: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser, uint64[N] -> uint64[N] (wrapping arithmetic)."""
  x_N = x_N ^ (x_N >> np.uint64(30))
  x_N = x_N * _MIX1
  x_N = x_N ^ (x_N >> np.uint64(27))
  x_N = x_N * _MIX2
  return x_N ^ (x_N >> np.uint64(31))


def _word_hash(word: str) -> int:
  return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def shingle_hashes(key: str, shingle: int) -> np.ndarray:
  """Distinct 64-bit hashes of the `shingle`-word shingles of `key`, uint64[S] (S = 0 for an empty key).

  Words are hashed with BLAKE2b (stable across processes, unlike `hash`), and a shingle's hash is a
  polynomial in its words' hashes, mixed with splitmix64; order within a shingle matters.
  """
  words = key.split()
  if not words:
    return np.zeros(0, np.uint64)
  ids: dict[str, int] = {}
  inverse_W = np.fromiter((ids.setdefault(w, len(ids)) for w in words), np.int64, len(words))
  word_W = np.fromiter((_word_hash(w) for w in ids), np.uint64, len(ids))[inverse_W]
  n = max(len(words) - shingle + 1, 1)
  acc_S = np.zeros(n, np.uint64)
  with np.errstate(over="ignore"):
    for j in range(min(shingle, len(words))):
      acc_S = acc_S * _SHINGLE_BASE + word_W[j:j + n]
    return np.unique(_splitmix(acc_S))


class MinHasher:
  """Seeded multiply-shift hash family; `signature` gives uint32[num_perm] per shingle set."""

  def __init__(self, num_perm: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.num_perm = num_perm
    self.a_P = rng.integers(0, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    self.b_P = rng.integers(0, 2**63, num_perm, dtype=np.uint64)

  def signature(self, hashes_S: np.ndarray) -> np.ndarray:
    """min over shingles of h_i(shingle) for every i, uint32[num_perm]; all 0xFFFFFFFF for S = 0."""
    sig_P = np.full(self.num_perm, np.iinfo(np.uint32).max, np.uint64)
    with np.errstate(over="ignore"):
      for start in range(0, len(hashes_S), _MAX_ROWS):
        x_S1 = hashes_S[start:start + _MAX_ROWS, None]
        h_SxP = (x_S1 * self.a_P[None, :] + self.b_P[None, :]) >> np.uint64(32)
        sig_P = np.minimum(sig_P, h_SxP.min(axis=0))
    return sig_P.astype(np.uint32)


@dataclasses.dataclass(frozen=True)
class Decision:
  """keep, or why not: reason "exact" | "near", the index (in feeding order) of the record it
  duplicates, and for "near" the estimated Jaccard similarity."""
  keep: bool
  reason: str | None = None
  duplicate_of: int | None = None
  similarity: float | None = None


class Deduplicator:
  """Feed texts in order with `add`; each is kept unless it duplicates a kept one (module docstring).

  Memory: a 16-byte digest per kept record, and with `near` its signature (4 x num_perm bytes) and
  `bands` bucket entries. `counts` = {"seen", "kept", "exact", "near"}; seen = kept + exact + near.
  """

  def __init__(self, exact: bool = True, near: bool = True, threshold: float = 0.8, num_perm: int = 128,
               bands: int = 16, shingle: int = 5, seed: int = 0):
    if not 0.0 < threshold <= 1.0:
      raise ValueError(f"data.dedup.threshold={threshold}: must be in (0, 1]")
    if num_perm <= 0 or bands <= 0 or num_perm % bands:
      raise ValueError(f"data.dedup.num_perm={num_perm} must be a positive multiple of data.dedup.bands={bands}")
    if shingle <= 0:
      raise ValueError(f"data.dedup.shingle={shingle}: must be positive")
    self.exact, self.near = exact, near
    self.threshold, self.bands, self.shingle = float(threshold), bands, shingle
    self.rows = num_perm // bands
    self.hasher = MinHasher(num_perm, seed)
    self.counts = {"seen": 0, "kept": 0, "exact": 0, "near": 0}
    self._digests: dict[bytes, int] = {}
    self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    self._signatures: dict[int, np.ndarray] = {}

  @classmethod
  def from_config(cls, dedup_cfg: Any, seed: int = 0) -> "Deduplicator":
    """From `config.data.dedup` (exact, near, threshold, num_perm, bands, shingle)."""
    return cls(exact=bool(dedup_cfg.exact), near=bool(dedup_cfg.near), threshold=float(dedup_cfg.threshold),
               num_perm=int(dedup_cfg.num_perm), bands=int(dedup_cfg.bands), shingle=int(dedup_cfg.shingle),
               seed=seed)

  def add(self, text: str) -> Decision:
    """Decides on the next text (index = counts["seen"] before the call) and remembers it if kept."""
    index = self.counts["seen"]
    self.counts["seen"] += 1
    key = dedup_key(text)
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
    if self.exact and digest in self._digests:
      self.counts["exact"] += 1
      return Decision(False, "exact", self._digests[digest], 1.0)
    band_keys = []
    if self.near:
      hashes_S = shingle_hashes(key, self.shingle)
      if len(hashes_S):
        sig_P = self.hasher.signature(hashes_S)
        band_keys = [sig_P[b * self.rows:(b + 1) * self.rows].tobytes() for b in range(self.bands)]
        candidates = sorted({c for b, k in enumerate(band_keys) for c in self._buckets[b].get(k, ())})
        if candidates:
          sims_C = (np.stack([self._signatures[c] for c in candidates]) == sig_P[None, :]).mean(axis=1)
          best = int(np.argmax(sims_C))
          if sims_C[best] >= self.threshold:
            self.counts["near"] += 1
            return Decision(False, "near", candidates[best], float(sims_C[best]))
        self._signatures[index] = sig_P
    self.counts["kept"] += 1
    self._digests.setdefault(digest, index)
    for b, k in enumerate(band_keys):
      self._buckets[b].setdefault(k, []).append(index)
    return Decision(True)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
  """Probability that two records with Jaccard `similarity` share at least one LSH band."""
  return 1.0 - (1.0 - similarity**rows) ** bands
