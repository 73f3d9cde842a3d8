"""Trainer: sharded == single device, exact resume after SIGKILL, SIGTERM, learning, determinism,
logging and evaluation hooks."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from heal_jax.checkpoint import restore
from heal_jax.train import loop

from tests import train_helpers

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_helpers.make_corpus(tmp_path_factory.mktemp("train_data"))


def test_fsdp_mesh_matches_one_device(data_root, tmp_path):
  """20 fp32 steps on a (data 2, fsdp 4) mesh of 8 devices and on one device: losses within 1e-5."""
  sharded = train_helpers.load(data_root, 20, ("--config.mesh.data=2", "--config.mesh.fsdp=4"))
  single = train_helpers.load(data_root, 20, ("--config.mesh.data=1", "--config.mesh.fsdp=1"))
  loop.train(sharded, tmp_path / "mesh", devices=jax.devices())
  loop.train(single, tmp_path / "one", devices=jax.devices()[:1])
  a, b = train_helpers.losses(tmp_path / "mesh"), train_helpers.losses(tmp_path / "one")
  assert sorted(a) == list(range(1, 21)) and sorted(b) == sorted(a)
  np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], atol=1e-5, rtol=0)
  assert a[20] < a[1] - 0.5  # it learns


def test_the_train_step_compiles_once_per_run_fresh_and_resumed(data_root, tmp_path, caplog):
  """State entering the step is placed as the step returns it, so step 2 reuses step 1's program (a
  second compile of a 13B step costs minutes); also after a resume from a checkpoint, and in a second
  phase of the same model and shapes with another schedule (its numbers are arguments of the step)."""
  second = ("--config.phase_order=pretrain,extend", "--config.phases.extend.seq_len=64",
            "--config.phases.extend.global_batch=8", "--config.phases.extend.rope_scaling_factor=1.0",
            "--config.phases.extend.peak_lr=1e-3", "--config.phases.extend.schedule=linear",
            "--config.phases.extend.warmup_steps=1", "--config.phases.extend.end_lr_ratio=0.5")

  def train_step_compiles(steps, extend_steps):
    caplog.clear()
    with caplog.at_level("WARNING", logger="jax"), jax.log_compiles(True):
      loop.train(train_helpers.load(data_root, steps, second + (f"--config.phases.extend.steps={extend_steps}",)),
                 tmp_path / "w")
    return sum("Finished XLA compilation of jit(train_step)" in r.getMessage() for r in caplog.records)

  assert train_step_compiles(4, 2) == 1
  assert train_step_compiles(4, 4) == 1  # resumes at step 6, inside extend
  rows = [r for r in map(json.loads, (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
  assert [r["step"] for r in rows] == list(range(1, 9))
  # each phase's own schedule: pretrain cosine 3e-3 warming up over 2 steps; extend linear 1e-3 to 5e-4
  # over its 4 steps after 1 of warmup (the rate logged is the one the step applied)
  lr = [r["learning_rate"] for r in rows]
  np.testing.assert_allclose(lr[:2], [0.0, 1.5e-3], rtol=1e-6)
  np.testing.assert_allclose(lr[4:], [0.0, 1e-3, 1e-3 - 5e-4 / 3, 1e-3 - 1e-3 / 3], rtol=1e-6)


def _cli(workdir: pathlib.Path, data_root: pathlib.Path, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
  args = train_helpers.overrides(data_root, steps, ("--config.checkpoint.every_steps=4",
                                                     "--config.mesh.fsdp=2", "--config.mesh.data=-1") + extra)
  return [sys.executable, "-m", "heal_jax.cli", "train", "--config", str(train_helpers.TINY),
          "--workdir", str(workdir), *args]


def _env(compilation_cache: bool = True) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = train_helpers.xla_flags(4)
  env["JAX_PLATFORMS"] = "cpu"
  if not compilation_cache:
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + (k,)))
    else:
      out["/".join(prefix + (k,))] = np.asarray(v)
  return out


def _checkpoint_tmp_exists(workdir: pathlib.Path) -> bool:
  ckpts = workdir / "checkpoints"
  return ckpts.is_dir() and any("tmp" in p.name for p in ckpts.iterdir())


def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(data_root, tmp_path):
  steps = 24
  reference = tmp_path / "reference"
  subprocess.run(_cli(reference, data_root, steps), env=_env(), check=True, capture_output=True, cwd=REPO)
  # The killed runs go without the tests' shared XLA program cache: each restart compiles afresh, as a run
  # does in production when no cache is set, and the kill moments below keep their place in the run.
  env = _env(compilation_cache=False)
  workdir = tmp_path / "killed"
  rng = np.random.default_rng(0)
  kills = 0
  during_save = False
  for attempt in range(8):
    proc = subprocess.Popen(_cli(workdir, data_root, steps), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if attempt == 0:  # first kill: the moment an async save is in flight
      deadline = time.time() + 120
      while proc.poll() is None and time.time() < deadline and not _checkpoint_tmp_exists(workdir):
        time.sleep(0.002)
      during_save = proc.poll() is None and _checkpoint_tmp_exists(workdir)
    elif attempt < 3:
      time.sleep(float(rng.uniform(4.0, 9.0)))
    if attempt < 3 and proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      kills += 1
    assert proc.wait(timeout=300) in (0, -signal.SIGKILL)
    if proc.returncode == 0:
      break
  assert kills >= 2, "the run finished before it could be killed: make it longer"
  assert during_save, "never caught an async save in flight"
  ours, ref = _flat(restore.load_model(workdir).params), _flat(restore.load_model(reference).params)
  assert ours.keys() == ref.keys()
  for name in ref:
    assert ours[name].tobytes() == ref[name].tobytes(), name


def test_sigterm_saves_current_step_and_exits_0(data_root, tmp_path):
  workdir = tmp_path / "term"
  proc = subprocess.Popen(_cli(workdir, data_root, 400, ("--config.checkpoint.every_steps=1000",
                                                         "--config.metrics.every_steps=7")),
                          env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out, err = train_helpers.sigterm_once_training(proc, workdir, start_timeout=180, exit_timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert '"status": "preempted"' in out
  logged = max(train_helpers.losses(workdir))
  step = int(out.strip().splitlines()[-1].split('"step": ')[1].rstrip("}"))
  assert 0 < step < 400 and step == logged  # the steps since the last row are logged at the save
  assert f"step {step}" in restore.load_model(workdir).source


def _unigram_entropy(data_root: pathlib.Path, sources: tuple[str, ...]) -> float:
  """Entropy (nats) of the token distribution of the pretraining sources' targets."""
  from heal_jax.data import examples, sources as sources_lib, tokenizer  # pylint: disable=import-outside-toplevel
  config = train_helpers.load(data_root, 2)
  tok = tokenizer.Tokenizer(data_root / "tokenizer")
  counts = np.zeros(tok.vocab_size)
  for src in sources_lib.from_config(config.data.sources):
    if src.name in sources:
      for prompt, target in sources_lib.load_texts(src, "raise")[0]:
        ids, mask = examples.encode(tok, prompt, target)
        np.add.at(counts, ids[mask > 0], 1)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def test_tiny_recipe_learns_reproduces_and_exports(data_root, tmp_path):
  """Pretrain + context extension (rope x8): loss far below the unigram entropy, identical on a rerun,
  and the work directory exports to an HF model whose logits equal ours."""
  extra = ("--config.phase_order=pretrain,extend", "--config.phases.extend.steps=10",
           "--config.phases.extend.seq_len=128", "--config.phases.extend.global_batch=8",
           "--config.phases.pretrain.peak_lr=3e-3",
           "--config.checkpoint.every_steps=100", "--config.mesh.fsdp=1")
  runs = []
  for name in ("a", "b"):  # one device: sharding has its own tests, and 8 on 2 cores cost a third more here
    loop.train(train_helpers.load(data_root, 200, extra), tmp_path / name, devices=jax.devices()[:1])
    runs.append(train_helpers.losses(tmp_path / name))
  assert runs[0] == runs[1]  # same seed, same numbers, exactly
  entropy = _unigram_entropy(data_root, ("general", "medical", "clinical"))
  final = np.mean([runs[0][s] for s in range(191, 201)])  # end of pretraining, before the rope change
  assert final < 0.5 * entropy, (final, entropy)

  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint import hf_convert  # pylint: disable=import-outside-toplevel
  from heal_jax.model import llama  # pylint: disable=import-outside-toplevel
  hf_convert.orbax_to_hf(tmp_path / "a", tmp_path / "hf", dtype="float32")
  hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  assert hf.config.rope_parameters["rope_type"] == "linear" and hf.config.rope_parameters["factor"] == 8.0
  loaded = restore.load_model(tmp_path / "a", dtype="float32", scan_layers=False)
  tokens = np.arange(1, 120, dtype=np.int32)[None] % loaded.cfg.vocab_size
  ours = np.asarray(llama.Llama(loaded.cfg).apply({"params": loaded.params}, tokens))
  with torch.no_grad():
    ref = hf(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_pubmedqa_accuracy_is_an_eval_hook(data_root, tmp_path, shared_data):
  """config.eval.tasks runs the harness scorer at every evaluation and logs acc and acc_norm."""
  from heal_jax.eval import loglik  # pylint: disable=import-outside-toplevel
  config = train_helpers.load(data_root, 4, (f"--config.eval.tasks=pubmedqa={shared_data / 'pubmedqa'}",
                                             "--config.eval.task_limit=12"))
  loop.train(config, tmp_path / "w")
  import json  # pylint: disable=import-outside-toplevel
  rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if r["kind"] == "eval"]
  assert len(evals) == 1 and 0.0 <= evals[0]["pubmedqa/acc"] <= 1.0
  # the same number as scoring the final parameters directly
  loaded = restore.load_model(tmp_path / "w")
  examples = loop._task_examples(f"pubmedqa={shared_data / 'pubmedqa'}", 12, tmp_path)["pubmedqa"]  # pylint: disable=protected-access
  from heal_jax.data import tokenizer  # pylint: disable=import-outside-toplevel
  direct = loglik.evaluate("pubmedqa", loaded.cfg, loaded.params, tokenizer.Tokenizer(loaded.tokenizer_dir), examples)
  assert direct["acc"] == evals[0]["pubmedqa/acc"] and direct["acc_norm"] == evals[0]["pubmedqa/acc_norm"]
  assert len(examples) == 12 and len({e.gold for e in examples}) > 1  # a random subset, not the all-"yes" head


def test_non_finite_steps_are_skipped_counted_and_halt_the_run(data_root, tmp_path, capsys):
  """A checkpoint with a finite weight so large that the logits overflow: every step's loss is non-finite,
  so every step is skipped (parameters untouched) and the run halts. (A NaN weight is refused on read.)"""
  from heal_jax.checkpoint import params_store  # pylint: disable=import-outside-toplevel
  good = tmp_path / "good"
  loop.train(train_helpers.load(data_root, 2), good)
  loaded = restore.load_model(good, dtype="float32", scan_layers=False)
  params = jax.tree.map(np.array, loaded.params)
  params["final_norm"]["scale"][3] = 3e38
  with params_store.atomic_output_dir(tmp_path / "nan") as out:
    params_store.write_checkpoint(out, jax.tree.map(jax.numpy.asarray, params), loaded.cfg, None, "float32",
                                  loaded.tokenizer_dir)
  from heal_jax import cli  # pylint: disable=import-outside-toplevel
  capsys.readouterr()
  assert cli.main(["train", "--config", str(train_helpers.TINY), "--workdir", str(tmp_path / "bad"),
                   *train_helpers.overrides(data_root, 10, (f"--config.init_from={tmp_path / 'nan'}",
                                                            "--config.train.max_bad_steps=3"))]) == 3
  captured = capsys.readouterr()
  assert "heal-jax: training halted: 3 consecutive steps with a non-finite" in captured.err
  assert "skipped 3 (non-finite or no target token)" in captured.out + captured.err  # on the progress line
  rows = [r for r in train_helpers.losses(tmp_path / "bad").items()]
  assert rows and all(loss is None for _, loss in rows)  # no finite step to average: null (strict JSON)
  import json  # pylint: disable=import-outside-toplevel
  logged = [json.loads(line) for line in (tmp_path / "bad" / "metrics.jsonl").read_text().splitlines()]
  assert [r["skipped_steps"] for r in logged if r["kind"] == "train"][:3] == [1, 2, 3]


def test_a_logged_row_sums_its_interval_of_steps(data_root, tmp_path):
  """With metrics.every_steps=5 a row's losses are token-weighted over its 5 steps, its target tokens
  and grad norm the means per step (they were the 5th step's alone): checked against the per-step
  rows of the same run logged every step (CPU fp32 is deterministic)."""
  loop.train(train_helpers.load(data_root, 5), tmp_path / "each")
  loop.train(train_helpers.load(data_root, 5, ("--config.metrics.every_steps=5",)), tmp_path / "five")
  read = lambda w: [r for r in map(json.loads, (w / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
  each, (five,) = read(tmp_path / "each"), read(tmp_path / "five")
  assert [r["step"] for r in each] == [1, 2, 3, 4, 5] and five["step"] == 5
  tokens = np.array([r["target_tokens"] for r in each])
  np.testing.assert_allclose(five["loss"], np.dot([r["loss"] for r in each], tokens) / tokens.sum(), rtol=1e-6)
  np.testing.assert_allclose(five["target_tokens"], tokens.mean(), rtol=1e-6)
  np.testing.assert_allclose(five["grad_norm"], np.mean([r["grad_norm"] for r in each]), rtol=1e-6)
  assert all(0 < r["fill"] <= 1 for r in each)  # every step has the same slots: the fill is their mean
  np.testing.assert_allclose(five["fill"], np.mean([r["fill"] for r in each]), rtol=1e-6)
  for name in ("general", "medical", "clinical"):
    src = np.array([r[f"share/{name}"] * r["target_tokens"] for r in each])  # this source's tokens per step
    nll = sum(r[f"loss/{name}"] * n for r, n in zip(each, src))
    np.testing.assert_allclose(five[f"loss/{name}"], nll / src.sum(), rtol=1e-5)
    np.testing.assert_allclose(five[f"share/{name}"], src.sum() / tokens.sum(), rtol=1e-5)
  assert five["learning_rate"] == each[-1]["learning_rate"]  # the schedule's value at the row's step


def test_every_evaluation_reaches_the_console(data_root, tmp_path, capsys):
  """Mid-phase evaluations (eval.every_steps) went to metrics.jsonl only; the console showed phase ends.
  The console also counts, at the phase end, the examples read but not packed."""
  workdir = tmp_path / "w"
  loop.train(train_helpers.load(data_root, 4, ("--config.eval.holdout_examples=4", "--config.eval.every_steps=2",
                                               "--config.eval.batches=1")), workdir)
  err = capsys.readouterr().err
  rows = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
  assert [r["step"] for r in rows] == [2, 4]
  for row in rows:
    line = next(l for l in err.splitlines() if f"pretrain step {row['step']} held-out " in l)
    assert f"loss/general {row['loss/general']:.4f}" in line
  progress = [l for l in err.splitlines() if l.startswith("[train] pretrain step ") and " loss " in l]
  assert progress[0].endswith("eta after the first interval")  # its time includes compiling the step
  assert all(re.search(r"eta \d+:\d\d:\d\d \(phase\), \d+:\d\d:\d\d \(run\)$", l) for l in progress[1:])
  # the phase end names the examples its packers held back: those of the data state saved at that step
  saved = [json.loads(f.read_text())["state"] for f in sorted((workdir / "checkpoints" / "4" / "data").glob("shard_*.json"))]
  waiting = sum(len(state["waiting"]) for state in saved)
  assert len(saved) == 2 and waiting > 0
  assert (f"phase pretrain: {waiting} example(s) read but still waiting to be packed at its end (at most "
          "data.pack_defer + 1 per data reader) are not trained in this phase") in err


def test_sample_note_uses_a_held_out_conversation_that_fits_the_context(data_root, tmp_path, capsys):
  """The closing sample note is written from a held-out conversation whose prompt leaves room for
  the new tokens in the model's context, or skipped with a reason when none fits at all (it used to
  decode past the context and print an empty note)."""
  from heal_jax.data import sources as sources_lib, tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  base = ("--config.mesh.fsdp=1", "--config.eval.holdout_examples=3", "--config.eval.sample_note_tokens=8")
  summary = loop.train(train_helpers.load(data_root, 1, base), tmp_path / "short", devices=jax.devices()[:1])
  assert summary["sample_note"] is None  # 256 positions: every synthetic conversation is longer
  assert "sample note skipped: every held-out conversation's prompt is longer than the model's 256 positions" in (
      capsys.readouterr().err)
  config = train_helpers.load(data_root, 1, base + ("--config.model.max_position_embeddings=4096",))
  note = loop.train(config, tmp_path / "long", devices=jax.devices()[:1])["sample_note"]
  (clinical,) = [s for s in sources_lib.from_config(config.data.sources) if s.name == "clinical"]
  newest_prompt = sources_lib.load_texts(clinical, "raise")[0][-1][0]
  tok = tokenizer_lib.Tokenizer(data_root / "tokenizer")
  assert note["source"] == "clinical" and note["prompt_tokens"] == len(tok.encode(newest_prompt, add_bos=True))
  assert "at most 8 new; the model has 4096 positions" in capsys.readouterr().err


def test_a_held_out_source_without_target_tokens_is_named(data_root, tmp_path, capsys):
  """Instruction tuning at 64 tokens: one held-out batch of conversations is all prompt (hundreds of
  tokens before the note), so that source has no loss; the log says so instead of dropping it. The
  phase start names the conversations that do not fit its rows."""
  from heal_jax.data import examples, sources as sources_lib, tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  extra = ("--config.mesh.fsdp=1", "--config.eval.holdout_examples=2", "--config.eval.batches=1",
           "--config.phases.pretrain.instruction_tuning=true", "--config.phases.pretrain.weights=clinical=1")
  loop.train(train_helpers.load(data_root, 1, extra), tmp_path / "w", devices=jax.devices()[:1])
  err = capsys.readouterr().err
  assert "held-out: no target tokens from clinical in 1 batch(es) of 64 tokens (no loss reported for them)" in err
  # every training conversation is longer than the 64-token rows, and the log says so, with the longest
  config = train_helpers.load(data_root, 1, extra)
  (clinical,) = [s for s in sources_lib.from_config(config.data.sources) if s.name == "clinical"]
  tok = tokenizer_lib.Tokenizer(data_root / "tokenizer")
  lengths = [len(examples.encode(tok, *pair)[0]) for pair in sources_lib.load_texts(clinical, "raise")[0][:-2]]
  assert min(lengths) > 64
  assert (f"phase pretrain: {len(lengths):,} of {len(lengths):,} clinical examples are longer than seq_len 64 "
          f"(longest {max(lengths):,} tokens); each is split into windows") in err
  evals = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  assert not any("loss/clinical" in r for r in evals if r["kind"] == "eval")


def test_prepared_data_trains_as_the_same_data_read_online(data_root, tmp_path):
  """`heal-jax data prepare` once, then train from data.prepared_dir: the same examples as reading and
  deduplicating the raw files at start, so the same losses, to the bit (fp32, one host)."""
  from heal_jax.data import prepare  # pylint: disable=import-outside-toplevel
  prepare.prepare(train_helpers.load(data_root, 3), tmp_path / "prep")
  loop.train(train_helpers.load(data_root, 3), tmp_path / "online")
  loop.train(train_helpers.load(data_root, 3, (f"--config.data.prepared_dir={tmp_path}/prep",)), tmp_path / "prepared")
  online, prepared = train_helpers.losses(tmp_path / "online"), train_helpers.losses(tmp_path / "prepared")
  assert sorted(online) == [1, 2, 3] and prepared == online
