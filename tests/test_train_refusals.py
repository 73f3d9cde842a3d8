"""Trainer: a bad setting, a missing file or a wrong work directory is refused before anything is
written, naming the config key or path."""

from __future__ import annotations

import pytest

from heal_jax import config as config_lib
from heal_jax.train import loop

from tests import train_helpers


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_helpers.make_corpus(tmp_path_factory.mktemp("train_data"))


@pytest.mark.parametrize("override,message", [
    ("--config.phases.pretrain.weights=general=1,pubmed=1", "unknown source 'pubmed'"),
    ("--config.model.attention_impl=flash", "attention_impl='flash' is not one of"),
    ("--config.mesh.fsdp=3", "does not fit"),
    ("--config.phases.pretrain.warmup_steps=-5", "pretrain.warmup_steps=-5: must be >= 0"),
    ("--config.phases.pretrain.warmup_steps=3", "warmup_steps=3 is more than the phase's steps=2"),
    ("--config.train.global_batch=12", "must be a multiple of the data x fsdp devices"),
    ("--config.phases.pretrain.weights=general=nan,medical=1", "weight nan; a weight is a finite number > 0"),
    ("--config.phases.pretrain.weights=general=1,general=2", "'general' is given twice"),
    ("--config.phase_order=pretrain,pretrain", r"names phase\(s\) \['pretrain'\] more than once"),
    ("--config.phases.pretrain.schedule=bogus", "phases.pretrain.schedule='bogus'; expected one of cosine"),
    ("--config.data.num_shards=3", "global batch 8 is not divisible by the data shards"),
    ("--config.eval.tasks=pubmedqa=/nonexistent/pubmedqa", "/nonexistent/pubmedqa"),
    ("--config.phases.pretrain.weights=,", r"config.phases.pretrain.weights=',' names no source"),
    ("--config.phases.pretrain.rope_scaling_factor=0.5", "pretrain.rope_scaling_factor=0.5: must be >= 1"),
    ("--config.data.sources.general.weight=0", "data.sources.general.weight: zero-weight source"),
    ("--config.data.sources.general.kind=doc", "data.sources.general.kind: unknown kind 'doc'"),
    ("--config.data.sources.general.format=parquet", "data.sources.general.format: unknown format"),
    ("--config.data.on_error=ignore", "config.data.on_error='ignore'"),
    ("--config.data.dedup.bands=7", "data.dedup.num_perm=128 must be a positive multiple of data.dedup.bands=7"),
    ("--config.init_from=/nonexistent/ckpt", r"config.init_from='/nonexistent/ckpt': no such directory"),
    ("--config.model.vocab_size=10", r"config.model.vocab_size \(the size of the tokenizer data.bootstrap "
                                     r"trains\): vocab_size 10: at least 260"),
    ("--config.data.prepared_dir=/nonexistent/prep", r"data.prepared_dir=/nonexistent/prep: no report.json; not a "
                                                     r"`heal-jax data prepare` output"),
])
def test_a_bad_setting_fails_before_the_work_directory_is_touched(data_root, tmp_path, override, message):
  config = train_helpers.load(data_root, 2, (override, "--config.data.bootstrap=synthetic",
                                             f"--config.data.tokenizer={tmp_path}/w/tok"))
  with pytest.raises(ValueError, match=message):
    loop.train(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("override,message", [
    ("--config.data.sources.general.paths=/nonexistent/*.jsonl",
     r"data.sources.general.paths: '/nonexistent/\*.jsonl' matches no file"),
    ("--config.data.sources.general.paths=", r"data.sources.general.paths is empty: give the source's files"),
    ("--config.data.tokenizer=/nonexistent/tok", "config.data.tokenizer: no tokenizer.model in /nonexistent/tok"),
    ("--config.model.vocab_size=300", r"has 512 pieces, more than config.model.vocab_size=300"),
])
def test_a_missing_data_file_or_tokenizer_fails_before_the_work_directory_is_touched(data_root, tmp_path,
                                                                                     override, message):
  """Without the bootstrap nothing will write them: found missing before the lock, metrics.jsonl and the
  tokenizer copy, not after."""
  config = train_helpers.load(data_root, 2, (override,))
  with pytest.raises(ValueError, match=message):
    loop.train(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_a_malformed_source_line_leaves_no_metrics_behind(data_root, tmp_path):
  """Found when the data are read (after the lock): metrics.jsonl and tensorboard/ used to be written
  first. The error names the file and line."""
  bad = tmp_path / "general.jsonl"
  lines = (data_root / "corpus" / "general.jsonl").read_text().splitlines()
  bad.write_text("\n".join(lines[:3] + ['{"text": "cut'] + lines[3:]) + "\n")
  config = train_helpers.load(data_root, 2, (f"--config.data.sources.general.paths={bad}",))
  with pytest.raises(ValueError, match=f"{bad}:4"):
    loop.train(config, tmp_path / "w")
  assert not (tmp_path / "w" / "metrics.jsonl").exists() and not (tmp_path / "w" / "tensorboard").exists()


def test_an_init_from_hf_folder_whose_weights_do_not_fit_is_refused_before_the_work_directory(data_root, tmp_path):
  """Its weight headers are read up front (no tensor data): a missing tensor, a truncated file or a
  layer count other than the run's used to fail after the lock, metrics.jsonl and checkpoints/."""
  from heal_jax.checkpoint import hf_convert, random_init  # pylint: disable=import-outside-toplevel
  from tests import hf_files  # pylint: disable=import-outside-toplevel
  config = train_helpers.load(data_root, 2)
  random_init.write_random_checkpoint(config_lib.model_config(config), tmp_path / "ck", seed=0)
  hf = tmp_path / "hf"
  hf_convert.orbax_to_hf(tmp_path / "ck", hf)
  config = train_helpers.load(data_root, 2, (f"--config.init_from={hf}",))
  hf_files.edit_config(hf, num_hidden_layers=3)  # the config says 3 layers, the weights hold 2
  with pytest.raises(ValueError, match="missing tensor model.layers.2.input_layernorm.weight"):
    loop.train(config, tmp_path / "w")
  hf_files.edit_config(hf, num_hidden_layers=2, rms_norm_eps=1e-6)
  with pytest.raises(ValueError, match="was trained with rms_norm_eps=1e-06, config.model.rms_norm_eps is 1e-05"):
    loop.train(config, tmp_path / "w")
  hf_files.edit_config(hf, rms_norm_eps=1e-5)
  hf_files.rewrite_single_file(hf, lambda arrays: arrays.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match="missing tensor model.layers.1.mlp.up_proj.weight"):
    loop.train(config, tmp_path / "w")
  data = (hf / "model.safetensors").read_bytes()
  (hf / "model.safetensors").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="model.safetensors"):
    loop.train(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("size", ["7b", "13b", "70b"])
def test_a_llama2_preset_builds_its_phases_and_names_the_paths_to_give(tmp_path, size):
  """`plan` builds the phases from the preset's one source; `train` asks for its files by key."""
  from heal_jax.train import phases as phases_lib  # pylint: disable=import-outside-toplevel
  preset = str(train_helpers.TINY.parent / f"llama2_{size}.py")
  (phase,) = phases_lib.from_config(config_lib.load_config(preset))
  assert phase.weights == {"corpus": 1.0}
  config = config_lib.load_config(preset, [f"--config.data.tokenizer={tmp_path}/tok"])
  with pytest.raises(ValueError, match=r"data.sources.corpus.paths is empty: .*--config.data.sources.corpus.paths="):
    loop.train(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("override,message", [
    ("--config.data.bootstrap=web", "config.data.bootstrap='web'"),
    ("--config.data.tokenizer=", "config.data.tokenizer is empty"),
    ("--config.data.sources.clinical.paths=/nonexistent/notes.jsonl",
     r"data.sources.clinical.paths: '/nonexistent/notes.jsonl' matches no file"),
])
def test_a_bad_data_setting_fails_before_the_bootstrap(tmp_path, override, message):
  """Checked before the lock and the bootstrap: an empty data.tokenizer used to reach the bootstrap, which
  tried to replace the current directory with a trained tokenizer; a missing file of a source the bootstrap
  does not write used to be found after it had written the corpus and trained a tokenizer."""
  config = config_lib.load_config(str(train_helpers.TINY), [override])
  with pytest.raises(ValueError, match=message):
    loop.train(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_the_bootstrap_trains_a_tokenizer_outside_the_work_directory_only_in_an_existing_directory(tmp_path):
  """A mistyped data.tokenizer with the bootstrap on used to get a new tokenizer trained at that path
  (a helper's run created /nonexistent)."""
  missing = tmp_path / "tok_typo"
  config = config_lib.load_config(str(train_helpers.TINY), [f"--config.data.tokenizer={missing}"])
  with pytest.raises(ValueError, match=rf"config.data.tokenizer: {missing} does not exist; data.bootstrap trains a "
                                       rf"tokenizer in a new directory only inside the work directory \(the default, "
                                       rf"\{{workdir\}}/tokenizer: {tmp_path / 'w' / 'tokenizer'}\), or in an existing "
                                       r"empty one"):
    loop.train(config, tmp_path / "w")
  assert not missing.exists() and not (tmp_path / "w").exists()


def test_the_bootstrap_never_replaces_a_folder_of_someone_elses(tmp_path):
  """data.tokenizer naming a folder without tokenizer.model (a typo, the wrong folder) used to be replaced
  whole by the bootstrap's tokenizer, deleting what was there."""
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  config = config_lib.load_config(str(train_helpers.TINY), [f"--config.data.tokenizer={mine}"])
  with pytest.raises(ValueError, match=f"config.data.tokenizer {mine} holds other files than the bootstrap's"):
    loop.train(config, tmp_path / "w")
  assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
  assert not (tmp_path / "w").exists()


def test_a_converted_checkpoint_or_a_file_is_refused_as_work_directory(data_root, tmp_path):
  """Training into a converted checkpoint's folder used to work, and eval of that folder then read the
  converted weights, never the training's."""
  from heal_jax.checkpoint import random_init  # pylint: disable=import-outside-toplevel
  config = train_helpers.load(data_root, 2)
  ckpt = tmp_path / "ckpt"
  random_init.write_random_checkpoint(config_lib.model_config(config), ckpt)
  before = sorted(p.name for p in ckpt.iterdir())
  with pytest.raises(ValueError, match=f"--workdir {ckpt} holds a converted checkpoint .*--config.init_from={ckpt}"):
    loop.train(config, ckpt)
  assert sorted(p.name for p in ckpt.iterdir()) == before
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="a file, not a directory"):
    loop.train(config, tmp_path / "file")
