"""Draft tokens of prompt-lookup decoding against a plain-Python statement of the rule."""

import jax.numpy as jnp
import numpy as np
import pytest

from heal_jax.infer import ngram_draft


def reference_draft(tokens: list[int], num_draft: int, max_ngram: int) -> list[int]:
  """The module docstring's rule, one row, written as loops: the latest earlier occurrence of the
  longest matching suffix (<= max_ngram), then an overlapping copy from just after it."""
  end = len(tokens)
  for n in range(max_ngram, 0, -1):
    for i in range(end - n - 1, -1, -1):  # i + n <= end - 1
      if tokens[i:i + n] == tokens[end - n:]:
        out = list(tokens)
        for j in range(num_draft):
          out.append(out[i + n + j])
        return out[end:]
  return [tokens[-1]] * num_draft


def test_hand_computed_drafts():
  # "a b c a b" -> suffix "a b" was at 0, followed by "c a b": a period-3 copy.
  assert reference_draft([7, 8, 9, 7, 8], 5, 2) == [9, 7, 8, 9, 7]
  # a constant run continues itself; no match at all repeats the newest token.
  assert reference_draft([3, 5, 5, 5], 3, 2) == [5, 5, 5]
  assert reference_draft([1, 2, 3, 4], 3, 2) == [4, 4, 4]
  # the longer suffix wins over a later single-token match: "4 6" was followed by 1, "6" last by 2.
  assert reference_draft([4, 6, 1, 6, 2, 4, 6], 2, 2) == [1, 6]
  assert reference_draft([4, 6, 1, 6, 2, 4, 6], 2, 1) == [2, 4]


@pytest.mark.parametrize("max_ngram", [1, 2, 3])
def test_propose_equals_the_reference_on_random_rows(max_ngram):
  rng = np.random.RandomState(max_ngram)
  width, rows, k = 40, 64, 5
  hist = rng.randint(0, 4, (rows, width)).astype(np.int32)  # a small alphabet: many matches
  lo = rng.randint(0, 10, rows).astype(np.int32)
  end = np.minimum(lo + rng.randint(1, width, rows), width).astype(np.int32)
  got = np.asarray(ngram_draft.propose(jnp.asarray(hist), jnp.asarray(lo), jnp.asarray(end), k, max_ngram))
  for b in range(rows):
    assert got[b].tolist() == reference_draft(hist[b, lo[b]:end[b]].tolist(), k, max_ngram), b


def test_tokens_outside_the_row_are_ignored():
  """Text before lo (padding) and from end on (rejected drafts of earlier steps) never match."""
  hist = jnp.asarray([[5, 6, 9, 9, 1, 5, 6, 5, 6, 2, 2]], jnp.int32)
  # row = [1, 5, 6, 5, 6] (lo 4, end 9); suffix "5 6" last at 5 (followed by "5 6"), not at 0.
  got = ngram_draft.propose(hist, jnp.asarray([4]), jnp.asarray([9]), 3, 2)
  assert got.tolist() == [[5, 6, 5]] == [reference_draft([1, 5, 6, 5, 6], 3, 2)]
  got = ngram_draft.propose(hist, jnp.asarray([4]), jnp.asarray([6]), 3, 2)  # [1, 5]: no match
  assert got.tolist() == [[5, 5, 5]]


def test_bad_sizes_are_refused():
  with pytest.raises(ValueError, match="num_draft and max_ngram"):
    ngram_draft.propose(jnp.zeros((1, 4), jnp.int32), jnp.zeros(1, jnp.int32), jnp.ones(1, jnp.int32), 0, 2)
