"""Multi-controller start-up: one Python process per host (or per GPU), joined by jax.distributed.

Where the topology comes from, first match wins:
  1. config.distributed.{coordinator_address, num_processes, process_id} when coordinator_address is set;
  2. SLURM (SLURM_JOB_ID and SLURM_NTASKS > 1): jax's own SLURM detection (coordinator = first node of
     the allocation, one process per task; with one task per GPU each process sees its GPU);
  3. environment: HEAL_COORDINATOR_ADDRESS, HEAL_NUM_PROCESSES, HEAL_PROCESS_ID (set by
     launch/local.sh and the Kubernetes JobSet), or JAX's JAX_COORDINATOR_ADDRESS /
     JAX_NUM_PROCESSES / JAX_PROCESS_ID;
  4. otherwise a single process (nothing to initialise).
A peer that dies is noticed by the coordination service's heartbeat
(config.distributed.heartbeat_timeout_s) and the survivors exit with an error instead of hanging.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Mapping

import jax


@dataclasses.dataclass(frozen=True)
class Topology:
  """How this process joins the job; `source` says where it came from."""
  coordinator_address: str | None
  num_processes: int
  process_id: int
  source: str


def _check_address(address: str, where: str) -> str:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"{where}={address!r}: expected host:port (port 1-65535)")
  return address


def detect(config_distributed: Any, env: Mapping[str, str] | None = None) -> Topology:
  """The topology by the rules of the module docstring (pure: reads `env`, starts nothing).

  A process count above 1 without a coordinator address is an error: run alone, each process would
  train as a single-process job in the same work directory.
  """
  env = os.environ if env is None else env
  d = config_distributed
  if d.num_processes > 1 and not d.coordinator_address:
    raise ValueError(f"config.distributed.num_processes={d.num_processes} needs config.distributed.coordinator_address")
  if d.coordinator_address:
    _check_address(d.coordinator_address, "config.distributed.coordinator_address")
    if d.num_processes < 1 or not 0 <= d.process_id < d.num_processes:
      raise ValueError(f"config.distributed: process_id={d.process_id} num_processes={d.num_processes} "
                       "do not describe a process of the job")
    return Topology(d.coordinator_address, d.num_processes, d.process_id, "config")
  if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
    return Topology(None, int(env["SLURM_NTASKS"]), int(env.get("SLURM_PROCID", "0")), "slurm")
  for prefix in ("HEAL_", "JAX_"):
    addr = env.get(f"{prefix}COORDINATOR_ADDRESS")
    if not addr and env.get(f"{prefix}NUM_PROCESSES", "1").strip() not in ("", "0", "1"):
      raise ValueError(f"{prefix}NUM_PROCESSES={env[f'{prefix}NUM_PROCESSES']} is set but {prefix}COORDINATOR_ADDRESS "
                       "is not: every process would train alone")
    if addr:
      _check_address(addr, f"{prefix}COORDINATOR_ADDRESS")
      try:
        n, pid = int(env[f"{prefix}NUM_PROCESSES"]), int(env[f"{prefix}PROCESS_ID"])
      except (KeyError, ValueError):
        raise ValueError(f"{prefix}COORDINATOR_ADDRESS is set but {prefix}NUM_PROCESSES / {prefix}PROCESS_ID "
                         "are missing or not integers") from None
      if not 0 <= pid < n:
        raise ValueError(f"{prefix}PROCESS_ID={pid} is not in [0, {prefix}NUM_PROCESSES={n})")
      return Topology(addr, n, pid, "environment")
  return Topology(None, 1, 0, "single process")


def initialize(config_distributed: Any) -> Topology:
  """Joins the job (once per process) and logs the topology from process 0."""
  topo = detect(config_distributed)
  if topo.num_processes > 1 and not jax.distributed.is_initialized():
    kwargs = dict(initialization_timeout=config_distributed.initialization_timeout_s,
                  heartbeat_timeout_seconds=config_distributed.heartbeat_timeout_s)
    if topo.source == "slurm":
      # jax's SLURM detection gives each process the GPU of its SLURM_LOCALID only; with one task
      # per node (our sbatch) every process must own all of its node's GPUs.
      gpus = os.environ.get("SLURM_GPUS_ON_NODE", "")
      if os.environ.get("SLURM_NTASKS_PER_NODE") == "1" and gpus.isdigit():
        kwargs["local_device_ids"] = list(range(int(gpus)))
      jax.distributed.initialize(cluster_detection_method="slurm", **kwargs)
    else:
      jax.distributed.initialize(topo.coordinator_address, topo.num_processes, topo.process_id, **kwargs)
  if jax.process_index() == 0:
    print(f"[distributed] {jax.process_count()} process(es) ({topo.source}), {jax.local_device_count()} local "
          f"{jax.default_backend()} device(s) each, {jax.device_count()} in all", file=sys.stderr, flush=True)
  return topo
