"""Draft tokens for prompt-lookup speculative decoding: guess a row's next tokens from its own text.

A SOAP note repeats much of its conversation (names, drugs, doses, findings), and a greedy model that
falls into a loop repeats itself. So the tokens that followed the latest earlier occurrence of a row's
last n tokens are a cheap guess at what comes next; the model checks all the guesses of a step in one
forward pass (`decode`), and every token it keeps is the one greedy decoding would have picked.

The rule, per row, over its tokens so far x[lo:end] (prompt and new tokens; x[end-1] the newest):
- for n = max_ngram down to 1, look for the latest i >= lo with x[i:i+n] == x[end-n:end] and
  i + n <= end - 1 (the occurrence is followed by at least one known token); the largest n that has
  one wins;
- the draft copies from start = i + n on, and, like an LZ77 copy whose source overlaps its output,
  continues into the tokens it is proposing: draft[j] = x[start + j mod (end - start)], so a loop
  of period d = end - start is continued as a loop;
- with no match of any length the draft repeats the newest token.
Matching the latest occurrence puts the copy's source as near as possible to what is being written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def propose(hist_BxT: jax.Array, lo_B: jax.Array, end_B: jax.Array, num_draft: int,
            max_ngram: int) -> jax.Array:
  """Draft tokens_BxK (K = num_draft, int32) by the rule in the module docstring.

  hist_BxT: int32 token ids; row b's text is hist_BxT[b, lo_B[b]:end_B[b]] (anything outside is
    ignored). lo_B, end_B: int32 with 0 <= lo < end <= T.
  max_ngram: the longest suffix matched (>= 1).
  """
  if num_draft < 1 or max_ngram < 1:
    raise ValueError(f"num_draft and max_ngram must be >= 1, got {num_draft} and {max_ngram}")
  t = hist_BxT.shape[1]
  start_B = end_B - 1  # no match: repeat the newest token (period 1)
  for n in range(1, max_ngram + 1):  # a longer match overrides a shorter one
    if n >= t:
      break
    key_Bxn = jnp.take_along_axis(hist_BxT, jnp.clip(end_B[:, None] - n + jnp.arange(n), 0, t - 1), axis=1)
    i_I = jnp.arange(t - n + 1, dtype=jnp.int32)
    match_BxI = jnp.ones((hist_BxT.shape[0], t - n + 1), bool)
    for j in range(n):
      match_BxI &= hist_BxT[:, j:j + t - n + 1] == key_Bxn[:, j:j + 1]
    match_BxI &= (i_I[None] >= lo_B[:, None]) & (i_I[None] + n <= end_B[:, None] - 1)
    latest_B = jnp.max(jnp.where(match_BxI, i_I[None], -1), axis=1)
    start_B = jnp.where(latest_B >= 0, latest_B + n, start_B)
  period_B = end_B - start_B
  take_BxK = start_B[:, None] + jnp.arange(num_draft, dtype=jnp.int32)[None] % period_B[:, None]
  return jnp.take_along_axis(hist_BxT, take_BxK, axis=1)
