"""Model FLOPs per token (PaLM's count), the run ETA's estimate of later phases, and the logged means of
an interval of steps, by hand."""

import math
import types

import jax
import jax.numpy as jnp
import pytest

from heal_jax.model.config import ModelConfig
from heal_jax.train import metrics


def test_flops_per_token_and_later_phases_by_hand():
  cfg = ModelConfig(vocab_size=100, hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2,
                    num_kv_heads=1, max_position_embeddings=64)
  # per layer: q 8x8, k and v 8x4 each, o 8x8, MLP 3 x 8x16, two norms of 8: 64+32+32+64+384+16 = 592;
  # 2 layers + final norm 8 = 1192; output projection 100x8 = 800 (the input lookup is not counted).
  assert metrics.flops_per_token(cfg, 32) == 6 * (1192 + 800) + 12 * 2 * 8 * 32
  phase = lambda steps, batch, seq: types.SimpleNamespace(steps=steps, global_batch=batch, seq_len=seq)
  # 10 steps of 4 x 16 tokens at 11952 + 3072 FLOPs, and 5 steps of 2 x 64 at 11952 + 12288, at 1e6 FLOP/s
  expected = (10 * 4 * 16 * (11952 + 3072) + 5 * 2 * 64 * (11952 + 12288)) / 1e6
  assert metrics.later_phases_seconds(cfg, [phase(10, 4, 16), phase(5, 2, 64)], 1e6) == pytest.approx(expected)
  assert metrics.later_phases_seconds(cfg, [], 1e6) == 0


def test_a_skipped_step_adds_nothing_to_the_logged_means():
  """An applied step (10 target tokens, gradient norm 4) and a skipped one (no target token): the
  interval's means are the applied step's, not halved by the skipped one."""
  def step(tokens, gnorm, applied):
    return {"nll_sum": jnp.float32(2.0 * tokens), "tokens": jnp.float32(tokens),
            "source_nll_S": jnp.array([2.0 * tokens, 0.0]), "source_tokens_S": jnp.array([tokens, 0.0]),
            "grad_norm": jnp.float32(gnorm), "filled": jnp.float32(16), "slots": jnp.float32(16),
            "applied": jnp.bool_(applied)}
  sums = metrics.add_step(metrics.add_step(None, step(10, 4.0, True)), step(0, 0.0, False))
  out = metrics.interval_scalars(jax.device_get(sums), ["a", "b"])
  assert (out["loss"], out["grad_norm"], out["target_tokens"], out["fill"]) == (2.0, 4.0, 10.0, 1.0)
  assert (out["loss/a"], out["share/a"]) == (2.0, 1.0) and "loss/b" not in out
  assert "z_loss" not in out  # the term is off (train.z_loss = 0): the step has no z_sum
  with_z = metrics.add_step(None, {**step(10, 4.0, True), "z_sum": jnp.float32(0.5)})
  assert metrics.interval_scalars(jax.device_get(with_z), ["a", "b"])["z_loss"] == 0.05
  skipped_z = metrics.add_step(None, {**step(0, 0.0, False), "z_sum": jnp.float32(0.0)})
  assert math.isnan(metrics.interval_scalars(jax.device_get(skipped_z), ["a", "b"])["z_loss"])  # on, none applied
