"""KV-cache generation: one jitted call runs the prefill and a `lax.while_loop` over new tokens.

Padding: prompts are LEFT-padded to a common length P (the longest prompt rounded up to a multiple of
`pad_multiple`, so nearby lengths share one compiled program). Row b's prompt fills slots
[pad_b, P) of the cache, its t-th new token goes to slot P + t, and so every row writes the same slot
at each step (one `dynamic_update_slice`) and the prefill's last position is every row's last prompt
token. Padding slots carry segment id 0, which the real tokens (segment id 1) never attend to, and
positions count from each row's first real token (position = slot - pad_b), so a row's tokens see
exactly what they would in an unpadded forward pass of that row alone.

Stopping: a row is finished at its first EOS (when `stop_on_eos`); the loop ends when every row is
finished or `max_new_tokens` are made. Stop strings are applied afterwards on the decoded text
(`truncate_at_stop`), which gives the same text as stopping early would.

Speculative decoding (`lookahead` K > 0, greedy only): each step feeds a row's newest token and K
draft tokens guessed from its own text (`ngram_draft`) in one forward pass, keeps the drafts up to the
first one that differs from the model's greedy choice, and adds the model's choice after them (1 to
K + 1 new tokens a step). Rows advance by different amounts, so each row writes the cache at its own
slot (the model's per-row `cache_index`); a row's slot s still holds its (s - pad)-th token, and
rejected drafts left in later slots are never attended to (queries see only earlier slots) and are
overwritten by the next step. The kept tokens are the greedy tokens of the plain loop: a token is kept
only where it equals the argmax of logits computed from the same preceding tokens (up to float
rounding: logits of a K + 1-token pass can differ in the last bits from a 1-token pass, which can flip
an exact near-tie).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from heal_jax.infer import ngram_draft
from heal_jax.infer import sampling as sampling_lib
from heal_jax.model import llama
from heal_jax.model.config import ModelConfig
from heal_jax.parallel import mesh as mesh_lib

Sampling = sampling_lib.Sampling


@dataclasses.dataclass(frozen=True)
class GenerateFn:
  """A compiled generation program: `(params, tokens_BxP int32, pad_B int32, rng) -> (new_tokens_BxN int32,
  made, passes)` (int32 scalars: columns holding new tokens, decoding forward passes after the
  prefill), and the `max_positions` it was made with, which `run` cuts rows at."""
  jitted: Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
  max_positions: int | None = None

  def __call__(self, params: Any, tokens_BxP: jax.Array, pad_B: jax.Array,
               rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return self.jitted(params, tokens_BxP, pad_B, rng)

  def lower(self, *args: Any) -> Any:
    """`jax.jit(...).lower` of the program (for its HLO or cost analysis)."""
    return self.jitted.lower(*args)


def left_pad(prompts: Sequence[Sequence[int]], pad_multiple: int = 64,
             pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(tokens_BxP int32, pad_B int32): prompts right-aligned in rows of length P.

  P is the longest prompt rounded up to `pad_multiple`; pad_B[b] = P - len(prompts[b]). `pad_id`
  fills the padding (any valid id: padding is masked by segment id, never by token value).
  """
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token (encode with BOS)")
  longest = max(len(p) for p in prompts)
  length = -(-longest // pad_multiple) * pad_multiple
  tokens_BxP = np.full((len(prompts), length), pad_id, np.int32)
  pad_B = np.zeros(len(prompts), np.int32)
  for b, prompt in enumerate(prompts):
    pad_B[b] = length - len(prompt)
    tokens_BxP[b, pad_B[b]:] = prompt
  return tokens_BxP, pad_B


def make_generate_fn(cfg: ModelConfig, max_new_tokens: int, sampling: Sampling = Sampling(),
                     eos_id: int | None = None, stop_on_eos: bool = True,
                     vocab_limit: int | None = None, max_positions: int | None = None,
                     lookahead: int = 0, max_ngram: int = 2) -> GenerateFn:
  """A jitted `(params, tokens_BxP, pad_B, rng) -> (new_tokens_BxN, made, passes)`, N = max_new_tokens,
  as a `GenerateFn` that also carries `max_positions` for `run`.

  params: the `Llama(cfg)` parameter tree (stacked when cfg.scan_layers).
  tokens_BxP, pad_B: from `left_pad`.
  rng: a PRNG key; token t of every row is drawn with `fold_in(rng, t)` (unused when greedy).
  vocab_limit: only ids below it are produced (the tokenizer's size, for a model whose vocabulary
    is padded past its tokenizer); None: any id of the model's vocabulary.
  max_positions: a row is finished once its prompt and new tokens fill this many positions (the
    model's context): a row of a P_b-token prompt gets at most max_positions - P_b new tokens, whatever
    its batch's longest or shortest prompt; None: every row may make N.
  lookahead: draft tokens checked per forward pass (speculative decoding, module docstring; greedy
    sampling only); 0: one token per pass. max_ngram: the longest suffix the drafts match (>= 1).
  Returns the new tokens (columns from `made` on are not new tokens of any row: the loop stopped because
  every row had finished; tokens after a row's EOS or its max_positions are whatever the model
  produced: `run` cuts them), `made` and the number of forward passes after the prefill.
  One program is compiled per (B, P) shape.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if vocab_limit is not None and not 0 < vocab_limit <= cfg.vocab_size:
    raise ValueError(f"vocab_limit must be in [1, {cfg.vocab_size}], got {vocab_limit}")
  if lookahead < 0 or max_ngram < 1:
    raise ValueError(f"lookahead must be >= 0 and max_ngram >= 1, got {lookahead} and {max_ngram}")
  if lookahead and not sampling.greedy:
    raise ValueError("lookahead (speculative decoding) keeps only greedy tokens; it needs temperature 0")
  model = llama.Llama(cfg)
  check_eos = stop_on_eos and eos_id is not None

  def pick(logits_BxV, rng):
    return sampling_lib.sample(logits_BxV[:, :vocab_limit], rng, sampling)

  def generate(params, tokens_BxP, pad_B, rng):
    b, p = tokens_BxP.shape
    slots = p + max_new_tokens + (lookahead + 1 if lookahead else 0)  # room for a step's drafts
    slots_S = jnp.arange(slots, dtype=jnp.int32)
    cache_segment_ids_BxS = (slots_S[None, :] >= pad_B[:, None]).astype(jnp.int32)
    positions_BxP = jnp.maximum(slots_S[None, :p] - pad_B[:, None], 0)
    cache = llama.init_cache(cfg, b, slots)
    logits_Bx1xV, cache = model.apply(
        {"params": params}, tokens_BxP, cache_segment_ids_BxS[:, :p], positions_BxP, cache=cache,
        cache_index=0, cache_segment_ids_BxS=cache_segment_ids_BxS, last_only=True)
    token_B = pick(logits_Bx1xV[:, 0], jax.random.fold_in(rng, 0))
    done_B = (token_B == eos_id) if check_eos else jnp.zeros((b,), bool)
    room_B = (max_new_tokens if max_positions is None else
              jnp.minimum(max_new_tokens, max_positions - (p - pad_B)))  # new tokens each row may make
    done_B = done_B | (room_B <= 1)

    def step(tokens_BxL, index, cache):  # index: the slot of tokens_BxL[:, 0], scalar or [B]
      return model.apply(
          {"params": params}, tokens_BxL, jnp.ones(tokens_BxL.shape, jnp.int32),
          (index - pad_B)[:, None] + jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32), cache=cache,
          cache_index=index, cache_segment_ids_BxS=cache_segment_ids_BxS)

    if lookahead:
      return _speculative_loop(step, pick, tokens_BxP, token_B, cache, done_B, room_B, pad_B, slots,
                               lookahead, max_ngram, max_new_tokens, eos_id if check_eos else None)
    out_BxN = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(token_B)

    def cond(state):
      t, _, _, _, done_B = state
      return (t < max_new_tokens) & ~jnp.all(done_B)

    def body(state):
      t, token_B, cache, out_BxN, done_B = state  # token_B: new token t-1, not yet in the cache
      logits_Bx1xV, cache = step(token_B[:, None], p + t - 1, cache)
      token_B = pick(logits_Bx1xV[:, 0], jax.random.fold_in(rng, t))
      out_BxN = jax.lax.dynamic_update_slice(out_BxN, token_B[:, None], (0, t))
      if check_eos:
        done_B = done_B | (token_B == eos_id)
      done_B = done_B | (t + 1 >= room_B)
      return t + 1, token_B, cache, out_BxN, done_B

    made, _, _, out_BxN, _ = jax.lax.while_loop(
        cond, body, (jnp.asarray(1, jnp.int32), token_B, cache, out_BxN, done_B))
    return out_BxN, made, made - 1

  return GenerateFn(jax.jit(generate), max_positions)


def _speculative_loop(step, pick, tokens_BxP, token_B, cache, done_B, room_B, pad_B, slots, lookahead, max_ngram,
                      max_new_tokens, eos_id):
  """The decoding loop of `make_generate_fn` with `lookahead` > 0 (module docstring).

  hist_BxT (T = `slots`) holds each row's tokens at their cache slots: prompt at [pad_b, P), new token t
  at P + t. Row b has made t_B[b] new tokens; the newest, at P + t_B[b] - 1, is not yet in the cache.
  A finished row stops advancing and writes its step into the last L slots, which hold no kept token.
  """
  b, p = tokens_BxP.shape
  width = lookahead + 1
  hist_BxT = jnp.zeros((b, slots), jnp.int32).at[:, :p].set(tokens_BxP).at[:, p].set(token_B)
  t_B = jnp.ones((b,), jnp.int32)

  def cond(state):
    _, _, _, done_B, _ = state
    return ~jnp.all(done_B)

  def body(state):
    hist_BxT, cache, t_B, done_B, passes = state
    end_B = p + t_B
    draft_BxK = ngram_draft.propose(hist_BxT, pad_B, end_B, lookahead, max_ngram)
    newest_B = jnp.take_along_axis(hist_BxT, end_B[:, None] - 1, axis=1)
    index_B = jnp.where(done_B, slots - width, end_B - 1)
    logits_BxLxV, cache = step(jnp.concatenate([newest_B, draft_BxK], axis=1), index_B, cache)
    # greedy_BxL[:, j]: the model's token for slot end + j, given the newest token and drafts < j
    greedy_BxL = pick(logits_BxLxV.reshape(b * width, -1), None).reshape(b, width)  # greedy: no rng
    kept_B = jnp.sum(jnp.cumprod(draft_BxK == greedy_BxL[:, :-1], axis=1), axis=1)
    made_B = jnp.where(done_B, 0, kept_B + 1)  # new tokens: greedy_BxL[:, :made_B]
    hist_BxT = jax.vmap(lambda h, g, i: jax.lax.dynamic_update_slice(h, g, (i,)))(
        hist_BxT, greedy_BxL, jnp.where(done_B, slots - width, end_B))
    if eos_id is not None:
      done_B = done_B | jnp.any((jnp.arange(width)[None] < made_B[:, None]) & (greedy_BxL == eos_id), axis=1)
    t_B = t_B + made_B
    done_B = done_B | (t_B >= room_B)
    return hist_BxT, cache, t_B, done_B, passes + 1

  hist_BxT, _, t_B, _, passes = jax.lax.while_loop(
      cond, body, (hist_BxT, cache, t_B, done_B, jnp.asarray(0, jnp.int32)))
  return hist_BxT[:, p:p + max_new_tokens], jnp.maximum(jnp.max(jnp.minimum(t_B, room_B)), 1), passes


def cut_at_eos(tokens: Sequence[int], eos_id: int | None) -> list[int]:
  """The tokens before the first EOS (all of them when there is none or eos_id is None)."""
  tokens = [int(t) for t in tokens]
  if eos_id is not None and eos_id in tokens:
    return tokens[:tokens.index(eos_id)]
  return tokens


def truncate_at_stop(text: str, stop_strings: Sequence[str], prefix: str = "") -> str:
  """`text` up to the earliest occurrence of any non-empty stop string in `prefix + text`, counting
  only those that end inside `text`: `prefix` is the end of the prompt, so a stop string begun there
  ("\n" of "...### Response:\n" and "### Instruction:" in the new text) cuts the text at 0."""
  joined, cut = prefix + text, len(text)
  for s in stop_strings:
    if s:
      i = joined.find(s, max(len(prefix) - len(s) + 1, 0))
      if i >= 0:
        cut = min(cut, max(i - len(prefix), 0))
  return text[:cut]


def run(generate_fn: GenerateFn, params: Any, prompts: Sequence[Sequence[int]], *, seed: int = 0,
        eos_id: int | None = None, pad_multiple: int = 64,
        batch_sharding: jax.sharding.NamedSharding | None = None) -> list[list[int]]:
  """New tokens of each prompt, from a program of `make_generate_fn`: cut before EOS, and at
  max_positions - len(prompt) new tokens when the program was made with `max_positions`.

  batch_sharding: where the rows go (`mesh.batch_sharding` of the params' mesh; the number of
  prompts a multiple of the rows it splits over). Needed in multi-process runs, where every process
  calls this with the same prompts and gets every row's tokens; None: one process."""
  tokens_BxP, pad_B = left_pad(prompts, pad_multiple)
  out_BxN, made, _ = generate_fn(params, mesh_lib.place_rows(tokens_BxP, batch_sharding),
                                 mesh_lib.place_rows(pad_B, batch_sharding), jax.random.PRNGKey(seed))
  out_BxN = mesh_lib.to_host(out_BxN)[:, :int(mesh_lib.to_host(made))]
  if generate_fn.max_positions is not None:
    out_BxN = [row[:max(generate_fn.max_positions - len(prompt), 0)] for row, prompt in zip(out_BxN, prompts)]
  return [cut_at_eos(row, eos_id) for row in out_BxN]


def generate(cfg: ModelConfig, params: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampling: Sampling = Sampling(), seed: int = 0, eos_id: int | None = None,
             stop_on_eos: bool = True, pad_multiple: int = 64, vocab_limit: int | None = None) -> list[list[int]]:
  """Generates for a batch of token-id prompts in one call; returns new tokens without the EOS.

  Compiles a fresh program each call: to generate many batches, keep a `make_generate_fn` result
  and call `run` with it.
  """
  fn = make_generate_fn(cfg, max_new_tokens, sampling, eos_id, stop_on_eos, vocab_limit)
  return run(fn, params, prompts, seed=seed, eos_id=eos_id if stop_on_eos else None,
             pad_multiple=pad_multiple)
