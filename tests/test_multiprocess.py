"""Multi-controller training on localhost: 2 processes x 4 CPU devices == 1 process x 8 devices."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from heal_jax.train import loop

from tests import train_helpers

REPO = pathlib.Path(__file__).resolve().parents[1]
MESH = ("--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.checkpoint.every_steps=10")


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(pid: int, port: int) -> dict[str, str]:
  return dict(os.environ, XLA_FLAGS=train_helpers.xla_flags(4), JAX_PLATFORMS="cpu",
              HEAL_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", HEAL_NUM_PROCESSES="2", HEAL_PROCESS_ID=str(pid))


def _start(workdir: pathlib.Path, args: list[str]) -> list[subprocess.Popen]:
  port = _port()
  cmd = [sys.executable, "-m", "heal_jax.cli", "train", "--config", str(train_helpers.TINY), "--workdir", str(workdir)]
  return [subprocess.Popen(cmd + args, env=_env(pid, port), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for pid in range(2)]


def _communicate_all(procs: list[subprocess.Popen], timeout: float) -> tuple[list[str], list[float]]:
  """Each process's stderr and the time.time() at which it exited (read concurrently, so that one
  process's full pipe never holds up the other's exit time)."""
  results: dict[int, tuple[str, float]] = {}

  def wait(i: int) -> None:
    try:
      _, err = procs[i].communicate(timeout=timeout)
      results[i] = (err, time.time())
    except subprocess.TimeoutExpired:
      procs[i].kill()
      results[i] = (procs[i].communicate()[1] + f"\n[test] killed after {timeout} s", float("inf"))
  threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(procs))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(results) == len(procs), "a reader thread failed"
  return [results[i][0] for i in range(len(procs))], [results[i][1] for i in range(len(procs))]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_helpers.make_corpus(tmp_path_factory.mktemp("mp_data"))


def _medqa_file(root: pathlib.Path) -> pathlib.Path:
  """Ten MedQA-format questions (hand-written; the eval hook needs no shared data)."""
  path = root / "medqa.jsonl"
  drugs = ["aspirin", "metformin", "lisinopril", "warfarin", "insulin"]
  with open(path, "w", encoding="utf-8") as f:
    for i in range(10):
      options = {c: f"{drugs[(i + j) % 5]} {10 * (j + 1)} mg" for j, c in enumerate("ABCD")}
      f.write(json.dumps({"question": f"A {40 + i}-year-old patient reports chest pain and cough for {i + 2} days. "
                                      "Which treatment is most appropriate?",
                          "options": options, "answer_idx": "ABCD"[i % 4]}) + "\n")
  return path


@pytest.fixture(scope="module")
def two_process_run(data_root, tmp_path_factory):
  """The 2-process run, launched the way users do: launch/local.sh 2 (4 CPU devices each), with the
  MedQA accuracy hook on (scored at the phase's end)."""
  workdir = tmp_path_factory.mktemp("mp") / "run"
  tasks = (f"--config.eval.tasks=medqa={_medqa_file(data_root)}", "--config.eval.task_limit=0")
  cmd = ["bash", str(REPO / "launch" / "local.sh"), "2", "--cpu-devices", "4", "--",
         sys.executable, "-m", "heal_jax.cli", "train", "--config", str(train_helpers.TINY), "--workdir", str(workdir),
         *train_helpers.overrides(data_root, 20, MESH + tasks)]
  env = {**{k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}, "XLA_FLAGS": train_helpers.xla_flags()}
  out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
  return workdir, out.stdout + out.stderr


def test_two_processes_match_one_process(two_process_run, data_root, tmp_path):
  workdir, log = two_process_run
  for pid in range(2):  # each process read only its half of every global batch
    assert f"process {pid}/2 reads data shards [{pid}] of 2 (4 of 8 rows per step)" in log
  single = tmp_path / "single"
  loop.train(train_helpers.load(data_root, 20, MESH), single, devices=jax.devices())
  a, b = train_helpers.losses(workdir), train_helpers.losses(single)
  assert sorted(a) == sorted(b) == list(range(1, 21))
  np.testing.assert_allclose([a[s] for s in range(1, 21)], [b[s] for s in range(1, 21)], atol=1e-5, rtol=0)


def test_the_task_accuracy_hook_runs_in_two_processes(two_process_run, data_root):
  """Both processes score every question (rows split over the mesh); the logged accuracy equals one
  process scoring the run's final parameters directly."""
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  from heal_jax.data import tokenizer  # pylint: disable=import-outside-toplevel
  from heal_jax.eval import loglik  # pylint: disable=import-outside-toplevel
  workdir, _ = two_process_run
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if r["kind"] == "eval"]
  assert len(evals) == 1 and evals[0]["step"] == 20
  loaded = restore.load_model(workdir)
  examples = loop._task_examples(f"medqa={data_root / 'medqa.jsonl'}", 0, workdir)["medqa"]  # pylint: disable=protected-access
  direct = loglik.evaluate("medqa", loaded.cfg, loaded.params, tokenizer.Tokenizer(loaded.tokenizer_dir), examples)
  assert direct["n"] == 10
  assert (evals[0]["medqa/acc"], evals[0]["medqa/acc_norm"]) == (direct["acc"], direct["acc_norm"])


def test_two_process_checkpoint_resumes_on_another_layout(two_process_run, data_root, tmp_path):
  """Step 10 of the 2-process run, resumed by 1 process on a (data 1, fsdp 8) mesh: the same losses."""
  workdir, _ = two_process_run
  resumed = tmp_path / "resumed"
  (resumed / "checkpoints").mkdir(parents=True)
  shutil.copytree(workdir / "checkpoints" / "10", resumed / "checkpoints" / "10")
  config = train_helpers.load(data_root, 20, ("--config.mesh.data=1", "--config.mesh.fsdp=8",
                                               "--config.checkpoint.every_steps=10"))
  loop.train(config, resumed, devices=jax.devices())
  a, b = train_helpers.losses(workdir), train_helpers.losses(resumed)
  assert sorted(b) == list(range(11, 21))
  np.testing.assert_allclose([b[s] for s in range(11, 21)], [a[s] for s in range(11, 21)], atol=1e-5, rtol=0)


def test_killing_one_process_stops_the_other_with_a_clear_error(data_root, tmp_path):
  """With the default config.distributed.heartbeat_timeout_s (30 s)."""
  workdir = tmp_path / "kill"
  procs = _start(workdir, train_helpers.overrides(data_root, 5000, MESH + ("--config.checkpoint.every_steps=5000",)))
  deadline = time.time() + 300
  while time.time() < deadline and not (workdir / "metrics.jsonl").is_file():
    time.sleep(0.2)
  time.sleep(2.0)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  try:
    _, err = procs[0].communicate(timeout=60)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail("the surviving process hung for 60 s after its peer was killed")
  assert time.time() - killed_at < 60
  assert procs[0].returncode != 0
  # At once when its next collective finds the connection closed, else by the heartbeat timeout.
  assert ("process 0 stopped on the exception above (a collective that fails with a closed connection means a "
          "peer process is gone" in err or "stopped sending heartbeats" in err or "another task died" in err), err[-2000:]
  procs[1].wait()


@pytest.mark.parametrize("group_signal", [None, signal.SIGINT], ids=["sigterm", "ctrl_c_to_group"])
def test_sigterm_to_a_two_process_run_saves_one_agreed_step(data_root, tmp_path, group_signal):
  """SIGTERM to launch/local.sh, or a terminal's Ctrl-C (SIGINT to its whole process group, its output
  prefixers included), reaches both processes as SIGTERM; they agree on a step, save it, exit 0."""
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "term"
  cmd = ["bash", str(REPO / "launch" / "local.sh"), "2", "--cpu-devices", "4", "--",
         sys.executable, "-m", "heal_jax.cli", "train", "--config", str(train_helpers.TINY), "--workdir", str(workdir),
         *train_helpers.overrides(data_root, 5000, MESH + ("--config.checkpoint.every_steps=5000",))]
  env = {**{k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}, "XLA_FLAGS": train_helpers.xla_flags()}
  # A terminal's shell leaves SIGINT at its default; a test run in the background (nohup ... &) inherits
  # it ignored, and a shell cannot trap a signal ignored on entry: restore it, as a terminal has it.
  proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=group_signal is not None,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  out, err = train_helpers.sigterm_once_training(proc, workdir, start_timeout=300, exit_timeout=180,
                                                 group_signal=group_signal)
  assert proc.returncode == 0, err[-3000:]
  assert '"status": "preempted"' in out
  step = int(out.split('"step": ')[-1].split("}")[0])
  assert f"step {step}" in restore.load_model(workdir).source


def test_a_failure_on_process_0_alone_stops_both_at_once(data_root, tmp_path):
  """Process 0 cannot lock the work directory (this test holds it): both exit 2 with their messages,
  without process 1 waiting for a collective that process 0 never joins."""
  from heal_jax.train import workdir_lock  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "busy"
  lock = workdir_lock.acquire(workdir, print)
  try:
    started = time.time()
    procs = _start(workdir, train_helpers.overrides(data_root, 2, MESH))
    errs, exits = _communicate_all(procs, timeout=120)
  finally:
    lock.release()
  assert [p.returncode for p in procs] == [2, 2], errs
  assert "is in use by another heal-jax train" in errs[0]
  assert f"process 0 could not lock work directory {workdir}; its log says why" in errs[1]
  # Process 1 ends with process 0, not 30 s later when its collective would time out. (Measured between
  # the exits: the time to start two jax processes varies with the machine's load; the whole launch is
  # bounded loosely.)
  assert max(exits) - min(exits) < 15 and max(exits) - started < 90, (started, exits)
  # The same for a failure inside process 0's bootstrap: a work directory with a checkpoint and another
  # tokenizer is refused there (process 1 used to wait at a barrier until the coordinator vanished).
  (workdir / "checkpoints" / "1").mkdir(parents=True)
  (workdir / "tokenizer").mkdir()
  (workdir / "tokenizer" / "tokenizer.model").write_bytes(b"another tokenizer")
  started = time.time()
  procs = _start(workdir, train_helpers.overrides(data_root, 2, MESH))
  errs, exits = _communicate_all(procs, timeout=120)
  assert [p.returncode for p in procs] == [2, 2], errs
  assert "differs from the tokenizer this work directory was trained with" in errs[0]
  assert "process 0 could not prepare the work directory (bundled corpus, tokenizer); its log says why" in errs[1]
  assert max(exits) - min(exits) < 15 and max(exits) - started < 90, (started, exits)


@pytest.mark.parametrize("theirs,named", [
    ("--config.phases.pretrain.peak_lr=0.0001", "phases.pretrain.peak_lr: 0.003 vs 0.0001"),  # trained silently
    ("--config.model.num_layers=3", "model.num_layers: 2 vs 3"),  # hung after the parameter table
])
def test_processes_started_with_different_commands_are_refused_at_once(data_root, tmp_path, theirs, named):
  """Process 1 started with another override: both exit 2 before training, naming the key (one
  used to train a model matching neither command; another hung until killed)."""
  workdir = tmp_path / "mismatch"
  port = _port()
  cmd = [sys.executable, "-m", "heal_jax.cli", "train", "--config", str(train_helpers.TINY), "--workdir",
         str(workdir), *train_helpers.overrides(data_root, 4, MESH)]
  start = time.time()
  procs = [subprocess.Popen(cmd + ([theirs] if pid else []), env=_env(pid, port), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for pid in range(2)]
  errs = [p.communicate(timeout=120)[1] for p in procs]
  assert [p.returncode for p in procs] == [2, 2], errs
  for err in errs:
    assert "the processes of this job were not started with the same command" in err and named in err, err[-2000:]
  assert not (workdir / "checkpoints").exists() and time.time() - start < 60


def test_a_coordinator_port_in_use_is_named(tmp_path):
  """The coordinator's gRPC server died with a segfault and "Failed to add port" on a taken port."""
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = dict(_env(0, port), XLA_FLAGS=train_helpers.xla_flags(1))
    out = subprocess.run([sys.executable, "-m", "heal_jax.cli", "train", "--config", str(train_helpers.TINY),
                          "--workdir", str(tmp_path / "w")], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert f"coordinator address 127.0.0.1:{port}: port {port} is in use on this host" in out.stderr
  assert not (tmp_path / "w").exists()


def test_note_eval_and_sample_note_run_in_two_processes(data_root, tmp_path):
  """While instruction tuning, both processes write every held-out note (rows split over the mesh)
  and log their scores; the closing sample note is written too. Both equal what one process writes
  from the run's checkpoint. The topology is given in the config, not the environment:
  --config.distributed.process_id=i is the one setting that differs between the processes by design
  (the same-command check leaves it out)."""
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  from heal_jax.data import mixture  # pylint: disable=import-outside-toplevel
  from heal_jax.train import note_eval  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "notes"
  notes = ("--config.eval.holdout_examples=3", "--config.eval.note_examples=3", "--config.eval.note_tokens=6",
           "--config.eval.sample_note_tokens=6", "--config.model.max_position_embeddings=4096",
           "--config.phases.pretrain.instruction_tuning=true", "--config.phases.pretrain.weights=clinical=1")
  port = _port()
  cmd = [sys.executable, "-m", "heal_jax.cli", "train", "--config", str(train_helpers.TINY), "--workdir",
         str(workdir), *train_helpers.overrides(data_root, 1, MESH + notes),
         f"--config.distributed.coordinator_address=127.0.0.1:{port}", "--config.distributed.num_processes=2"]
  env = {k: v for k, v in _env(0, port).items() if not k.startswith("HEAL_")}
  procs = [subprocess.Popen(cmd + [f"--config.distributed.process_id={pid}"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  summary = json.loads(outs[0][0].strip().splitlines()[-1])
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  (logged,) = [r for r in rows if r["kind"] == "eval" and "notes/count" in r]
  assert logged["notes/count"] == 3

  config = train_helpers.load(data_root, 1, MESH + notes)
  data = mixture.load(config, workdir, config.eval.holdout_examples)
  loaded = restore.load_model(workdir)
  direct = note_eval.evaluate(loaded.cfg, jax.device_put(loaded.params), data, 3, 6, 1, lambda m: None)
  assert {k: logged[k] for k in direct} == pytest.approx(direct, abs=1e-9)
  assert summary["sample_note"] == note_eval.sample_note(loaded.cfg, jax.device_put(loaded.params), data, 6,
                                                        lambda m: None)
