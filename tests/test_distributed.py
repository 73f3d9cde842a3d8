"""Where the multi-process topology comes from: config, then SLURM, then environment, else one process."""

from __future__ import annotations

import ml_collections
import pytest

from heal_jax.parallel import distributed


def _cfg(**kw):
  base = dict(coordinator_address="", num_processes=0, process_id=-1, initialization_timeout_s=300,
              heartbeat_timeout_s=60)
  return ml_collections.ConfigDict({**base, **kw})


def test_order_config_slurm_environment_single():
  env = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0",
         "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_NUM_NODES": "2", "HEAL_COORDINATOR_ADDRESS": "h:1", "HEAL_NUM_PROCESSES": "2", "HEAL_PROCESS_ID": "1"}
  topo = distributed.detect(_cfg(coordinator_address="c:9", num_processes=3, process_id=0), env)
  assert (topo.source, topo.coordinator_address, topo.num_processes, topo.process_id) == ("config", "c:9", 3, 0)
  topo = distributed.detect(_cfg(), env)
  assert (topo.source, topo.num_processes, topo.process_id) == ("slurm", 4, 2)
  env.pop("SLURM_JOB_ID")
  topo = distributed.detect(_cfg(), env)
  assert (topo.source, topo.coordinator_address, topo.num_processes, topo.process_id) == ("environment", "h:1", 2, 1)
  topo = distributed.detect(_cfg(), {"JAX_COORDINATOR_ADDRESS": "j:2", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})
  assert topo.source == "environment" and topo.coordinator_address == "j:2"
  assert distributed.detect(_cfg(), {}).source == "single process"
  assert distributed.detect(_cfg(), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).source == "single process"


def test_a_slurm_allocation_outside_an_srun_step_is_named():
  """SLURM_JOB_ID and SLURM_NTASKS without the step's variables (an salloc shell): jax's SLURM
  detection failed with a traceback ending in KeyError: 'SLURM_STEP_NODELIST'."""
  with pytest.raises(ValueError, match=r"SLURM_NTASKS=2 are set but SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST, "
                                       r"SLURM_STEP_NUM_NODES not: .* launch it with srun"):
    distributed.detect(_cfg(), {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2"})
  step = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "two", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
          "SLURM_STEP_NODELIST": "n1", "SLURM_STEP_NUM_NODES": "1"}
  with pytest.raises(ValueError, match="SLURM_NTASKS='two' and SLURM_PROCID='0' must be whole numbers"):
    distributed.detect(_cfg(), step)
  for ntasks, procid in (("2", "3"), ("-2", "0")):
    with pytest.raises(ValueError, match=f"SLURM_PROCID={procid} with SLURM_NTASKS={ntasks} is not a task of the job"):
      distributed.detect(_cfg(), {**step, "SLURM_NTASKS": ntasks, "SLURM_PROCID": procid})


def test_bad_topologies_name_the_setting():
  with pytest.raises(ValueError, match="HEAL_PROCESS_ID=2 is not in"):
    distributed.detect(_cfg(), {"HEAL_COORDINATOR_ADDRESS": "h:1", "HEAL_NUM_PROCESSES": "2", "HEAL_PROCESS_ID": "2"})
  with pytest.raises(ValueError, match="HEAL_NUM_PROCESSES / HEAL_PROCESS_ID"):
    distributed.detect(_cfg(), {"HEAL_COORDINATOR_ADDRESS": "h:1"})
  with pytest.raises(ValueError, match="config.distributed"):
    distributed.detect(_cfg(coordinator_address="c:9", num_processes=2, process_id=5), {})
  with pytest.raises(ValueError, match=r"HEAL_COORDINATOR_ADDRESS='localhost': expected host:port"):
    distributed.detect(_cfg(), {"HEAL_COORDINATOR_ADDRESS": "localhost", "HEAL_NUM_PROCESSES": "2",
                                "HEAL_PROCESS_ID": "0"})
  with pytest.raises(ValueError, match=r"config.distributed.coordinator_address='c:99999': expected host:port"):
    distributed.detect(_cfg(coordinator_address="c:99999", num_processes=2, process_id=0), {})
  with pytest.raises(ValueError, match="HEAL_NUM_PROCESSES=2 is set but HEAL_COORDINATOR_ADDRESS is not"):
    distributed.detect(_cfg(), {"HEAL_NUM_PROCESSES": "2", "HEAL_PROCESS_ID": "1", "HEAL_COORDINATOR_ADRESS": "h:1"})
  with pytest.raises(ValueError, match="num_processes=4 needs config.distributed.coordinator_address"):
    distributed.detect(_cfg(num_processes=4, process_id=0), {})
  with pytest.raises(ValueError, match="process_id=5 needs config.distributed.coordinator_address"):
    distributed.detect(_cfg(process_id=5), {})  # it was ignored: a single-process run
  assert distributed.detect(_cfg(), {"HEAL_NUM_PROCESSES": "1"}).source == "single process"


def test_differences_name_every_differing_or_missing_key():
  mine = {"config": {"seed": 0, "phases": {"pretrain": {"peak_lr": 0.003, "steps": 40}}}, "workdir": "/w"}
  theirs = {"config": {"seed": 0, "phases": {"pretrain": {"peak_lr": 0.0001}}, "init_from": ""}, "workdir": "/v"}
  assert distributed.differences(mine, theirs) == [
      "config.init_from: '(missing)' vs ''", "config.phases.pretrain.peak_lr: 0.003 vs 0.0001",
      "config.phases.pretrain.steps: 40 vs '(missing)'", "workdir: '/w' vs '/v'"]
  assert distributed.differences(mine, mine) == []
