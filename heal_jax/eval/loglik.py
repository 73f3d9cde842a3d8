"""Log-likelihood scoring as lm-evaluation-harness does it, batched and jitted.

Tokenization (the harness's `_encode_pair`):
  1. trailing whitespace of the context moves to the front of the continuation;
  2. context+continuation is encoded as one text and the context alone is encoded too; the model reads
     the context's own encoding followed by the whole encoding after its first len(context encoding)
     tokens (the continuation), even where a token of the whole spans the boundary;
  3. BOS starts both encodings when `add_bos` (default: what the checkpoint's tokenizer_config asks for,
     `LoadedModel.add_bos`; LLaMA's says yes). An empty context is [BOS] alone, as the harness does.
  Encoding uses our sentencepiece `Tokenizer`, which gives the ids of the HF tokenizer the harness uses
  except for a text that starts with whitespace or spells out "<s>"/"</s>" (see heal_jax.data.tokenizer);
  the task prompts start with "Abstract:"/"Question:", so they are unaffected.
Window (the harness's `_loglikelihood_tokens`): the model reads (context+continuation)[-(max_length+1):][:-1]
and the last len(continuation) positions are scored, so an over-long context is cut on the left.

Result per request: the sum of log-probabilities of the continuation tokens (float) and whether every one
of them is the argmax token (greedy). acc = argmax of the sums; acc_norm = argmax of sum / len(choice) in
characters, where `choice` is the answer text without the target delimiter (" " + choice is scored), as the
harness's `process_results` does. Ties go to the first choice (np.argmax).

Batching: requests are sorted by length, cut into batches of `batch_size` rows, each right-padded to the
smallest bucket length that holds its longest row (a few fixed lengths, so jit compiles a handful of
shapes); padding has segment id 0 and is never scored. The last batch is filled with empty rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from heal_jax.eval import tasks as tasks_lib
from heal_jax.model.config import ModelConfig
from heal_jax.model.llama import Llama
from heal_jax.parallel import mesh as mesh_lib

ROW_KEYS = ("id", "choices", "loglikelihoods", "pred", "gold")  # of every per-question row


class TokenizerLike(Protocol):
  bos_id: int

  def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
    ...


@dataclasses.dataclass(frozen=True)
class Window:
  """A scored row: `inputs` are fed to the model, `targets[i]` is the token after `inputs[i]`, and the
  last `n_scored` positions count."""
  inputs: tuple[int, ...]
  targets: tuple[int, ...]
  n_scored: int


def split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
  """Moves the context's trailing whitespace to the front of the continuation."""
  n = len(context) - len(context.rstrip())
  if n:
    return context[:-n], context[-n:] + continuation
  return context, continuation


def encode_pair(tokenizer: TokenizerLike, context: str, continuation: str,
                add_bos: bool = True) -> tuple[list[int], list[int]]:
  """(context ids, continuation ids) by the harness's rules (see the module docstring)."""
  if context == "":
    return [tokenizer.bos_id], list(tokenizer.encode(continuation, add_bos=False))
  context, continuation = split_trailing_space(context, continuation)
  whole = list(tokenizer.encode(context + continuation, add_bos=add_bos))
  context_ids = list(tokenizer.encode(context, add_bos=add_bos))
  return context_ids, whole[len(context_ids):]


def harness_window(context_ids: Sequence[int], continuation_ids: Sequence[int], max_length: int) -> Window:
  """The model input of one request, left-truncated to `max_length` tokens as the harness does."""
  if not continuation_ids:
    raise ValueError("the continuation encodes to no tokens")
  if len(continuation_ids) > max_length:
    raise ValueError(f"continuation of {len(continuation_ids)} tokens exceeds max_length={max_length}")
  if not context_ids:
    raise ValueError("the context encodes to no tokens (use add_bos or a non-empty context)")
  full = list(context_ids) + list(continuation_ids)
  kept = full[-(max_length + 1):]
  return Window(tuple(kept[:-1]), tuple(kept[1:]), len(continuation_ids))


def resolve_max_length(cfg: ModelConfig, max_length: int | None) -> int:
  """The context length to score with: `max_length`, or cfg.max_position_embeddings when None.

  Raises ValueError below 1 (a window must read at least one token).
  """
  if max_length is None:
    return cfg.max_position_embeddings
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got {max_length}")
  return max_length


def default_buckets(max_length: int, smallest: int = 128) -> tuple[int, ...]:
  """Powers of two from `smallest` below `max_length`, then `max_length` itself."""
  out, n = [], smallest
  while n < max_length:
    out.append(n)
    n *= 2
  return tuple(out) + (max_length,)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _score_batch(cfg: ModelConfig, params: Any, tokens_BxL: jax.Array, targets_BxL: jax.Array,
                 segment_ids_BxL: jax.Array, scored_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per row: (sum of target log-probs over scored positions float32[B], all scored targets greedy bool[B]).

  Inputs are int32 [B, L] except scored_BxL, bool [B, L]."""
  b, l = tokens_BxL.shape
  positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  # Rows are single documents right-padded with segment id 0 (so packed=False is true for real tokens).
  logits_BxLxV = Llama(cfg).apply({"params": params}, tokens_BxL, segment_ids_BxL, positions_BxL,
                                  packed=False)
  logz_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  logp_BxL = target_logit_BxL - logz_BxL
  greedy_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
  logp_B = jnp.sum(jnp.where(scored_BxL, logp_BxL, 0.0), axis=-1)
  greedy_B = jnp.all(greedy_BxL | ~scored_BxL, axis=-1)
  return logp_B, greedy_B


def _device_params(params: Any) -> Any:
  """Host numpy leaves go to the device once; jax arrays (possibly sharded) stay as they are."""
  return jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x, params)


def score_windows(cfg: ModelConfig, params: Any, windows: Sequence[Window], batch_size: int = 8,
                  buckets: Sequence[int] | None = None,
                  batch_sharding: jax.sharding.NamedSharding | None = None) -> list[tuple[float, bool]]:
  """(sum of log-probs of the scored targets, all greedy) per window, in input order.

  Args:
    cfg: model config (hashable; a static argument of the jitted scorer).
    params: parameter tree for `Llama(cfg)`, numpy or jax arrays (e.g. the training state's).
    windows: rows no longer than the largest bucket.
    batch_size: rows per forward pass (a multiple of the rows `batch_sharding` splits over).
    buckets: padded lengths; default `default_buckets(cfg.max_position_embeddings)`.
    batch_sharding: where each batch's rows go (`mesh_lib.batch_sharding` of the params' mesh). Needed in
      multi-process runs, where every process calls this with the same windows and gets all results;
      None: batches are passed as numpy arrays (one process).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  buckets = tuple(sorted(buckets or default_buckets(cfg.max_position_embeddings)))
  params = _device_params(params)
  order = sorted(range(len(windows)), key=lambda i: -len(windows[i].inputs))
  results: list[tuple[float, bool]] = [(0.0, True)] * len(windows)
  pending = []
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    longest = len(windows[rows[0]].inputs)
    fitting = [b for b in buckets if b >= longest]
    if not fitting:
      raise ValueError(f"a window of {longest} tokens exceeds the largest bucket {buckets[-1]}")
    length = fitting[0]
    tokens = np.zeros((batch_size, length), np.int32)
    targets = np.zeros((batch_size, length), np.int32)
    segments = np.zeros((batch_size, length), np.int32)
    scored = np.zeros((batch_size, length), bool)
    for r, i in enumerate(rows):
      w = windows[i]
      n = len(w.inputs)
      tokens[r, :n], targets[r, :n], segments[r, :n] = w.inputs, w.targets, 1
      scored[r, n - w.n_scored:n] = True
    # Dispatch every batch before reading any result back, so the host never stalls the device.
    batch = (mesh_lib.place_rows(a, batch_sharding) for a in (tokens, targets, segments, scored))
    pending.append((rows, _score_batch(cfg, params, *batch)))
  for rows, (logp_B, greedy_B) in pending:
    logp_B, greedy_B = mesh_lib.to_host(logp_B), mesh_lib.to_host(greedy_B)
    for r, i in enumerate(rows):
      results[i] = (float(logp_B[r]), bool(greedy_B[r]))
  return results


def score(cfg: ModelConfig, params: Any, tokenizer: TokenizerLike, requests: Sequence[tuple[str, str]],
          batch_size: int = 8, *, add_bos: bool = True, max_length: int | None = None,
          buckets: Sequence[int] | None = None,
          batch_sharding: jax.sharding.NamedSharding | None = None) -> list[tuple[float, bool]]:
  """Harness `loglikelihood`: (sum log p(continuation | context), is greedy) per (context, continuation).

  max_length defaults to cfg.max_position_embeddings; buckets to default_buckets(max_length);
  batch_sharding as in `score_windows`.
  """
  max_length = resolve_max_length(cfg, max_length)
  windows, _ = _windows(tokenizer, requests, add_bos, max_length)
  return score_windows(cfg, params, windows, batch_size, buckets or default_buckets(max_length), batch_sharding)


def _windows(tokenizer: TokenizerLike, requests: Sequence[tuple[str, str]], add_bos: bool,
             max_length: int) -> tuple[list[Window], list[bool]]:
  """The harness windows of `requests`, and whether each was left-truncated to fit `max_length`."""
  pairs = [encode_pair(tokenizer, c, x, add_bos) for c, x in requests]
  return ([harness_window(c, x, max_length) for c, x in pairs],
          [len(c) + len(x) > max_length + 1 for c, x in pairs])


def evaluate(task_name: str, cfg: ModelConfig, params: Any, tokenizer: TokenizerLike,
             examples: Sequence[tasks_lib.Example], batch_size: int = 8, *,
             contexts: Sequence[str] | None = None, add_bos: bool = True, max_length: int | None = None,
             buckets: Sequence[int] | None = None,
             batch_sharding: jax.sharding.NamedSharding | None = None) -> dict[str, Any]:
  """Scores multiple-choice examples; returns {"task", "n", "acc", "acc_norm", "rows", "truncated"}
  (truncated: questions whose prompt was left-truncated to max_length, as the harness cuts it).

  contexts: the prompt of each example (e.g. from `tasks.fewshot_contexts`); default the zero-shot query.
  batch_sharding: as in `score_windows` (the trainer's eval hook passes its mesh's, so that it runs in
    multi-process runs too).
  Each row: {"id", "choices", "loglikelihoods", "is_greedy", "pred", "pred_norm", "gold"}, in example order.
  """
  contexts = [ex.query for ex in examples] if contexts is None else list(contexts)
  if len(contexts) != len(examples):
    raise ValueError(f"{len(contexts)} contexts for {len(examples)} examples")
  requests = [(ctx, cont) for ctx, ex in zip(contexts, examples) for cont in ex.continuations]
  max_length = resolve_max_length(cfg, max_length)
  windows, cut = _windows(tokenizer, requests, add_bos, max_length)
  results = score_windows(cfg, params, windows, batch_size, buckets or default_buckets(max_length), batch_sharding)
  rows, k, truncated = [], 0, 0
  for ex in examples:
    res = results[k:k + len(ex.choices)]
    truncated += any(cut[k:k + len(ex.choices)])
    k += len(ex.choices)
    lls = np.array([r[0] for r in res], np.float64)
    lengths = np.array([float(len(c)) for c in ex.choices])
    rows.append({"id": ex.id, "choices": list(ex.choices), "loglikelihoods": lls.tolist(),
                 "is_greedy": [r[1] for r in res], "pred": int(np.argmax(lls)),
                 "pred_norm": int(np.argmax(lls / lengths)), "gold": ex.gold})
  n = len(rows)
  acc = sum(r["pred"] == r["gold"] for r in rows) / n if n else float("nan")
  acc_norm = sum(r["pred_norm"] == r["gold"] for r in rows) / n if n else float("nan")
  return {"task": task_name, "n": n, "acc": acc, "acc_norm": acc_norm, "rows": rows, "truncated": truncated}
