"""train/optimizer.py: learning-rate schedules against hand-computed values (the AdamW update itself is
checked against torch.optim.AdamW in test_step.py)."""

import math

import pytest

from heal_jax.train import optimizer

PEAK = 1e-3


def _lr(schedule: str, count: int, warmup: int = 2) -> float:
  spec = optimizer.OptimizerSpec(peak_lr=PEAK, steps=10, warmup_steps=warmup, schedule=schedule, end_lr_ratio=0.1)
  return float(optimizer.learning_rate(spec)(count))


@pytest.mark.parametrize("schedule", optimizer.SCHEDULES)
def test_warmup_rises_linearly_from_zero_to_the_peak(schedule):
  assert [_lr(schedule, c) for c in (0, 1, 2)] == pytest.approx([0.0, 5e-4, 1e-3], rel=1e-6, abs=1e-12)


def test_cosine_decays_to_end_lr_ratio_over_the_steps_after_warmup():
  # 8 decay steps: lr = peak * (0.1 + 0.9 * (1 + cos(pi * s / 8)) / 2) at s = count - 2
  assert _lr("cosine", 4) == pytest.approx(PEAK * (0.1 + 0.45 * (1 + math.cos(math.pi / 4))), rel=1e-6)
  assert _lr("cosine", 6) == pytest.approx(5.5e-4, rel=1e-6)
  assert _lr("cosine", 10) == pytest.approx(1e-4, rel=1e-6)
  assert _lr("cosine", 14) == pytest.approx(1e-4, rel=1e-6)  # stays at the end value


def test_linear_decays_to_end_lr_ratio_over_the_steps_after_warmup():
  assert _lr("linear", 4) == pytest.approx(7.75e-4, rel=1e-6)
  assert _lr("linear", 6) == pytest.approx(5.5e-4, rel=1e-6)
  assert _lr("linear", 10) == pytest.approx(1e-4, rel=1e-6)
  assert _lr("linear", 14) == pytest.approx(1e-4, rel=1e-6)


def test_constant_holds_the_peak_and_no_warmup_starts_at_it():
  assert [_lr("constant", c) for c in (2, 5, 10, 14)] == pytest.approx([PEAK] * 4, rel=1e-6)
  assert _lr("cosine", 0, warmup=0) == pytest.approx(PEAK, rel=1e-6)
  assert _lr("cosine", 5, warmup=0) == pytest.approx(PEAK * (0.1 + 0.45), rel=1e-6)  # half of 10 steps


def test_an_unknown_schedule_is_named():
  with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'; expected one of cosine, linear, constant"):
    _lr("step", 0)
