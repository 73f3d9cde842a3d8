"""`heal-jax plan`: will a run fit, and how long will a step take, before renting the cluster.

For every phase of the config, the train step is compiled ahead of time (nothing is allocated:
abstract inputs; phases with the same model, length and rows share one compile) against a mesh of
`plan.devices` fake CPU devices, with the run's shardings, remat and micro-batching;
`attention_impl="auto"` is planned as it runs on a GPU (our Pallas kernel, compiled here in interpret
mode: memory linear in the sequence length, not XLA's L x L scores).
Reported per device: parameters and optimizer state (exact, from the
shardings), activations and temporaries (XLA's memory analysis of the compiled step: the CPU
backend's buffer assignment, an estimate of the GPU one), the total against the usable memory,
plan.memory_fraction of plan.device_memory_gb;
model FLOPs per step (PaLM's count, see heal_jax.train.metrics) and XLA's FLOP count of the
compiled per-device program; and the step time implied by plan.mfu of plan.peak_tflops.
The last line printed is one JSON object: per_device_bytes, flops_per_step, fits, phases; the first
two are those of the phase that needs the most memory per device (each phase's own are in phases).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from typing import Any, Sequence


def _ensure_devices(n: int, argv: Sequence[str]) -> int | None:
  """Re-runs this command in a fresh process with n fake CPU devices if jax has fewer; else None."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.device_count() >= n and jax.default_backend() == "cpu":
    return None
  if os.environ.get("HEAL_JAX_PLAN_CHILD"):
    raise RuntimeError(f"could not get {n} fake CPU devices (have {jax.device_count()})")
  env = dict(os.environ, HEAL_JAX_PLAN_CHILD="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip())
  return subprocess.call([sys.executable, "-m", "heal_jax.train.plan", *argv], env=env)


def _sharded_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (largest shard)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  total = 0
  for leaf in jax.tree.leaves(tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard)) * leaf.dtype.itemsize
  return total


@contextlib.contextmanager
def _planned_devices(config: Any):
  """A mesh or batch that does not fit says which device count was planned for."""
  try:
    yield
  except ValueError as e:
    raise ValueError(f"{e} (planned for config.plan.devices={config.plan.devices}: give "
                     "--config.plan.devices=N for the cluster the run is for)") from None


def plan_phase(config: Any, phase: Any, mesh: Any) -> dict[str, Any]:
  """Compiles one phase's train step for `mesh` and measures it (see the module docstring)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from heal_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from heal_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from heal_jax.train import metrics, optimizer as opt_lib, phases as phases_lib, setup, state as state_lib  # pylint: disable=import-outside-toplevel
  from heal_jax.model import attention  # pylint: disable=import-outside-toplevel

  cfg = phases_lib.model_config(config_lib.model_config(config), phase)
  cfg = cfg.replace(attention_impl=attention.resolve_impl(cfg.attention_impl, "gpu"))
  tx = opt_lib.make_optimizer(opt_lib.hyperparams(phase.optimizer))
  p_shard = state_lib.param_shardings(cfg, mesh)
  abstract = jax.eval_shape(lambda: state_lib.new_state(state_lib.unboxed_init(cfg, jax.random.PRNGKey(0)), tx,
                                                        jax.random.PRNGKey(0)))
  st_shard = state_lib.state_shardings(abstract, p_shard, mesh)
  with _planned_devices(config):
    setup.check_phase(config, phase, cfg, mesh)
  state_in = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, st_shard)
  b_shard = mesh_lib.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((phase.global_batch, phase.seq_len), jnp.int32, sharding=b_shard)
           for k in ("tokens", "segment_ids", "positions", "loss_mask", "source")}
  num_sources = max(len(config.data.sources), 1)
  step_fn = setup.phase_train_step(config, cfg, st_shard, mesh, num_sources)
  hp = {k: jax.ShapeDtypeStruct((), jnp.float32, sharding=mesh_lib.replicated(mesh)) for k in opt_lib.HYPERPARAMS}
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
    compiled = step_fn.lower(state_in, batch, hp).compile()
  mem = compiled.memory_analysis()
  params_b = _sharded_bytes(state_in.params)
  opt_b = _sharded_bytes(state_in.opt_state)
  temp_b = int(mem.temp_size_in_bytes)
  batch_b = _sharded_bytes(batch)
  per_device = params_b + opt_b + temp_b + batch_b
  tokens = phase.global_batch * phase.seq_len
  model_flops = metrics.flops_per_token(cfg, phase.seq_len) * tokens
  peak = config.plan.peak_tflops * 1e12
  return {"phase": phase.name, "seq_len": phase.seq_len, "global_batch": phase.global_batch,
          "params_bytes": params_b, "optimizer_bytes": opt_b, "activation_temp_bytes": temp_b,
          "batch_bytes": batch_b, "per_device_bytes": per_device, "tokens_per_step": tokens,
          "model_flops_per_step": model_flops,
          "step_time_s": model_flops / (config.plan.devices * peak * config.plan.mfu)}


def check_plan_config(plan: Any) -> None:
  """ValueError naming the first `config.plan` field that cannot describe a cluster."""
  for key in ("devices", "device_memory_gb", "peak_tflops", "mfu"):
    if not plan[key] > 0:
      raise ValueError(f"config.plan.{key}={plan[key]!r} must be > 0")
  for key in ("mfu", "memory_fraction"):
    if not 0 < plan[key] <= 1:
      raise ValueError(f"config.plan.{key}={plan[key]!r} is a fraction: in (0, 1]")


def run_plan(config: Any) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  from heal_jax.train import phases as phases_lib, setup  # pylint: disable=import-outside-toplevel
  from heal_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  devices = jax.devices()[:config.plan.devices]
  with _planned_devices(config):
    mesh = setup.make_mesh(config, devices)
  rows, measured = [], {}
  for phase in phases_lib.from_config(config):
    # Phases with the same model, rows and length run the same program (the optimizer's numbers are its
    # arguments), as the paper's extend and instruct phases do: compiled once, each phase's row its own.
    key = (phases_lib.model_config(config_lib.model_config(config), phase), phase.seq_len, phase.global_batch)
    if key in measured:
      with _planned_devices(config):
        setup.check_phase(config, phase, key[0], mesh)
      rows.append(dict(measured[key], phase=phase.name))
    else:
      rows.append(measured.setdefault(key, plan_phase(config, phase, mesh)))
  limit = config.plan.device_memory_gb * config.plan.memory_fraction * 1024**3
  worst = max(rows, key=lambda r: r["per_device_bytes"])
  cfg = config_lib.model_config(config)
  total_tokens = sum(p.steps * r["tokens_per_step"] for p, r in zip(phases_lib.from_config(config), rows))
  total_time = sum(p.steps * r["step_time_s"] for p, r in zip(phases_lib.from_config(config), rows))
  return {"params": cfg.num_params(), "devices": config.plan.devices, "mesh": dict(mesh.shape),
          "per_device_bytes": worst["per_device_bytes"], "flops_per_step": worst["model_flops_per_step"],
          "fits": bool(worst["per_device_bytes"] <= limit), "device_memory_bytes": int(limit),
          "total_tokens": total_tokens, "total_hours_at_mfu": total_time / 3600, "phases": rows}


def _count(n: float) -> str:
  """1.5e10 -> "15.00B", 1.0e6 -> "1.00M", 716800 -> "716.80K"."""
  for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
    if n >= scale:
      return f"{n / scale:.2f}{suffix}"
  return f"{n:g}"


def _table(result: dict[str, Any], config: Any) -> str:
  gib = lambda b: f"{b / 1024**3:8.2f}"
  lines = [f"plan: {_count(result['params'])} parameters on {result['devices']} devices, mesh {result['mesh']}, "
           f"{config.plan.device_memory_gb:g} GiB each ({result['device_memory_bytes'] / 1024**3:.1f} usable), "
           f"peak {config.plan.peak_tflops:g} TFLOP/s, "
           f"assumed MFU {config.plan.mfu:.0%}",
           "phase        seq  batch  params GiB  optim GiB  activ GiB   total GiB  TFLOP/step  step s",
           "-" * 92]
  for r in result["phases"]:
    lines.append(f"{r['phase']:<10} {r['seq_len']:>5} {r['global_batch']:>6} {gib(r['params_bytes'])}   "
                 f"{gib(r['optimizer_bytes'])}  {gib(r['activation_temp_bytes'])}   {gib(r['per_device_bytes'])}"
                 f"  {r['model_flops_per_step'] / 1e12:10.1f}  {r['step_time_s']:6.2f}")
  hours = result["total_hours_at_mfu"]
  lines.append(f"fits: {'yes' if result['fits'] else 'NO'}; {_count(result['total_tokens'])} tokens in "
               + (f"{hours:.1f} h" if hours >= 0.1 else f"{hours * 3600:.1f} s") + " at the assumed MFU")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """`heal-jax plan --config CONFIG [--config.x=y ...]`."""
  argv = list(sys.argv[1:] if argv is None else argv)
  from heal_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="heal-jax plan", description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py; then --config.x=y overrides")
  try:
    overrides, rest = config_lib.split_overrides(argv)
    args = parser.parse_args(rest)
    config = config_lib.load_config(args.config, overrides)
    check_plan_config(config.plan)
    child = _ensure_devices(config.plan.devices, argv)
    if child is not None:
      return child
    result = run_plan(config)
  except (ValueError, RuntimeError) as e:
    print(f"heal-jax plan: error: {e}", file=sys.stderr)
    return 2
  print(_table(result, config))
  print(json.dumps({k: result[k] for k in ("per_device_bytes", "flops_per_step", "fits", "params", "devices",
                                           "total_tokens")} | {"phases": result["phases"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
