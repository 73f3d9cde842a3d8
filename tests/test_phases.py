"""phases.from_config: mixture weights (numbers or the sources' own), validation naming the key."""

import pytest

from heal_jax import config as config_lib
from heal_jax.train import phases as phases_lib

from tests import train_helpers


def _phases(*overrides: str) -> dict[str, phases_lib.Phase]:
  config = config_lib.load_config(str(train_helpers.TINY), list(overrides))
  return {p.name: p for p in phases_lib.from_config(config)}


def test_a_bare_source_name_takes_the_sources_own_weight():
  """tiny.py's pretraining names its sources bare, so overriding a source's weight changes that phase
  (it used to repeat the numbers, and the override did nothing); a phase's own numbers stay."""
  default = _phases()
  assert default["pretrain"].weights == {"general": 1.0, "medical": 1.0, "clinical": 1.0}
  changed = _phases("--config.data.sources.general.weight=5")
  assert changed["pretrain"].weights == {"general": 5.0, "medical": 1.0, "clinical": 1.0}
  assert changed["extend"].weights == changed["pretrain"].weights
  assert changed["instruct"].weights == default["instruct"].weights == {"instructions": 1.0, "clinical": 2.0}
  mixed = _phases("--config.phases.pretrain.weights=general=3,medical")
  assert mixed["pretrain"].weights == {"general": 3.0, "medical": 1.0}
  assert _phases("--config.phases.pretrain.weights=")["pretrain"].weights == {
      "general": 1.0, "medical": 1.0, "clinical": 1.0, "instructions": 1.0}  # "": every source


@pytest.mark.parametrize("overrides, message", [
    (["--config.phases.pretrain.weights=,"], r"config.phases.pretrain.weights=',' names no source"),
    (["--config.phases.pretrain.weights=general=0"],
     r"config.phases.pretrain.weights: source 'general' has weight 0.0; a weight is a finite number > 0"),
    (["--config.data.sources.general.weight=0"],  # read through the bare name in pretrain
     r"config.data.sources.general.weight: weight 0.0; a weight is a finite number > 0"),
    (["--config.phases.pretrain.weights=general=1,pubmed"], r"unknown source 'pubmed'"),
    (["--config.phases.pretrain.weights=general=,medical"], r"bad entry 'general=', expected source=number"),
    (["--config.phases.pretrain.weights=general,general=2"], r"'general' is given twice"),
    (["--config.phases.extend.rope_scaling_factor=0.5"],
     r"config.phases.extend.rope_scaling_factor=0.5: must be >= 1 \(1: no interpolation"),
    (["--config.phases.pretrain.steps=0"], r"config.phases.pretrain.steps=0: must be > 0$"),
    (["--config.phases.pretrain.seq_len=1"], r"config.phases.pretrain.seq_len=1: must be >= 2$"),
    (["--config.phases.extend.global_batch=-1"], r"config.phases.extend.global_batch=-1: must be >= 0 \(0: config"),
    (["--config.phases.pretrain.peak_lr=-1e-3"], r"config.phases.pretrain.peak_lr=-0.001: must be >= 0$"),
    (["--config.phases.pretrain.end_lr_ratio=1.5"], r"config.phases.pretrain.end_lr_ratio=1.5: must be in \[0, 1\]$"),
])
def test_bad_weights_and_phase_numbers_name_the_key_and_value(overrides, message):
  with pytest.raises(ValueError, match=message):
    _phases(*overrides)


def test_a_phase_past_the_positions_the_model_was_trained_at_is_noted():
  """tiny: pretraining at 256 from scratch, then x8 to 2048 (256 before interpolation): nothing new.
  Extension to 4096 at x8 reaches 512 before interpolation: noted, with a factor that covers it."""
  base = config_lib.model_config(config_lib.load_config(str(train_helpers.TINY)))
  phases = list(_phases("--config.phases.extend.seq_len=4096").values())
  by_name = {p.name: p for p in phases}
  for from_checkpoint in (False, True):
    assert phases_lib.context_note(phases, by_name["pretrain"], base, from_checkpoint) == ""
  assert phases_lib.context_note(phases, by_name["extend"], base, False) == (
      "note: phase extend's seq_len 4096 at rope x8 reaches position 512 before interpolation, past the 256 the "
      "model has been trained at (config.model.max_position_embeddings of the checkpoint it starts from, and the "
      "earlier phases): those positions are new to it; to interpolate instead, set "
      "config.phases.extend.rope_scaling_factor=16")
  assert phases_lib.context_note(phases, by_name["instruct"], base, False) == ""  # extend trained them
  # From scratch, a first phase longer than max_position_embeddings is no note (every position is new).
  longer = list(_phases("--config.phases.pretrain.seq_len=512").values())
  assert phases_lib.context_note(longer, longer[0], base, False) == ""
  assert "past the 256 the model" in phases_lib.context_note(longer, longer[0], base, True)
  # The suggested factor is rounded up: 4096 / 3000 = 1.36533... -> 1.366 (x1.365 would stop at 4095.9).
  odd = base.replace(max_position_embeddings=3000)
  one = list(_phases("--config.phases.pretrain.seq_len=4096").values())
  assert phases_lib.context_note(one, one[0], odd, True).endswith("rope_scaling_factor=1.366")
