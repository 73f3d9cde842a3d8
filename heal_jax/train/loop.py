"""The training loop: phases in order, automatic resume, checkpoints, metrics, held-out eval, SIGTERM.

`train(config, workdir)` is all of `heal-jax train`. Re-running it on the same work directory
resumes from the newest completed checkpoint, inside the right phase, with the data iterator where
it was: the result is bitwise the same as an uninterrupted run (CPU, fp32).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from heal_jax import config as config_lib
from heal_jax.checkpoint import workdir_restore
from heal_jax.data import mixture, pipeline, sources, tokenizer as tokenizer_lib
from heal_jax.model.config import ModelConfig
from heal_jax.parallel import mesh as mesh_lib
from heal_jax.train import checkpointing, init as init_lib, metrics as metrics_lib
from heal_jax.train import optimizer as optimizer_lib, phases as phases_lib, state as state_lib, step as step_lib
from heal_jax.train import preemption, profiling, setup, workdir_lock


class Process0Failed(RuntimeError):
  """A step only process 0 runs (lock, bootstrap, sample note) failed there; its log says why."""


class TrainingHalted(RuntimeError):
  """Too many consecutive skipped steps (non-finite, or no target token); the newest checkpoint is the last good state."""


def _global_batch(local: dict[str, np.ndarray], sharding, global_rows: int) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v, (global_rows,) + v.shape[1:])
          for k, v in local.items()}


@dataclasses.dataclass
class _Run:
  """What the phases share: config, mesh, data, checkpoint manager, writer."""
  config: Any
  workdir: pathlib.Path
  mesh: Any
  data: mixture.RunData
  source_names: list[str]
  mngr: Any
  writer: metrics_lib.MetricWriter
  preempt: preemption.Preemption
  base_cfg: ModelConfig
  task_examples: dict[str, list]  # config.eval.tasks, read once at start
  phases: list[phases_lib.Phase]
  # The train step and held-out eval per phase model: phases that differ in data, length or schedule only
  # reuse one compiled step (its optimizer numbers are arguments).
  step_fns: dict[ModelConfig, Any] = dataclasses.field(default_factory=dict)
  eval_fns: dict[ModelConfig, Any] = dataclasses.field(default_factory=dict)
  note_programs: dict[Any, Any] = dataclasses.field(default_factory=dict)  # note_eval's decode programs, kept


# Where each field of `_spec` comes from, for a refused data state's message.
_SPEC_FROM = {
    "seed": "config.seed + 1000 x the phase's index", "worker_count": "config.data.worker_count",
    "num_shards": ("config.data.num_shards (0: one per process; to resume on another number of processes, set "
                   "it to the saved value)"), "seq_len": "config.phases.{phase}.seq_len",
    "global_batch": "config.phases.{phase}.global_batch (0: config.train.global_batch)",
    "weights": "config.phases.{phase}.weights", "instruction_tuning": "config.phases.{phase}.instruction_tuning",
    "records": "config.data.dedup, or the report of config.data.prepared_dir",
    "pack_defer": "config.data.pack_defer (runs started before 2026-11-29 packed as 0 does)",
    "examples": "the sources' kept records (data.sources, data.dedup) less config.eval.holdout_examples",
}


def _spec(run: _Run, phase: phases_lib.Phase) -> pipeline.PipelineSpec:
  num_shards = setup.num_shards(run.config)
  return pipeline.PipelineSpec(
      seq_len=phase.seq_len, global_batch=phase.global_batch, weights=phase.weights,
      instruction_tuning=phase.instruction_tuning, seed=run.config.seed + 1000 * phase.index,
      num_shards=num_shards, worker_count=run.config.data.worker_count, records=run.data.records,
      pack_defer=run.config.data.pack_defer)


def _eval_fn(cfg: ModelConfig, num_sources: int):
  """Jitted (params, batch) -> (per-source NLL sums, per-source target counts); `_Run.eval_fns` keeps it."""
  def fn(params, batch):
    stats = step_lib.batch_stats(params, batch, cfg, 0.0, num_sources)
    return stats["source_nll_S"], stats["source_tokens_S"]
  return jax.jit(fn)


def evaluate(run: _Run, params: Any, cfg: ModelConfig, phase: phases_lib.Phase) -> dict[str, float]:
  """Held-out loss per source (mean NLL per target token) on fixed packed batches, plus eval.tasks."""
  if not run.data.heldout:
    return evaluate_tasks(run, params, cfg)
  if cfg not in run.eval_fns:
    run.eval_fns[cfg] = _eval_fn(cfg, len(run.source_names))
  fn = run.eval_fns[cfg]
  sharding = mesh_lib.batch_sharding(run.mesh)
  nll = np.zeros(len(run.source_names))
  count = np.zeros(len(run.source_names))
  for name in run.data.heldout:
    spec = dataclasses.replace(_spec(run, phase), weights={name: 1.0}, seed=12345, worker_count=0)
    it = pipeline.BatchIterator(run.data.heldout, spec, jax.process_index(), jax.process_count())
    for _ in range(run.config.eval.batches):
      a, b = fn(params, _global_batch(next(it), sharding, spec.global_batch))
      nll += np.asarray(a)
      count += np.asarray(b)
  out = {f"loss/{n}": float(nll[i] / count[i]) for i, n in enumerate(run.source_names) if count[i] > 0}
  silent = [n for n in sorted(run.data.heldout) if count[run.source_names.index(n)] == 0]
  if silent:  # e.g. instruction tuning on prompts longer than the batches read: no response token yet
    run.writer.log(f"held-out: no target tokens from {', '.join(silent)} in {run.config.eval.batches} batch(es) "
                   f"of {phase.seq_len} tokens (no loss reported for them); raise eval.batches or the phase's seq_len")
  return {**out, **evaluate_tasks(run, params, cfg), **_note_scores(run, params, cfg, phase)}


def _note_scores(run: _Run, params: Any, cfg: ModelConfig, phase: phases_lib.Phase) -> dict[str, float]:
  """`note_eval` in instruction-tuning phases when config.eval.note_examples > 0."""
  if not (run.config.eval.note_examples and phase.instruction_tuning):
    return {}
  from heal_jax.train import note_eval  # pylint: disable=import-outside-toplevel
  return note_eval.evaluate(cfg, params, run.data, run.config.eval.note_examples, run.config.eval.note_tokens,
                            run.mesh.shape["data"] * run.mesh.shape["fsdp"], run.writer.log, run.note_programs,
                            mesh_lib.batch_sharding(run.mesh))


def _task_examples(spec: str, limit: int, workdir: pathlib.Path) -> dict[str, list]:
  """{task: examples} of config.eval.tasks, a seeded random subset of `limit` each (0 = all)."""
  from heal_jax.eval import tasks as tasks_lib  # pylint: disable=import-outside-toplevel
  out = {}
  for name, path in phases_lib.parse_pairs(spec, "config.eval.tasks").items():
    examples = tasks_lib.load_task(name, mixture.resolve(path, workdir, f"eval.tasks {name}"))[0]
    out[name] = tasks_lib.subset(examples, limit or None)
  return out


def evaluate_tasks(run: _Run, params: Any, cfg: ModelConfig) -> dict[str, float]:
  """PubMedQA/MedQA accuracy with the harness scorer: every process scores the same questions, each
  batch's rows split over the mesh's batch axes, and every process gets every result."""
  if not run.task_examples:
    return {}
  from heal_jax.eval import loglik  # pylint: disable=import-outside-toplevel
  rows = run.mesh.shape["data"] * run.mesh.shape["fsdp"]
  batch = -(-8 // rows) * rows  # at least 8 rows, split evenly over the batch devices
  out = {}
  for name, examples in run.task_examples.items():
    result = loglik.evaluate(name, cfg, params, run.data.tokenizer, examples, batch_size=batch,
                             batch_sharding=mesh_lib.batch_sharding(run.mesh))
    out[f"{name}/acc"], out[f"{name}/acc_norm"] = result["acc"], result["acc_norm"]
  return out


def _meta(run: _Run, phase: phases_lib.Phase, cfg: ModelConfig) -> dict[str, Any]:
  return {"phase": phase.name, "phase_index": phase.index, "model": cfg.to_dict(),
          "config": json.loads(run.config.to_json())}


def _save(run: _Run, step: int, state, it, phase, cfg) -> None:
  checkpointing.save(run.mngr, step, state, it, _meta(run, phase, cfg))


def run_phase(run: _Run, phase: phases_lib.Phase, state: Any, restored_step: int | None) -> tuple[Any, str]:
  """Trains `phase` from state.step to phase.end. Returns (state, "done" | "preempted")."""
  cfg = phases_lib.model_config(run.base_cfg, phase)
  config = run.config
  tx = optimizer_lib.make_optimizer(optimizer_lib.hyperparams(phase.optimizer))
  p_shard = state_lib.param_shardings(cfg, run.mesh)
  st_shard = state_lib.state_shardings(jax.eval_shape(lambda: state), p_shard, run.mesh)
  step0 = int(state.step)
  if step0 == phase.start:  # a new phase: fresh optimizer state for its schedule
    state = jax.jit(lambda s: s.replace(opt_state=tx.init(s.params)), out_shardings=st_shard)(state)
  spec = _spec(run, phase)
  it = pipeline.BatchIterator(run.data.train, spec, jax.process_index(), jax.process_count())
  shards_PxS = np.asarray(multihost_utils.process_allgather(np.asarray(it.shards, np.int32))).reshape(
      jax.process_count(), -1)  # what each process actually built, logged by process 0 only
  for p, shards in enumerate(shards_PxS):
    run.writer.log(f"process {p}/{jax.process_count()} reads data shards {shards.tolist()} of {spec.num_shards} "
                   f"({spec.global_batch // spec.num_shards * len(shards)} of {spec.global_batch} rows per step)")
  if restored_step is not None and restored_step > phase.start:
    try:
      checkpointing.restore_data(run.mngr, restored_step, it)
    except pipeline.StateMismatch as e:
      it.close()  # its Grain workers, before the error (a refused data state) ends the run
      keys = [f"{field} is {_SPEC_FROM[field].format(phase=phase.name)}" for field in e.changed if field in _SPEC_FROM]
      raise pipeline.StateMismatch(f"{e} (in the config: {'; '.join(keys)})" if keys else str(e), e.changed) from None
    except BaseException:
      it.close()
      raise
  if jax.process_index() == 0:  # Only once the config is known to fit the work directory's checkpoints.
    (run.workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
  batch_sharding = mesh_lib.batch_sharding(run.mesh)
  if cfg not in run.step_fns:
    run.step_fns[cfg] = setup.phase_train_step(config, cfg, st_shard, run.mesh, len(run.source_names))
  step_fn = run.step_fns[cfg]
  hp = step_lib.replicated_hyperparams(phase.optimizer, run.mesh)
  run.writer.log(f"phase {phase.name} ({phase.index + 1}): steps {phase.start}..{phase.end}, seq_len "
                 f"{phase.seq_len}, rope x{phase.rope_scaling_factor}, weights {phase.weights}, "
                 f"instruction tuning {'on' if phase.instruction_tuning else 'off'}, from step {step0}")
  if note := phases_lib.context_note(run.phases, phase, run.base_cfg, bool(config.init_from)):
    run.writer.log(note)
  if phase.instruction_tuning and jax.process_index() == 0:
    _log_overlong(run, phase)
  peak = metrics_lib.device_peak_flops(config.metrics.peak_tflops)
  flops_token = metrics_lib.flops_per_token(cfg, phase.seq_len)
  rows_tokens = spec.global_batch * phase.seq_len
  t_start, t_last, last_logged = time.time(), time.time(), step0
  pending, interval = None, None  # the last step's metrics; the sums of the steps since the last log
  status = "done"
  profiler = profiling.StepProfiler(run.workdir / "profile" / f"process_{jax.process_index()}",
                                    config.metrics.profile_after_step, config.metrics.profile_steps, run.writer.log)
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES), contextlib.closing(it):
    for step in range(step0, phase.end):
      profiler.before_step(step)
      batch = _global_batch(next(it), batch_sharding, spec.global_batch)
      state, metrics = step_fn(state, batch, hp)
      done = step + 1
      profiler.after_step(done, state)
      if pending is not None:
        _check_streak(pending, config.train.max_bad_steps)
      pending = metrics
      interval = metrics_lib.add_step(interval, metrics)
      host = None
      preempted = run.preempt.reached(done)  # (once per step, on every process)
      if done % config.metrics.every_steps == 0 or done == phase.end or preempted:  # no step goes unlogged
        host, sums = jax.device_get((metrics, interval))
        interval = None
        now = time.time()
        dt = (now - t_last) / max(done - last_logged, 1)
        scalars = metrics_lib.interval_scalars(sums, run.source_names)
        scalars.update({"learning_rate": host["learning_rate"], "skipped_steps": host["skipped"],
                        "step_time_s": dt, "tokens_per_s": rows_tokens / dt})
        if peak:
          scalars["mfu"] = flops_token * rows_tokens / dt / (peak * jax.device_count())
        run.writer.write(done, scalars)
        if last_logged == step0:  # this interval's time includes compiling the step: no estimate from it
          eta = "after the first interval"
        else:
          later = metrics_lib.later_phases_seconds(cfg, run.phases[phase.index + 1:], flops_token * rows_tokens / dt)
          eta = (f"{metrics_lib.format_eta((phase.end - done) * dt)} (phase), "
                 f"{metrics_lib.format_eta((phase.end - done) * dt + later)} (run)")
        run.writer.log(f"{phase.name} step {done}/{phase.end} loss {scalars['loss']:.4f} lr "
                       f"{host['learning_rate']:.2e} gnorm {scalars['grad_norm']:.3f} "
                       f"{rows_tokens / dt:,.0f} tok/s fill {scalars['fill']:.0%}" +
                       (f" mfu {scalars['mfu']:.1%}" if peak else "") +
                       (f" skipped {int(host['skipped'])} (non-finite or no target token)" if host["skipped"] else "") +
                       f" eta {eta}")
        t_last, last_logged = time.time(), done
        _check_streak(host, config.train.max_bad_steps)  # after logging, so the skipped steps are on record
      if config.eval.every_steps and done % config.eval.every_steps == 0 and done != phase.end:
        t_eval = time.time()
        _eval_and_log(run, state.params, cfg, phase, done)
        t_last += time.time() - t_eval  # keep evaluation out of the step time
      if done % config.checkpoint.every_steps == 0 or done == phase.end or preempted:
        if host is None:
          _check_streak(jax.device_get(metrics), config.train.max_bad_steps)
        _save(run, done, state, it, phase, cfg)
      if preempted:
        run.writer.log(f"SIGTERM: saved step {done}, exiting")
        status = "preempted"
        break
    profiler.close(int(state.step), state)
    if status == "done":
      waiting = pipeline.waiting_examples(it.get_state())  # this process's readers' (process 0 logs)
      run.writer.log(f"phase {phase.name}: {waiting} example(s) read but still waiting to be packed at its end (at "
                     f"most data.pack_defer + 1 per data reader) are not trained in this phase")
      _phase_end_eval(run, state.params, cfg, phase)
  run.mngr.wait_until_finished()
  run.writer.log(f"phase {phase.name}: {time.time() - t_start:.1f} s")
  return state, status


def _log_overlong(run: _Run, phase: phases_lib.Phase) -> None:
  """Names the instruction sources whose examples do not fit the phase's rows: those are split, and
  the windows after the first train the response without the start of its prompt."""
  for name in sorted(n for n in phase.weights if run.data.kinds[n] != "document"):
    source = run.data.train[name]
    over, looked, longest = pipeline.overlong_examples(source, phase.seq_len)
    if over:
      of = f"{looked:,}" if looked == len(source) else f"{looked:,} sampled (of {len(source):,})"
      run.writer.log(f"phase {phase.name}: {over:,} of {of} {name} examples are longer than seq_len {phase.seq_len} "
                     f"(longest {longest:,} tokens); each is split into windows, and the windows after the first "
                     "train the response without the start of its prompt. Raise the phase's seq_len to fit them")


def _eval_and_log(run: _Run, params: Any, cfg: ModelConfig, phase: phases_lib.Phase, step: int) -> None:
  """Held-out loss per source (and task accuracies) at `step`: to metrics.jsonl, TensorBoard and the console."""
  heldout = evaluate(run, params, cfg, phase)
  if heldout:
    run.writer.write(step, heldout, kind="eval")
    run.writer.log(f"{phase.name} step {step} held-out " + ", ".join(f"{k} {v:.4f}" for k, v in heldout.items()))


def _phase_end_eval(run: _Run, params: Any, cfg: ModelConfig, phase: phases_lib.Phase) -> None:
  _eval_and_log(run, params, cfg, phase, int(phase.end))


def _eval_row_missing(workdir: pathlib.Path, step: int) -> bool:
  """Whether metrics.jsonl has no eval row at `step` (process 0 reads it; every process gets the answer)."""
  missing = True
  path = workdir / "metrics.jsonl"
  if jax.process_index() == 0 and path.is_file():
    for line in path.read_text(encoding="utf-8").splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict) and row.get("kind") == "eval" and row.get("step") == step:
        missing = False
        break
  if jax.process_count() > 1:
    missing = bool(int(multihost_utils.broadcast_one_to_all(np.int32(missing))))
  return missing


def _check_streak(metrics: dict[str, Any], limit: int) -> None:
  streak = int(jax.device_get(metrics["bad_streak"]))
  if streak >= limit:
    raise TrainingHalted(f"{streak} consecutive steps with a non-finite loss or gradient, or with no target token "
                         f"(train.max_bad_steps={limit}); halting. The newest checkpoint holds the last good state.")


def train(config: Any, workdir: pathlib.Path, devices: list[Any] | None = None) -> dict[str, Any]:
  """Runs (or resumes) every phase of `config` in `workdir`; returns a summary dict.

  devices: the devices of the mesh (default: all of them, over every process).
  """
  workdir = pathlib.Path(workdir).absolute()
  _check_workdir(workdir)
  # A bad data, phase, model or mesh setting fails here, before anything is written to the work directory.
  sources.check_config(config, workdir)
  mixture.check_before_writing(config, workdir)
  done = (workdir_restore.completed_steps(workdir) or [0])[-1]
  base_cfg = config_lib.model_config(config)
  if not done:  # (a resume reads its own checkpoint: the weights it started from may be gone by now)
    init_lib.check_source(config.init_from, base_cfg)
    tok_model = sources.tokenizer_dir(config, workdir) / tokenizer_lib.MODEL_FILE
    if config.init_from and tok_model.is_file():  # (one the bootstrap is still to train: checked once trained)
      init_lib.check_tokenizer(config.init_from, tok_model)
  phases = phases_lib.from_config(config)
  mesh = setup.make_mesh(config, devices)
  for phase in phases:
    if phase.end > done:  # a finished phase may have used another device count
      setup.check_phase(config, phase, phases_lib.model_config(base_cfg, phase), mesh)
  # Read now: a wrong path would otherwise stop the run at the first phase's end.
  tasks = _task_examples(config.eval.tasks, config.eval.task_limit, workdir) if config.eval.tasks else {}
  if config.eval.note_examples and not config.eval.holdout_examples:
    raise ValueError("config.eval.note_examples needs config.eval.holdout_examples > 0: the notes are written from "
                     "held-out conversations")
  lock = _lock(workdir)
  try:
    return _train_locked(config, workdir, phases, base_cfg, mesh, tasks)
  finally:
    lock.release()


def _check_workdir(workdir: pathlib.Path) -> None:
  """ValueError for a --workdir that is a file, or a converted checkpoint (eval and export of that
  directory would read its converted weights, never the training's checkpoints)."""
  from heal_jax.checkpoint import params_store  # pylint: disable=import-outside-toplevel
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f"--workdir {workdir}: a file, not a directory")
  if (workdir / params_store.MANIFEST).is_file():
    raise ValueError(f"--workdir {workdir} holds a converted checkpoint ({params_store.MANIFEST}); train in another "
                     f"directory, starting from it with --config.init_from={workdir}")


def _on_process_0(what: str, fn: Callable[[], Any]) -> Any:
  """Runs fn on process 0 only (None elsewhere); then all processes meet, and if fn raised, every
  process raises: process 0 its own error, the others Process0Failed, instead of waiting on a
  collective that process 0 never reaches."""
  result, failure = None, None
  if jax.process_index() == 0:
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except  # re-raised below, after telling the others
      failure = e
  failed = failure is not None
  if jax.process_count() > 1:
    failed = bool(int(multihost_utils.broadcast_one_to_all(np.int32(failed))))
  if failure is not None:
    raise failure
  if failed:
    raise Process0Failed(f"process 0 could not {what}; its log says why")
  return result


def _console(line: str) -> None:
  """A log line on process 0's console before the MetricWriter exists (as its `log` prints them)."""
  print(f"[train] {line}", file=sys.stderr, flush=True)


def _lock(workdir: pathlib.Path) -> workdir_lock.WorkdirLock:
  """Process 0 locks the work directory (another trainer holding it is an error on every process)."""
  lock = _on_process_0(f"lock work directory {workdir}", lambda: workdir_lock.acquire(workdir, _console))
  return lock or workdir_lock.WorkdirLock(None)


def _train_locked(config: Any, workdir: pathlib.Path, phases: list[phases_lib.Phase], base_cfg: ModelConfig,
                  mesh: Any, tasks: dict[str, list]) -> dict[str, Any]:
  """`train` once the work directory is this run's."""
  primary = jax.process_index() == 0
  def bootstrap():  # (process 0 only: its log is the console's)
    mixture.bootstrap(config, workdir, _console)
    mixture.keep_tokenizer(config, workdir, checkpointing.has_completed_step(workdir))
  _on_process_0("prepare the work directory (bundled corpus, tokenizer)", bootstrap)
  data = mixture.load(config, workdir, config.eval.holdout_examples)
  # After the data are read: a bad source line or an empty source leaves no metrics.jsonl or tensorboard/.
  writer = metrics_lib.MetricWriter(workdir, primary)
  if data.online_seconds is not None:
    writer.log(f"sources read, normalised and deduplicated online in {data.online_seconds:.1f} s (at every start, "
               "on every process; `heal-jax data prepare` does it once)")
  for name, counts in data.counts.items():
    writer.log(f"source {name}: {counts}")
  if config.eval.note_examples and not any(p.instruction_tuning for p in phases):
    writer.log("note eval (config.eval.note_examples) will not run: it runs in instruction-tuning phases only")
  mngr = checkpointing.manager(workdir, config.checkpoint.keep, config.checkpoint.keep_period,
                               config.checkpoint.async_save)
  run = _Run(config, workdir, mesh, data, sorted(data.train), mngr, writer, preemption.Preemption(), base_cfg, tasks,
             phases)
  try:
    latest = mngr.latest_step()
    writer.restart_at(latest or 0)
    changed = []  # config fields that differ from the newest checkpoint's
    if latest is not None:
      try:
        saved_config = checkpointing.restore_meta(mngr, latest).get("config")
      except Exception:  # pylint: disable=broad-except  # a damaged step: check_resumable names it below
        saved_config = None
      if saved_config:
        saved_phases = phases_lib.from_config(ml_collections.ConfigDict(saved_config))
        phases_lib.check_history(saved_phases, phases, latest)
        resized = phases_lib.resized_note(saved_phases, phases, latest)
        if resized:
          writer.log(resized)
        changed = config_lib.differences(saved_config, config)
    start = latest or 0
    phase = phases_lib.phase_at(phases, start)
    # A SIGTERM on a phase's last step saves that step and exits before the phase's held-out eval.
    ended = next((p for p in phases if p.end == latest), None) if latest else None
    eval_due = ended is not None and bool(data.heldout or tasks) and _eval_row_missing(workdir, latest)
    if phase is None and not eval_due:  # (a model of other shapes is an error, as on any resume)
      checkpointing.check_resumable(mngr, latest, phases_lib.model_config(base_cfg, phases[-1]))
      writer.log(f"all {len(phases)} phases are done (step {start}); nothing to do" + (
          f", and this config is not the run's ({'; '.join(changed)}): to train with it, use a new --workdir "
          f"(--config.init_from={workdir} starts from this run)" if changed else ""))
      return {"status": "done", "step": start}
    phase = phase or ended  # all done but the last phase's eval: restore its state to run it
    cfg = phases_lib.model_config(base_cfg, phase)
    p_shard = state_lib.param_shardings(cfg, mesh)
    tx = optimizer_lib.make_optimizer(optimizer_lib.hyperparams(phase.optimizer))
    with jax.set_mesh(mesh):
      if latest is not None:
        abstract = jax.eval_shape(lambda: state_lib.new_state(
            state_lib.unboxed_init(cfg, jax.random.PRNGKey(0)), tx, jax.random.PRNGKey(0)))
        st_shard = state_lib.state_shardings(abstract, p_shard, mesh)
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, st_shard)
        checkpointing.check_resumable(mngr, latest, cfg)
        state = checkpointing.restore_state(mngr, latest, target)
        writer.log(f"resumed from step {latest} (phase {phase.name})" + (
            f" with a config changed since then: {'; '.join(changed)} (config.init_from acts only at a fresh start; "
            "the phase under way refuses a changed data setting, config.seed included, which orders each phase's "
            "data; the phases after it use the new one)" if changed else ""))
        if eval_due:
          writer.log(f"phase {ended.name}'s held-out eval at step {latest} did not run (stopped first); running it")
          with nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
            _phase_end_eval(run, state.params, phases_lib.model_config(base_cfg, ended), ended)
      else:
        if config.init_from:
          init_lib.check_tokenizer(config.init_from, run.data.tokenizer.path)
        params, how = init_lib.initial_params(config.init_from, cfg, p_shard, config.seed)
        state = state_lib.new_state(params, tx, jax.random.PRNGKey(config.seed))
        checkpointing.warm_up(state)
        writer.log(f"initialised {cfg.num_params():,} parameters {how}; mesh {dict(mesh.shape)}")
        writer.parameter_overview(params)
    restored = latest
    for phase in phases[phase.index:] if phase.end > start else []:
      state, status = run_phase(run, phase, state, restored)
      restored = None
      if status == "preempted":
        return {"status": "preempted", "step": int(state.step)}
    summary = {"status": "done", "step": int(state.step), "skipped": int(state.skipped)}
    mngr.wait_until_finished()
    if config.eval.sample_note_tokens > 0:  # from the trained parameters where they are, on every process
      from heal_jax.train import note_eval  # pylint: disable=import-outside-toplevel
      with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
        summary["sample_note"] = note_eval.sample_note(
            phases_lib.model_config(base_cfg, phases[-1]), state.params, run.data, config.eval.sample_note_tokens,
            writer.log, mesh.shape["data"] * mesh.shape["fsdp"], mesh_lib.batch_sharding(mesh))
    return summary
  finally:
    mngr.wait_until_finished()
    mngr.close()
    run.preempt.restore()
    writer.close()
