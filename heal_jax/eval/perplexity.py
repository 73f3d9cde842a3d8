"""Held-out perplexity: every text of a JSONL file scored on its own, BOS prepended.

Each text is encoded without special tokens and scored as lm-evaluation-harness's `loglikelihood_rolling`
does: the model predicts every token of the text, the first from BOS alone. A text longer than the
context (`max_length`, default the model's max_position_embeddings) is cut into consecutive windows of
`max_length` predicted tokens: the first window reads BOS + tokens[:max_length-1]; each later window
predicts the next (up to) max_length tokens reading the max_length tokens just before each of them (the
last, shorter window still reads a full max_length context). Every token is predicted exactly once, so
`tokens` is the total number of text tokens (BOS excluded).

Texts are encoded with our sentencepiece `Tokenizer`; for a text that starts with whitespace it yields one
"▁" more than the HF tokenizer the harness uses (see heal_jax.data.tokenizer), so such texts score slightly
differently from `lm_eval`.

Result: {"nll_per_token": -sum(log p) / tokens (token-weighted over all texts, in nats),
         "tokens": total tokens, "texts": number of texts, "rows": one per text in input order,
         {"index", "tokens", "nll" (sum, nats), "nll_per_token" (null for an empty text)}}; `heal-jax eval
         perplexity --output` adds each text's "line" in the file and its "id" field, where it has one. Empty texts
count as texts with 0 tokens; texts that are all empty are an error (nothing to score).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from heal_jax.eval import loglik
from heal_jax.eval.tasks import DataError, iter_jsonl
from heal_jax.model.config import ModelConfig

ROW_KEYS = ("index", "tokens", "nll", "nll_per_token")  # of every per-text row


class Text(NamedTuple):
  """One input text and where it came from: its file line (1-based) and its "id" field, if it has one."""
  text: str
  line: int
  id: Any = None


def read_text_rows(path: str | pathlib.Path) -> list[Text]:
  """Each non-blank line of a JSONL file of objects with a string field "text"; errors name file:line."""
  rows = []
  for where, row in iter_jsonl(path):
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
      raise DataError(f"{where}: expected an object with a string field 'text'")
    rows.append(Text(row["text"], int(where.rsplit(":", 1)[1]), row.get("id")))
  if not rows:
    raise DataError(f"{path}: no texts")
  return rows


def read_texts(path: str | pathlib.Path) -> list[str]:
  """The "text" field of each non-blank line of a JSONL file (see `read_text_rows`)."""
  return [row.text for row in read_text_rows(path)]


def source_fields(rows: list[dict[str, Any]], texts: Sequence[Text]) -> list[dict[str, Any]]:
  """`perplexity`'s per-text rows with each text's file line, and its id where it has one, first."""
  return [{**({"id": t.id} if t.id is not None else {}), "line": t.line, **row} for row, t in zip(rows, texts)]


def rolling_windows(token_ids: Sequence[int], prefix_id: int, max_length: int) -> list[loglik.Window]:
  """Disjoint prediction windows covering every token once (see the module docstring); max_length >= 1."""
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got {max_length}")
  ids = list(token_ids)
  if not ids:
    return []
  first = min(max_length, len(ids))
  windows = [loglik.Window(tuple([prefix_id] + ids[:first - 1]), tuple(ids[:first]), first)]
  predicted = first
  while predicted < len(ids):
    n = min(len(ids) - predicted, max_length)
    end = predicted + n
    windows.append(loglik.Window(tuple(ids[end - max_length - 1:end - 1]), tuple(ids[end - max_length:end]), n))
    predicted = end
  return windows


def perplexity(cfg: ModelConfig, params: Any, tokenizer: loglik.TokenizerLike, texts: Sequence[str],
               batch_size: int = 8, *, max_length: int | None = None,
               buckets: Sequence[int] | None = None) -> dict[str, Any]:
  """Token-weighted negative log-likelihood of `texts` (see the module docstring)."""
  max_length = loglik.resolve_max_length(cfg, max_length)
  windows, owner = [], []  # owner[j]: the text window j belongs to
  for i, text in enumerate(texts):
    mine = rolling_windows(tokenizer.encode(text, add_bos=False), tokenizer.bos_id, max_length)
    windows.extend(mine)
    owner.extend([i] * len(mine))
  tokens = sum(w.n_scored for w in windows)
  if not tokens:
    raise ValueError(f"no tokens to score: all {len(texts)} texts are empty")
  results = loglik.score_windows(cfg, params, windows, batch_size, buckets or loglik.default_buckets(max_length))
  nll_T, tokens_T = [0.0] * len(texts), [0] * len(texts)
  for i, window, (loglikelihood, _) in zip(owner, windows, results):
    nll_T[i] -= loglikelihood
    tokens_T[i] += window.n_scored
  rows = [{"index": i, "tokens": n, "nll": nll, "nll_per_token": nll / n if n else None}
          for i, (nll, n) in enumerate(zip(nll_T, tokens_T))]
  return {"nll_per_token": sum(nll_T) / tokens, "tokens": tokens, "texts": len(texts), "rows": rows}
