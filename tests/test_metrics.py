"""Model FLOPs per token (PaLM's count) and the run ETA's estimate of later phases, by hand."""

import types

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
