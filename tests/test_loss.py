"""train/loss.py against hand-written target positions and a float64 NumPy cross-entropy."""

import numpy as np
import jax.numpy as jnp

from heal_jax.train import loss as loss_lib

# Row 0: two packed documents (segments 1 and 2) then padding. Row 1: one document whose first three
# tokens are a prompt (loss_mask 0), then padding.
TOKENS = np.array([[11, 12, 13, 14, 21, 22, 23, 0, 0, 0],
                   [31, 32, 33, 34, 35, 36, 37, 38, 0, 0]], np.int32)
SEGMENTS = np.array([[1, 1, 1, 1, 2, 2, 2, 0, 0, 0],
                     [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
LOSS_MASK = np.array([[1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                      [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]], np.int32)
# (row, position) -> the token that position must predict, written out by hand: within a document
# only (14 -> 21 crosses documents), never from padding, and only into loss-masked tokens.
EXPECTED = {(0, 0): 12, (0, 1): 13, (0, 2): 14, (0, 4): 22, (0, 5): 23,
            (1, 2): 34, (1, 3): 35, (1, 4): 36, (1, 5): 37, (1, 6): 38}


def test_targets_and_weights_mark_exactly_the_hand_written_positions():
  targets, weights = loss_lib.targets_and_weights(jnp.asarray(TOKENS), jnp.asarray(SEGMENTS), jnp.asarray(LOSS_MASK))
  targets, weights = np.asarray(targets), np.asarray(weights)
  assert weights.dtype == np.float32
  assert {(int(b), int(t)) for b, t in zip(*np.nonzero(weights))} == set(EXPECTED)
  assert np.all(weights[weights != 0] == 1.0)
  for (b, t), token in EXPECTED.items():
    assert targets[b, t] == token, (b, t)


def test_cross_entropy_and_z_loss_sums_equal_float64_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 3.0, size=(2, 10, 40)).astype(np.float32)
  z_loss = 1e-2
  targets, weights = loss_lib.targets_and_weights(jnp.asarray(TOKENS), jnp.asarray(SEGMENTS), jnp.asarray(LOSS_MASK))
  nll_sum, z_sum, nll_BxL = loss_lib.cross_entropy_sums(jnp.asarray(logits), targets, weights, z_loss)

  x = logits.astype(np.float64)
  m = x.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]
  want_nll = np.zeros((2, 10))
  want_z = 0.0
  for (b, t), token in EXPECTED.items():
    want_nll[b, t] = lse[b, t] - x[b, t, token]
    want_z += z_loss * lse[b, t] ** 2
  np.testing.assert_allclose(np.asarray(nll_BxL), want_nll, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(float(nll_sum), want_nll.sum(), rtol=1e-6)
  np.testing.assert_allclose(float(z_sum), want_z, rtol=1e-6)
