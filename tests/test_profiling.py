"""profiling: a jax profiler trace of chosen training steps, written per process, stopped at phase end."""

import jax
import pytest

from heal_jax.train import loop

from tests import train_helpers


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_helpers.make_corpus(tmp_path_factory.mktemp("profile_data"))


def test_trace_of_chosen_steps_and_stopped_at_phase_end(data_root, tmp_path, capsys):
  one = jax.devices()[:1]
  extra = ("--config.mesh.fsdp=1", "--config.metrics.profile_after_step=1", "--config.metrics.profile_steps=2")
  loop.train(train_helpers.load(data_root, 4, extra), tmp_path / "w", devices=one)
  err = capsys.readouterr().err
  trace_dir = tmp_path / "w" / "profile" / "process_0"
  assert f"profile of steps 2..3 written under {trace_dir}" in err
  traces = list(trace_dir.glob("plugins/profile/*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  # A trace running into the phase's end stops there; one after the run's last step is never taken.
  loop.train(train_helpers.load(data_root, 4, ("--config.mesh.fsdp=1", "--config.metrics.profile_after_step=3",
                                               "--config.metrics.profile_steps=10")), tmp_path / "x", devices=one)
  assert f"profile of steps 4..4 written under {tmp_path / 'x' / 'profile' / 'process_0'}" in capsys.readouterr().err
  loop.train(train_helpers.load(data_root, 4, ("--config.mesh.fsdp=1", "--config.metrics.profile_after_step=9",
                                               "--config.metrics.profile_steps=1")), tmp_path / "y", devices=one)
  assert "profile" not in capsys.readouterr().err and not (tmp_path / "y" / "profile").exists()
