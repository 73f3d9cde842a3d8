"""Trainer: starting from another run or an HF export, resuming, and refusing a resume that cannot
continue (changed model, data or phases; damaged or removed checkpoints) with the key or step named."""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

from heal_jax.checkpoint import restore
from heal_jax.train import loop, workdir_lock

from tests import train_helpers


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_helpers.make_corpus(tmp_path_factory.mktemp("train_data"))


def test_init_from_a_work_directory(data_root, tmp_path):
  """A run initialised from another run's work directory starts from its newest parameters, or from
  the step a WORKDIR/checkpoints/N path names (which eval, generate and export read too)."""
  first = tmp_path / "first"
  loop.train(train_helpers.load(data_root, 4, ("--config.checkpoint.every_steps=2",)), first)
  config = train_helpers.load(data_root, 1, (f"--config.init_from={first}", "--config.phases.pretrain.peak_lr=0.0"))
  loop.train(config, tmp_path / "second")
  a, b = restore.load_model(first).params, restore.load_model(tmp_path / "second").params
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  step_2 = restore.load_model(first / "checkpoints" / "2")
  assert step_2.source == f"{first} step 2"
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(step_2.params)))
  config = train_helpers.load(data_root, 1, (f"--config.init_from={first / 'checkpoints' / '2'}",
                                             "--config.phases.pretrain.peak_lr=0.0"))
  loop.train(config, tmp_path / "from_2")
  c = restore.load_model(tmp_path / "from_2").params
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(step_2.params), jax.tree.leaves(c)))
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  with pytest.raises(CheckpointError, match=r"checkpoints/3: not a completed checkpoint \(completed steps: \[2, 4\]\)"):
    restore.load_model(first / "checkpoints" / "3")
  from heal_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  other = tokenizer_lib.train_tokenizer([data_root / "corpus" / "general.jsonl"], tmp_path / "other_tok",
                                        vocab_size=400)
  for source in (first, first / "checkpoints" / "2"):
    config = train_helpers.load(data_root, 1, (f"--config.init_from={source}",
                                               f"--config.data.tokenizer={other.path.parent}"))
    with pytest.raises(ValueError, match=r"init_from .*first was trained with the tokenizer .*differs from "
                       r"config.data.tokenizer"):
      loop.train(config, tmp_path / "third")
    assert not (tmp_path / "third").exists()  # refused before the lock, metrics and checkpoints/
  first.rename(tmp_path / "first_moved")  # a run with checkpoints resumes from them, init_from gone or not
  config = train_helpers.load(data_root, 2, (f"--config.init_from={first / 'checkpoints' / '2'}",
                                             "--config.phases.pretrain.peak_lr=0.0"))
  assert loop.train(config, tmp_path / "from_2") == {"status": "done", "step": 2, "skipped": 0}


def test_init_from_an_hf_directory(data_root, tmp_path, capsys):
  """A run initialised from an HF export (read block by block, train.init.from_hf) starts from it."""
  import safetensors.torch  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from heal_jax import cli  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint import hf_convert  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  first = tmp_path / "first"
  loop.train(train_helpers.load(data_root, 4), first)
  hf_convert.orbax_to_hf(first, tmp_path / "hf", dtype="float32")
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")]  # the intermediate is gone
  # The command's default export of a work directory: bfloat16, each tensor the float32 one rounded
  # as torch rounds it; a converted checkpoint has no --dtype to choose.
  assert cli.main(["convert", "orbax-to-hf", str(first), str(tmp_path / "hf_bf16")]) == 0
  assert json.loads((tmp_path / "hf_bf16" / "config.json").read_text())["dtype"] == "bfloat16"
  fp32, bf16 = (safetensors.torch.load_file(str(tmp_path / d / "model.safetensors")) for d in ("hf", "hf_bf16"))
  assert fp32.keys() == bf16.keys()
  for name, x in fp32.items():
    assert x.dtype == torch.float32 and bf16[name].dtype == torch.bfloat16, name
    assert torch.equal(x.to(torch.bfloat16), bf16[name]), name
  hf_convert.hf_to_orbax(tmp_path / "hf_bf16", tmp_path / "ck")
  with pytest.raises(CheckpointError, match="--dtype applies to exports from a training work directory"):
    hf_convert.orbax_to_hf(tmp_path / "ck", tmp_path / "x", dtype="float32")
  config = train_helpers.load(data_root, 1, (f"--config.init_from={tmp_path / 'hf'}",
                                             "--config.phases.pretrain.peak_lr=0.0"))
  capsys.readouterr()
  loop.train(config, tmp_path / "second")
  assert f"from HF {tmp_path / 'hf'}" in capsys.readouterr().err
  a, b = restore.load_model(first).params, restore.load_model(tmp_path / "second").params
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_checkpoints_keep_the_last_k_and_every_mth(data_root, tmp_path):
  config = train_helpers.load(data_root, 12, ("--config.checkpoint.every_steps=2", "--config.checkpoint.keep=2",
                                              "--config.checkpoint.keep_period=4"))
  loop.train(config, tmp_path / "w")
  kept = sorted(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == [4, 8, 10, 12]


def _copy_run(base: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.copytree(base, dst)
  return dst


def test_a_resume_that_cannot_continue_says_why_and_changes_nothing(data_root, tmp_path):
  """A changed model shape, tokenizer, data.num_shards, seed, data.worker_count or data.pack_defer, or a damaged newest
  step: one error naming the key or the step (and the step to go back to); the work directory's config and tokenizer stay."""
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  base = tmp_path / "base"
  loop.train(train_helpers.load(data_root, 8, ("--config.checkpoint.every_steps=4",)), base)
  config_json = (base / "config.json").read_text()
  tokenizer = (base / "tokenizer" / "tokenizer.model").read_bytes()

  def resume(name, *extra):
    w = _copy_run(base, tmp_path / name)
    loop.train(train_helpers.load(data_root, 12, ("--config.checkpoint.every_steps=4", *extra)), w)

  cases = [
      ("layers", ("--config.model.num_layers=3",), r"checkpoints/8 holds a different model: model.num_layers: saved 2, now 3"),
      ("mlp", ("--config.model.intermediate_size=256",), r"model.intermediate_size: saved \d+, now 256"),
      ("shards", ("--config.data.num_shards=4",), r"no data state for shard 2; it was saved with data.num_shards=2"),
  ]
  for name, extra, message in cases:
    with pytest.raises(CheckpointError, match=message):
      resume(name, *extra)
    assert (tmp_path / name / "config.json").read_text() == config_json

  data_cases = [  # the data state's own field names used to be all the message gave
      ("seed", ("--config.seed=1",), r"seed: saved 0, now 1.*\(in the config: seed is config.seed \+ 1000 x"),
      ("workers", ("--config.data.worker_count=1",),
       r"worker_count: saved 0, now 1.*\(in the config: worker_count is config.data.worker_count\)"),
      ("defer", ("--config.data.pack_defer=4",),
       r"pack_defer: saved 16, now 4.*\(in the config: pack_defer is config.data.pack_defer"),
  ]
  for name, extra, message in data_cases:
    with pytest.raises(ValueError, match=message):
      resume(name, *extra)
    assert (tmp_path / name / "config.json").read_text() == config_json

  other_tok = tmp_path / "other_tok"
  train_helpers.tokenizer.train_tokenizer([data_root / "corpus" / "medical.jsonl"], other_tok, vocab_size=512)
  with pytest.raises(ValueError, match="differs from the tokenizer this work directory was trained with"):
    resume("tok", f"--config.data.tokenizer={other_tok}")
  assert (tmp_path / "tok" / "tokenizer" / "tokenizer.model").read_bytes() == tokenizer

  damaged = _copy_run(base, tmp_path / "damaged_src")
  data_files = sorted((damaged / "checkpoints" / "8" / "state").rglob("ocdbt.process_*/d/*"),
                      key=lambda p: p.stat().st_size)
  data_files[-1].write_bytes(data_files[-1].read_bytes()[:100])  # the biggest array file, truncated
  with pytest.raises(CheckpointError, match=r"checkpoints/8 cannot be read \(.*\); if a file of it is truncated"
                                            r" or missing, remove that directory to resume from step 4"):
    loop.train(train_helpers.load(data_root, 12, ("--config.checkpoint.every_steps=4",)), damaged)


def test_the_work_directory_keeps_its_tokenizer_once_trained(data_root, tmp_path):
  """keep_tokenizer copies config.data.tokenizer in; a different one replaces it only while no checkpoint
  was trained with it."""
  from heal_jax.data import mixture  # pylint: disable=import-outside-toplevel
  other = tmp_path / "other_tok"
  train_helpers.tokenizer.train_tokenizer([data_root / "corpus" / "medical.jsonl"], other, vocab_size=512)
  w = tmp_path / "w"
  first = train_helpers.load(data_root, 1)
  second = train_helpers.load(data_root, 1, (f"--config.data.tokenizer={other}",))
  kept = w / mixture.WORKDIR_TOKENIZER / "tokenizer.model"
  mixture.keep_tokenizer(first, w, trained=False)
  assert kept.read_bytes() == (data_root / "tokenizer" / "tokenizer.model").read_bytes()
  mixture.keep_tokenizer(first, w, trained=True)  # the same tokenizer again: fine
  mixture.keep_tokenizer(second, w, trained=False)  # nothing trained yet: replaced
  assert kept.read_bytes() == (other / "tokenizer.model").read_bytes()
  with pytest.raises(ValueError, match="differs from the tokenizer this work directory was trained with"):
    mixture.keep_tokenizer(first, w, trained=True)
  assert kept.read_bytes() == (other / "tokenizer.model").read_bytes()


def test_a_second_trainer_on_a_busy_work_directory_is_refused(data_root, tmp_path):
  lock = workdir_lock.acquire(tmp_path / "w", print)  # as another trainer on this work directory would
  try:
    with pytest.raises(workdir_lock.WorkdirInUse, match="in use by another heal-jax train"):
      loop.train(train_helpers.load(data_root, 2), tmp_path / "w")
  finally:
    lock.release()
  assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [workdir_lock.LOCK_NAME]  # nothing else written


def test_a_read_of_the_newest_step_that_training_removes_meanwhile_reads_the_new_newest(data_root, tmp_path,
                                                                                         monkeypatch):
  """eval, generate and export read a work directory's newest step while its trainer may be running and
  remove that step (checkpoint.keep): such a read failed about 3% of the time in a probe, with advice to
  delete the step. A failed read is now retried when the step it read is gone."""
  from heal_jax.checkpoint import workdir_restore  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "w"
  loop.train(train_helpers.load(data_root, 3, ("--config.checkpoint.every_steps=1",)), workdir)
  real = workdir_restore.newest_step
  picked = []

  def removed_while_read(wd, step=None):
    stored = real(wd, step)
    picked.append(stored.step)
    if len(picked) == 1:  # the trainer's cleanup takes the step just picked
      shutil.rmtree(stored.state_dir.parent)
    return stored

  monkeypatch.setattr(workdir_restore, "newest_step", removed_while_read)
  loaded = restore.load_model(workdir)
  assert picked == [3, 2] and loaded.source == f"{workdir} step 2"

  # A damaged newest step that stays is an error naming it, even when the trainer saves a newer one
  # meanwhile: never silently replaced by another step.
  monkeypatch.setattr(workdir_restore, "newest_step", real)
  loop.train(train_helpers.load(data_root, 4, ("--config.checkpoint.every_steps=1",)), workdir)  # steps 2..4
  for data_file in (p for p in (workdir / "checkpoints" / "4" / "state").rglob("*") if p.is_file() and
                    p.parent.name == "d"):  # every array file: which one holds the params varies by run
    data_file.write_bytes(data_file.read_bytes()[:data_file.stat().st_size // 2])
  real_params = workdir_restore._params_of_step  # pylint: disable=protected-access

  def newer_step_saved(*args):
    try:
      return real_params(*args)
    finally:  # a complete step 5 appears while step 4 is read, as the trainer's next save would
      if not (workdir / "checkpoints" / "5").exists():
        shutil.copytree(workdir / "checkpoints" / "3", workdir / "checkpoints" / "5")

  monkeypatch.setattr(workdir_restore, "_params_of_step", newer_step_saved)
  with pytest.raises(CheckpointError, match=r"checkpoints/4 cannot be read"):
    restore.load_model(workdir)


def test_damaged_checkpoint_files_are_named_with_the_step_to_go_back_to(data_root, tmp_path):
  """A truncated or missing file of the newest step (its data state, or its arrays as eval and
  export read them) is a CheckpointError naming it and the step before, not a raw traceback."""
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "w"
  loop.train(train_helpers.load(data_root, 2, ("--config.checkpoint.every_steps=1",)), workdir)
  longer = train_helpers.load(data_root, 3, ("--config.checkpoint.every_steps=1",))
  shard = workdir / "checkpoints" / "2" / "data" / "shard_0.json"
  text = shard.read_text()
  shard.write_text(text[:len(text) // 2])
  with pytest.raises(CheckpointError, match=r"shard_0.json cannot be read.*remove that directory to resume from step 1"):
    loop.train(longer, workdir)
  shard.unlink()
  with pytest.raises(CheckpointError, match=r"shard_0.json is missing.*remove that directory to resume from step 1"):
    loop.train(longer, workdir)
  shard.write_text(text)
  state = workdir / "checkpoints" / "2" / "state"
  for data_file in (p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"):  # the arrays' bytes
    data_file.write_bytes(data_file.read_bytes()[:data_file.stat().st_size // 2])
  with pytest.raises(CheckpointError, match=r"checkpoints/2 cannot be read .*remove that step's directory"):
    restore.load_model(workdir)
  meta = workdir / "checkpoints" / "2" / "meta" / "metadata"  # the step's config, read first by eval and export
  meta.write_text("")
  with pytest.raises(CheckpointError, match=r"checkpoints/2/meta cannot be read \(JSONDecodeError.*remove that step's"):
    restore.load_model(workdir)
  shutil.rmtree(meta.parent)
  with pytest.raises(CheckpointError, match=r"checkpoints/2/meta cannot be read .*remove that step's directory"):
    restore.load_model(workdir)


def test_a_resume_keeps_the_phases_that_already_ran(data_root, tmp_path, capsys):
  """Stopped inside the second phase: lengthening or reshaping the finished first phase is refused
  (it would move the second phase and rewrite config.json), lengthening the running one is not."""
  two = ("--config.phase_order=pretrain,extend", "--config.phases.extend.steps=3",
         "--config.phases.extend.warmup_steps=0", "--config.phases.extend.seq_len=64",
         "--config.phases.extend.global_batch=8",
         "--config.checkpoint.every_steps=1")
  workdir = tmp_path / "w"
  loop.train(train_helpers.load(data_root, 2, two + ("--config.phases.extend.steps=1",)), workdir)  # to step 3
  for change, key in [("--config.phases.pretrain.steps=3", "config.phases.pretrain.steps: saved 2, now 3"),
                      ("--config.phases.pretrain.seq_len=32", "config.phases.pretrain.seq_len: saved 64, now 32")]:
    with pytest.raises(ValueError, match=rf"phase pretrain finished before step 3.*{key}.*new --workdir"):
      loop.train(train_helpers.load(data_root, 2, two + (change,)), workdir)
  config_json = (workdir / "config.json").read_text()
  capsys.readouterr()
  loop.train(train_helpers.load(data_root, 2, two), workdir)  # extend grows from 1 to 3 steps: allowed
  err = capsys.readouterr().err
  found = re.search(r"phase extend now has 3 steps \(saved with 1, 1 of them run\): its learning-rate schedule is "
                    r"recomputed over 3 steps, so the rate at step 3 is ([0-9.e+-]+) \(it was ([0-9.e+-]+)\)", err)
  assert ("resumed from step 3 (phase extend) with a config changed since then: config.phases.extend.steps: saved 1, "
          "now 3 (config.init_from acts only at a fresh start") in err
  assert found and float(found.group(1)) > float(found.group(2))  # the decay ended at step 3; stretched, it rises
  assert restore.load_model(workdir).source.endswith("step 5")
  assert config_json != (workdir / "config.json").read_text()  # rewritten by the allowed resume only


def _drop_eval_rows(workdir: pathlib.Path, step: int) -> None:
  """metrics.jsonl as a SIGTERM on the last step of a phase leaves it: the step saved, its eval not run."""
  path = workdir / "metrics.jsonl"
  rows = [line for line in path.read_text().splitlines()
          if not (json.loads(line)["kind"] == "eval" and json.loads(line)["step"] == step)]
  path.write_text("".join(row + "\n" for row in rows))


def test_a_phase_end_eval_that_did_not_run_runs_on_resume(data_root, tmp_path, capsys):
  evals = ("--config.eval.holdout_examples=4", "--config.checkpoint.every_steps=1")
  workdir = tmp_path / "w"
  loop.train(train_helpers.load(data_root, 2, evals), workdir)
  expected = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
  assert [r["step"] for r in expected] == [2]
  _drop_eval_rows(workdir, 2)
  capsys.readouterr()
  assert loop.train(train_helpers.load(data_root, 2, evals), workdir)["status"] == "done"  # all phases were done
  assert "phase pretrain's held-out eval at step 2 did not run (stopped first); running it" in capsys.readouterr().err
  again = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
  assert [r["step"] for r in again] == [2]
  assert all(abs(again[0][k] - expected[0][k]) < 1e-6 for k in expected[0] if k.startswith("loss/"))
  capsys.readouterr()
  assert loop.train(train_helpers.load(data_root, 2, evals), workdir)["status"] == "done"  # nothing left to do
  err = capsys.readouterr().err
  assert "nothing to do" in err and "not the run's" not in err
  # another seed does not retrain a finished run; the log says the config was not used, and how to use it
  assert loop.train(train_helpers.load(data_root, 2, evals + ("--config.seed=7",)), workdir)["status"] == "done"
  assert (f"nothing to do, and this config is not the run's (config.seed: saved 0, now 7): to train with it, use a "
          f"new --workdir (--config.init_from={workdir} starts from this run)") in capsys.readouterr().err
  # a finished run given another model is refused as a resume would be, not reported done
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  with pytest.raises(CheckpointError, match=r"holds a different model: model.num_layers: saved 2, now 3"):
    loop.train(train_helpers.load(data_root, 2, evals + ("--config.model.num_layers=3",)), workdir)


def test_every_data_state_field_names_its_config_key():
  """A refused data state names the config keys of the fields that differ: every field of the state
  (PipelineSpec's, and the examples per source) has one."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from heal_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  fields = {f.name for f in dataclasses.fields(pipeline.PipelineSpec)} | {"examples"}
  assert fields == set(loop._SPEC_FROM)  # pylint: disable=protected-access
