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


def test_a_phase_longer_than_its_interpolated_context_is_noted():
  """tiny: 256 positions; extend and instruct interpolate x8 to 2048. seq_len 4096 at x8 reaches past them."""
  base = config_lib.model_config(config_lib.load_config(str(train_helpers.TINY)))
  by_name = _phases("--config.phases.extend.seq_len=4096")
  assert phases_lib.context_note(base, by_name["pretrain"]) == ""
  assert phases_lib.context_note(base, by_name["instruct"]) == ""
  assert phases_lib.context_note(base, by_name["extend"]) == (
      "note: phase extend's seq_len 4096 reaches past the 2048 positions that config.model.max_position_embeddings="
      "256 x rope_scaling_factor 8 covers: positions beyond them are new to the model, and the trained model "
      "declares 4096; to interpolate instead, set config.phases.extend.rope_scaling_factor=16")
