"""The jitted train step: micro-batch gradient accumulation, masked token-weighted loss, guard."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from heal_jax.model import llama
from heal_jax.model.config import ModelConfig
from heal_jax.parallel import mesh as mesh_lib
from heal_jax.train import loss as loss_lib
from heal_jax.train import optimizer as optimizer_lib
from heal_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def _micro_batches(batch: Batch, micro_steps: int) -> Batch:
  """[B, L] -> [M, B/M, L] with micro-batch m = rows m, m+M, ... (keeps each device's rows local)."""
  def split(x):
    b = x.shape[0]
    return jnp.swapaxes(x.reshape(b // micro_steps, micro_steps, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def batch_stats(params: Any, batch: Batch, cfg: ModelConfig, z_loss: float, num_sources: int,
                packed: bool = True) -> dict[str, jax.Array]:
  """Summed loss statistics of one batch: {"nll_sum", "z_sum", "tokens", "source_nll_S",
  "source_tokens_S"} (float32; per-source sums over the target tokens of each source).

  The one forward + loss used by the train step and by the held-out evaluation.
  """
  logits = llama.Llama(cfg).apply({"params": params}, batch["tokens"], batch["segment_ids"], batch["positions"],
                                  packed=packed)
  targets, weights = loss_lib.targets_and_weights(batch["tokens"], batch["segment_ids"], batch["loss_mask"])
  nll_sum, z_sum, nll_BxL = loss_lib.cross_entropy_sums(logits, targets, weights, z_loss)
  src = jnp.where(weights > 0, batch["source"], num_sources)  # padding and non-targets to an extra bin
  source_nll = jnp.zeros(num_sources + 1, jnp.float32).at[src].add(nll_BxL)[:num_sources]
  source_tokens = jnp.zeros(num_sources + 1, jnp.float32).at[src].add(weights)[:num_sources]
  return {"nll_sum": nll_sum, "z_sum": z_sum, "tokens": weights.sum(),
          "source_nll_S": source_nll, "source_tokens_S": source_tokens}


def loss_and_grads(params: Any, batch: Batch, cfg: ModelConfig, micro_steps: int, z_loss: float,
                   num_sources: int, packed: bool = True) -> tuple[dict[str, jax.Array], Any]:
  """Summed (not averaged) loss statistics (`batch_stats`) and gradients of the summed objective."""

  def objective(p, mb):
    stats = batch_stats(p, mb, cfg, z_loss, num_sources, packed)
    return stats["nll_sum"] + stats["z_sum"], stats

  grad_fn = jax.grad(objective, has_aux=True)
  if micro_steps == 1:
    grads, stats = grad_fn(params, batch)
    return stats, grads

  def body(carry, mb):
    acc_stats, acc_grads = carry
    grads, stats = grad_fn(params, mb)
    return (jax.tree.map(jnp.add, acc_stats, stats), jax.tree.map(jnp.add, acc_grads, grads)), None

  zeros_stats = {"nll_sum": jnp.zeros(()), "z_sum": jnp.zeros(()), "tokens": jnp.zeros(()),
                 "source_nll_S": jnp.zeros(num_sources), "source_tokens_S": jnp.zeros(num_sources)}
  zeros_grads = jax.tree.map(jnp.zeros_like, params)
  (stats, grads), _ = jax.lax.scan(body, (zeros_stats, zeros_grads), _micro_batches(batch, micro_steps))
  return stats, grads


def train_step(state: TrainState, batch: Batch, hp: dict[str, jax.Array], *, cfg: ModelConfig, micro_steps: int,
               z_loss: float, num_sources: int, packed: bool = True) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch (int32 [B, L] arrays: tokens, segment_ids, positions,
  loss_mask, source). The loss is the mean NLL over every target token of the global batch. `hp` are
  the phase's optimizer numbers (`optimizer.hyperparams`), AdamW's and the schedule's.

  A step whose loss or gradient norm is not finite, or whose batch has no target token (every token
  masked, e.g. instruction examples whose responses lie past seq_len), changes nothing but the
  counters (skipped, bad_streak): AdamW would still decay the weights and moments on zero gradients.
  The caller halts after too long a streak. `packed=False` promises one document per
  row (benchmarks of the 'cudnn' attention path).
  """
  stats, grad_sums = loss_and_grads(state.params, batch, cfg, micro_steps, z_loss, num_sources, packed)
  denom = jnp.maximum(stats["tokens"], 1.0)
  grads = jax.tree.map(lambda g: g / denom, grad_sums)
  grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))
  loss = (stats["nll_sum"] + stats["z_sum"]) / denom
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  good = finite & (stats["tokens"] > 0)
  updates, new_opt_state = optimizer_lib.make_optimizer(hp).update(grads, state.opt_state, state.params)
  # float32 numbers in `hp` would promote moments of lower precision: each keeps its dtype
  new_opt_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_opt_state, state.opt_state)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(good, a, b), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(new_params, state.params), opt_state=keep(new_opt_state, state.opt_state),
      rng=jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0]),
      skipped=state.skipped + (~good).astype(jnp.int32),
      bad_streak=jnp.where(good, 0, state.bad_streak + 1))
  metrics = {"loss": stats["nll_sum"] / denom, "grad_norm": grad_norm,
             **({"z_loss": stats["z_sum"] / denom, "z_sum": stats["z_sum"]} if z_loss else {}),  # the term on
             "nll_sum": stats["nll_sum"], "tokens": stats["tokens"], "applied": good, "skipped": new_state.skipped,
             "bad_streak": new_state.bad_streak, "source_nll_S": stats["source_nll_S"],
             "source_tokens_S": stats["source_tokens_S"],
             # slots holding a token (segment id > 0) and all slots: the packing's fill
             "filled": jnp.sum(batch["segment_ids"] > 0, dtype=jnp.float32),
             "slots": jnp.float32(batch["segment_ids"].size),
             "learning_rate": optimizer_lib.schedule_value(hp, _opt_count(state.opt_state))}
  return new_state, metrics


def _opt_count(opt_state: Any) -> jax.Array:
  """The optimizer's own step counter (the phase-local step the schedule reads)."""
  has_count = lambda x: "count" in getattr(x, "_fields", ())
  for leaf_state in jax.tree.leaves(opt_state, is_leaf=has_count):
    if has_count(leaf_state):
      return leaf_state.count
  return jnp.zeros((), jnp.int32)


def jit_train_step(cfg: ModelConfig, micro_steps: int, z_loss: float, num_sources: int, state_shardings: Any,
                   batch_sharding: jax.sharding.NamedSharding, packed: bool = True):
  """jax.jit of `train_step` with explicit in/out shardings and the state donated; called as
  fn(state, batch, hp) with hp replicated (`replicated_hyperparams`)."""
  fn = functools.partial(train_step, cfg=cfg, micro_steps=micro_steps, z_loss=z_loss, num_sources=num_sources,
                         packed=packed)
  return jax.jit(fn, in_shardings=(state_shardings, batch_sharding, mesh_lib.replicated(batch_sharding.mesh)),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))


def replicated_hyperparams(spec: optimizer_lib.OptimizerSpec, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """`optimizer.hyperparams(spec)` as float32 scalars on every device of `mesh` (every process passes the
  same spec)."""
  return {k: jax.make_array_from_callback((), mesh_lib.replicated(mesh), lambda _, v=v: np.asarray(v, np.float32))
          for k, v in optimizer_lib.hyperparams(spec).items()}
