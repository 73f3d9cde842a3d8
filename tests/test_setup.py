"""setup: the mesh and the phase checks that the trainer and `heal-jax plan` share."""

import pathlib

import jax
import pytest

from heal_jax import config as config_lib
from heal_jax.train import phases as phases_lib, setup

TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py")


def _phase(config, name):
  phase = next(p for p in phases_lib.from_config(config) if p.name == name)
  return phase, phases_lib.model_config(config_lib.model_config(config), phase)


def test_mesh_from_config_fills_the_minus_one_axis():
  config = config_lib.load_config(TINY, ["--config.mesh.data=2", "--config.mesh.fsdp=-1"])
  mesh = setup.make_mesh(config, jax.devices()[:8])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_check_phase_batch_split_and_replicated_parameters():
  """tiny's extend phase at 4 rows a step: 2 x 2 devices take them, 8 do not, nor 2 micro-steps of
  2 rows over 4 devices. A mesh of data only replicates every parameter: refused above the limit."""
  rows = "--config.phases.extend.global_batch=4"
  config = config_lib.load_config(TINY, ["--config.mesh.data=2", "--config.mesh.fsdp=2", rows])
  phase, cfg = _phase(config, "extend")
  setup.check_phase(config, phase, cfg, setup.make_mesh(config, jax.devices()[:4]))
  wide = config_lib.load_config(TINY, ["--config.mesh.data=2", "--config.mesh.fsdp=4", rows])
  with pytest.raises(ValueError, match=r"phase extend: global batch 4 / train.micro_steps=1 must be a multiple of "
                                       r"the data x fsdp devices \(8\)"):
    setup.check_phase(wide, phase, cfg, setup.make_mesh(wide, jax.devices()[:8]))
  micro = config_lib.load_config(TINY, ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.train.micro_steps=2",
                                        rows])
  with pytest.raises(ValueError, match=r"train.micro_steps=2 must be a multiple of the data x fsdp devices \(4\)"):
    setup.check_phase(micro, phase, cfg, setup.make_mesh(micro, jax.devices()[:4]))
  data_only = config_lib.load_config(TINY, ["--config.mesh.data=4", "--config.mesh.fsdp=1",
                                            "--config.mesh.max_replicated_elements=1000", rows])
  with pytest.raises(ValueError, match=r"parameter .* would be replicated on every device .*fsdp and tensor are 1"):
    setup.check_phase(data_only, phase, cfg, setup.make_mesh(data_only, jax.devices()[:4]))


def test_a_model_rope_scaling_is_refused_in_training_where_phases_set_it(tmp_path):
  """--config.model.rope_scaling_factor=2 used to be accepted and silently replaced by each phase's
  factor; training now refuses it, naming the phase field, before writing anything."""
  from heal_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(TINY, ["--config.model.rope_scaling_factor=2"])
  with pytest.raises(config_lib.ConfigError, match=r"config.model.rope_scaling_factor=2 is not used in training: "
                                                   r"each phase sets its own \(config.phases.pretrain.rope_scaling"
                                                   r"_factor=1\)"):
    loop.train(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()
  phase, cfg = _phase(config_lib.load_config(TINY, []), "extend")
  assert cfg.rope_scaling_factor == phase.rope_scaling_factor == 8.0
