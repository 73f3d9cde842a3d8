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
Every process must run the same command: `check_same_run` compares the processes' resolved configs,
work directories and topologies at start-up, before any of them trains (a different learning rate on
one process used to train silently; a different shape or checkpoint interval, to hang).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import sys
from typing import Any, Mapping

import jax
import numpy as np


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
  if d.process_id != -1 and not d.coordinator_address:  # (it would be ignored)
    raise ValueError(f"config.distributed.process_id={d.process_id} needs config.distributed.coordinator_address and "
                     "num_processes")
  if d.coordinator_address:
    _check_address(d.coordinator_address, "config.distributed.coordinator_address")
    if d.num_processes < 1 or not 0 <= d.process_id < d.num_processes:
      raise ValueError(f"config.distributed: process_id={d.process_id} num_processes={d.num_processes} "
                       "do not describe a process of the job")
    return Topology(d.coordinator_address, d.num_processes, d.process_id, "config")
  if env.get("SLURM_JOB_ID") and env.get("SLURM_NTASKS", "1").strip() not in ("", "0", "1"):
    # what jax's SLURM detection reads: only a task of an srun step has them all
    missing = [k for k in ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NODELIST",
                           "SLURM_STEP_NUM_NODES") if not env.get(k, "").strip()]
    if missing:
      raise ValueError(f"SLURM_JOB_ID and SLURM_NTASKS={env['SLURM_NTASKS']} are set but {', '.join(missing)} "
                       "not: this process is not a task of an srun step (an salloc shell?); launch it with srun "
                       "(launch/slurm.sbatch does), or unset SLURM_NTASKS to train in one process")
    try:
      n, pid = int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
    except ValueError:
      raise ValueError(f"SLURM_NTASKS={env['SLURM_NTASKS']!r} and SLURM_PROCID={env['SLURM_PROCID']!r} must be "
                       "whole numbers") from None
    if n < 2 or not 0 <= pid < n:
      raise ValueError(f"SLURM_PROCID={pid} with SLURM_NTASKS={n} is not a task of the job")
    return Topology(None, n, pid, "slurm")
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


def _check_port_free(address: str) -> None:
  """ValueError if the coordinator's port is taken on this host (the coordinator's gRPC server would
  otherwise die with a segfault and a bare "Failed to add port")."""
  port = int(address.rpartition(":")[2])
  for family, any_host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):  # gRPC listens on [::]:port
    try:
      with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a port in TIME_WAIT is free
        if family == socket.AF_INET6:  # dual-stack, as gRPC: an IPv4 listener on the port counts too
          probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((any_host, port))
      return
    except OSError as e:
      if e.errno != errno.EADDRINUSE:
        continue  # (no IPv6 here, say): try the next family; jax reports what else goes wrong
      raise ValueError(f"coordinator address {address}: port {port} is in use on this host ({e.strerror}); "
                       "choose another port (launch/local.sh --port, HEAL_COORDINATOR_ADDRESS)") from None


def initialize(config_distributed: Any) -> Topology:
  """Joins the job (once per process) and logs the topology from process 0."""
  topo = detect(config_distributed)
  if topo.num_processes > 1 and not jax.distributed.is_initialized():
    kwargs = dict(initialization_timeout=config_distributed.initialization_timeout_s,
                  heartbeat_timeout_seconds=config_distributed.heartbeat_timeout_s)
    if topo.process_id == 0 and topo.coordinator_address:
      _check_port_free(topo.coordinator_address)
    print(f"[distributed] process {topo.process_id} of {topo.num_processes} ({topo.source}) joining "
          f"{topo.coordinator_address or 'the SLURM coordinator'}; waiting up to "
          f"{config_distributed.initialization_timeout_s} s for all {topo.num_processes} (a process missing then "
          "ends every process with a DEADLINE_EXCEEDED abort)", file=sys.stderr, flush=True)
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


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def differences(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
  """"key: A vs B" for every flattened key whose value differs (or is missing on one side)."""
  a, b = _flat(mine), _flat(theirs)
  return [f"{k}: {a.get(k, '(missing)')!r} vs {b.get(k, '(missing)')!r}" for k in sorted(set(a) | set(b))
          if a.get(k, "(missing)") != b.get(k, "(missing)")]


def check_same_run(run: Mapping[str, Any]) -> None:
  """Every process of the job describes the same run: `run` (JSON-able: the resolved config, the
  work directory, the topology it was started with) equals process 0's. All processes take part
  (two small all-gathers) and all raise the same ValueError naming the differing keys, so none
  trains or waits alone. Nothing to do in a single-process job."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  data = np.frombuffer(json.dumps(run, sort_keys=True).encode("utf-8"), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int64(data.size))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  everyone = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  runs = [json.loads(everyone[i, :sizes[i]].tobytes().decode("utf-8")) for i in range(len(sizes))]
  problems = []
  for i, other in enumerate(runs[1:], 1):
    diff = differences(runs[0], other)
    if diff:
      shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
      problems.append(f"process {i} differs from process 0 ({shown})")
  if problems:
    raise ValueError("the processes of this job were not started with the same command (config overrides, "
                     "--workdir, topology): " + ". ".join(problems) + ". Start every process with the same "
                     "command (launch/local.sh, launch/slurm.sbatch and the JobSet do)")
