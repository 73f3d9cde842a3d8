"""HF <-> heal-jax checkpoint conversion: bitwise round trips, loadability, and every bad input."""

import json
import pathlib

import jax
import numpy as np
import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from heal_jax import cli
from heal_jax.checkpoint import hf_convert, params_store, restore
from heal_jax.checkpoint.errors import CheckpointError
from tests import hf_files, hf_reference

TEXT = ("The patient reports chest pain for 3 days. Denies fever. Takes lisinopril 20 mg daily.\n"
        "Blood pressure is 142/90. Plan: start aspirin 81 mg and follow up in 2 weeks.\n") * 20


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> pathlib.Path:
  d = tmp_path_factory.mktemp("tok")
  (d / "corpus.txt").write_text(TEXT)
  spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"),
                                 vocab_size=90, model_type="bpe", byte_fallback=False,
                                 bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
  (d / "corpus.txt").unlink()
  (d / "tokenizer.vocab").unlink()
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False}))
  return d


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_round_trip_is_bitwise_and_loads_in_transformers(tmp_path, tokenizer_dir, dtype, tied):
  model = hf_reference.hf_llama(vocab_size=90, tie_word_embeddings=tied,
                                rope_scaling={"rope_type": "linear", "factor": 2.0},
                                head_dim=16 if tied else 32)  # 32: wider than hidden / heads
  src = hf_files.save_hf(model, tmp_path / "hf", tokenizer_dir, dtype)
  assert len(list(src.glob("*.safetensors"))) >= 2
  assert cli.main(["convert", "hf-to-orbax", str(src), str(tmp_path / "ck")]) == 0
  assert cli.main(["convert", "orbax-to-hf", str(tmp_path / "ck"), str(tmp_path / "out"),
                   "--max-shard-gb", str(30_000 / 1024**3)]) == 0
  out = tmp_path / "out"
  assert (out / "model.safetensors.index.json").is_file()
  before, after = hf_files.tensors(src), hf_files.tensors(out)
  assert sorted(before) == sorted(after)
  for name, x in before.items():
    assert x.dtype == after[name].dtype and x.shape == after[name].shape, name
    assert x.tobytes() == after[name].tobytes(), name
  skip = {"transformers_version"}
  config_in = {k: v for k, v in json.loads((src / "config.json").read_text()).items() if k not in skip}
  config_out = {k: v for k, v in json.loads((out / "config.json").read_text()).items() if k not in skip}
  assert config_out == config_in
  tokens = np.random.RandomState(0).randint(0, 90, (2, 21))
  logits = [hf_reference.hf_logits(AutoModelForCausalLM.from_pretrained(d).float().eval(), tokens)
            for d in (src, out)]
  np.testing.assert_array_equal(logits[1], logits[0])
  tok_in, tok_out = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
  sample = "Takes lisinopril 20 mg daily."
  assert tok_out(sample)["input_ids"] == tok_in(sample)["input_ids"]
  assert tok_out(sample)["input_ids"][0] == 1  # BOS carried through


def test_converted_checkpoint_gives_hf_logits(tmp_path):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from heal_jax.model import llama  # pylint: disable=import-outside-toplevel
  model = hf_reference.hf_llama(num_key_value_heads=1)
  src = hf_files.save_hf(model, tmp_path / "hf")
  hf_convert.hf_to_orbax(src, tmp_path / "ck")
  for scan in (False, True):
    cfg = params_store.model_config(tmp_path / "ck").replace(scan_layers=scan)
    params = params_store.load_params(tmp_path / "ck", cfg)
    tokens = np.random.RandomState(1).randint(0, 97, (1, 17))
    ours = llama.Llama(cfg).apply({"params": params}, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(ours), hf_reference.hf_logits(model, tokens), atol=1e-4, rtol=0)


def test_relative_paths_convert_and_load(tmp_path, monkeypatch):
  hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  monkeypatch.chdir(tmp_path)
  hf_convert.hf_to_orbax(pathlib.Path("hf"), pathlib.Path("ck"))
  hf_convert.orbax_to_hf(pathlib.Path("ck"), pathlib.Path("out"))
  cfg = params_store.model_config(pathlib.Path("ck"))
  assert params_store.load_params(pathlib.Path("ck"), cfg)["final_norm"]["scale"].shape == (cfg.hidden_size,)
  for name, x in hf_files.tensors(tmp_path / "out").items():
    assert x.tobytes() == hf_files.tensors(tmp_path / "hf")[name].tobytes(), name


def test_an_output_that_would_delete_the_input_is_refused(tmp_path):
  src = hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  before = hf_files.tensors(src)
  for dst in (src, tmp_path):
    with pytest.raises(CheckpointError, match="would replace the input"):
      hf_convert.hf_to_orbax(src, dst, overwrite=True)
  hf_convert.hf_to_orbax(src, tmp_path / "ck")
  with pytest.raises(CheckpointError, match="would replace the input"):
    hf_convert.orbax_to_hf(tmp_path / "ck", tmp_path / "ck", overwrite=True)
  assert hf_files.tensors(src).keys() == before.keys() and (tmp_path / "ck" / params_store.MANIFEST).is_file()
  (tmp_path / "afile").write_text("mine")
  with pytest.raises(CheckpointError, match="exists and is not a directory"):
    hf_convert.orbax_to_hf(tmp_path / "ck", tmp_path / "afile", overwrite=True)
  assert (tmp_path / "afile").read_text() == "mine"
  assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_config_defaults_follow_transformers():
  from transformers import LlamaConfig  # pylint: disable=import-outside-toplevel
  from heal_jax.model.config import from_hf_config  # pylint: disable=import-outside-toplevel
  minimal = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
  ours, theirs = from_hf_config(minimal), LlamaConfig(**minimal)
  assert (ours.max_position_embeddings, ours.rms_norm_eps, ours.num_kv_heads) == (
      theirs.max_position_embeddings, theirs.rms_norm_eps, theirs.num_key_value_heads)


def test_a_stale_config_dtype_is_a_warning_and_the_weights_convert_as_stored(tmp_path):
  src = hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  hf_files.edit_config(src, dtype="bfloat16")  # transformers reads it as a loading default; the weights are float32
  messages = []
  summary = hf_convert.hf_to_orbax(src, tmp_path / "ck", log=messages.append)
  assert any("says dtype='bfloat16' but the weights are float32" in m for m in messages)
  assert summary["dtype"] == "float32"
  loaded = restore.load_model(tmp_path / "ck")
  assert loaded.params["embed"]["embedding"].dtype == np.float32 and loaded.cfg.param_dtype == "float32"


def test_without_the_cpu_backend_conversion_says_how_to_add_it(tmp_path, monkeypatch):
  src = hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf")

  def no_cpu(backend=None):
    raise RuntimeError(f"Unknown backend {backend}")

  monkeypatch.setattr(jax, "local_devices", no_cpu)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  with pytest.raises(CheckpointError, match=r"JAX_PLATFORMS='cuda' leaves out; add it \(e.g. JAX_PLATFORMS=cuda,cpu\)"):
    hf_convert.hf_to_orbax(src, tmp_path / "ck")
  hf_files.assert_no_output(tmp_path / "ck")


def test_tied_checkpoint_that_also_stores_its_head_converts(tmp_path):
  """torch.save(state_dict) of a tied model stores lm_head.weight as a copy of the embedding: it is
  skipped when equal bit for bit, and the result equals the checkpoint without it."""
  src = hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  hf_files.edit_config(src, tie_word_embeddings=True)
  hf_files.rewrite_single_file(src, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].copy()))
  hf_convert.hf_to_orbax(src, tmp_path / "ck")
  hf_files.rewrite_single_file(src, lambda t: t.pop("lm_head.weight"))
  hf_convert.hf_to_orbax(src, tmp_path / "ck_without")
  a, b = restore.load_model(tmp_path / "ck").params, restore.load_model(tmp_path / "ck_without").params
  assert jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b))


def test_existing_output_is_not_overwritten(tmp_path):
  src = hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  (tmp_path / "ck").mkdir()
  (tmp_path / "ck" / "keep.txt").write_text("mine")
  with pytest.raises(CheckpointError, match="already exists"):
    hf_convert.hf_to_orbax(src, tmp_path / "ck")
  assert (tmp_path / "ck" / "keep.txt").read_text() == "mine"


def test_tokenizer_files_without_tokenizer_model_are_warned_about(tmp_path, tokenizer_dir):
  src = hf_files.save_hf(hf_reference.hf_llama(vocab_size=90), tmp_path / "hf", tokenizer_dir)
  lines = []
  hf_convert.hf_to_orbax(src, tmp_path / "ck", log=lines.append)
  assert not lines
  (src / "tokenizer.model").unlink()  # tokenizer_config.json stays
  hf_convert.hf_to_orbax(src, tmp_path / "ck2", log=lines.append)
  assert lines == [f"warning: {src} has tokenizer files but no tokenizer.model (sentencepiece), which heal-jax's "
                   "train, eval and generate read; copy it into DST/tokenizer/ before using the checkpoint"]


def test_export_writes_the_tokenizers_special_ids_and_keeps_a_chat_template(tmp_path, tokenizer_dir):
  """A checkpoint made here (no HF config to inherit) is exported with its tokenizer's BOS/EOS ids, so
  transformers' generate stops at EOS (it ran on past it); a chat template survives both directions."""
  from heal_jax.checkpoint import random_init  # pylint: disable=import-outside-toplevel
  from heal_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  cfg = ModelConfig(vocab_size=90, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2,
                    max_position_embeddings=64, param_dtype="float32")
  random_init.write_random_checkpoint(cfg, tmp_path / "ck", seed=1, tokenizer_dir=tokenizer_dir)
  hf_convert.orbax_to_hf(tmp_path / "ck", tmp_path / "hf")
  sp = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
  assert (config["bos_token_id"], config["eos_token_id"]) == (sp.bos_id(), sp.eos_id()) == (1, 2)
  assert "pad_token_id" not in config  # this tokenizer has no pad piece (pad_id -1)
  assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
  model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  with torch.no_grad():
    model.lm_head.weight.zero_()
    model.lm_head.weight[2, 0] = 1.0  # with positive hidden feature 0 after the final norm: EOS always wins
    model.model.norm.weight.zero_()
    model.model.norm.weight[0] = 1.0
    hidden = model.model(torch.tensor([[1, 5, 6]])).last_hidden_state
    assert hidden[0, -1, 0] > 0
    out = model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=6, do_sample=False)
  assert out[0, 3:].tolist() == [2]
  template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
  (tmp_path / "hf" / "chat_template.jinja").write_text(template)
  hf_convert.hf_to_orbax(tmp_path / "hf", tmp_path / "ck2")
  hf_convert.orbax_to_hf(tmp_path / "ck2", tmp_path / "hf2")
  assert (tmp_path / "hf2" / "chat_template.jinja").read_text() == template
  assert AutoTokenizer.from_pretrained(tmp_path / "hf2").chat_template == template


def test_an_output_behind_a_symlink_is_written_where_it_points(tmp_path):
  """--overwrite onto a link to big storage replaces the folder it points to and keeps the link (it
  used to fail after the whole conversion, leaving the staging folder behind)."""
  src = hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  (tmp_path / "big").mkdir()
  (tmp_path / "big" / "ck").mkdir()
  (tmp_path / "big" / "ck" / "old.txt").write_text("old")
  (tmp_path / "ck").symlink_to(tmp_path / "big" / "ck")
  with pytest.raises(CheckpointError, match=r"ck is not a checkpoint \(no heal_checkpoint.json, nor config.json with "
                                            r"HF weights; it holds old.txt\): --overwrite replaces checkpoints only"):
    hf_convert.hf_to_orbax(src, tmp_path / "ck", overwrite=True)  # a folder of the user's own: kept
  assert (tmp_path / "big" / "ck" / "old.txt").read_text() == "old"
  workdir = tmp_path / "workdir"  # a training work directory has a config.json too (the run's)
  for name in ("checkpoints/100", "tensorboard"):
    (workdir / name).mkdir(parents=True)
  (workdir / "config.json").write_text("{}")
  (workdir / "metrics.jsonl").write_text("{}\n")
  with pytest.raises(CheckpointError, match="workdir is not a checkpoint"):
    hf_convert.hf_to_orbax(src, workdir, overwrite=True)
  assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl", "tensorboard"]
  (tmp_path / "big" / "ck" / params_store.MANIFEST).write_text("{}")  # an older checkpoint: replaced whole
  hf_convert.hf_to_orbax(src, tmp_path / "ck", overwrite=True)
  assert (tmp_path / "ck").is_symlink() and (tmp_path / "big" / "ck" / params_store.MANIFEST).is_file()
  assert not (tmp_path / "big" / "ck" / "old.txt").exists()
  assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["ck"]
  (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "ck")
  with pytest.raises(CheckpointError, match=r"output .*dangling is a link to .*nowhere/ck, whose folder .*nowhere "
                                            r"does not exist"):
    hf_convert.hf_to_orbax(src, tmp_path / "dangling")


def test_a_work_directory_export_refuses_an_existing_output_before_loading(tmp_path, monkeypatch):
  (tmp_path / "w" / "checkpoints").mkdir(parents=True)
  (tmp_path / "out").mkdir()

  def no_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the output was checked")

  monkeypatch.setattr(restore, "load_model", no_load)
  with pytest.raises(CheckpointError, match="output directory .*out already exists"):
    hf_convert.orbax_to_hf(tmp_path / "w", tmp_path / "out")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_at_init_and_export(tmp_path, tokenizer_dir):
  """init used to write a checkpoint with a 90-piece tokenizer for a 64-word model (that readers then
  refused) and export to pass it on to transformers, which would index past the embedding table."""
  from heal_jax.checkpoint import random_init  # pylint: disable=import-outside-toplevel
  from heal_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  small = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=64, param_dtype="float32")
  with pytest.raises(CheckpointError, match=r"tokenizer.model has 90 pieces but the model's vocabulary is 64"):
    random_init.write_random_checkpoint(small, tmp_path / "ck", tokenizer_dir=tokenizer_dir)
  assert not (tmp_path / "ck").exists()
  random_init.write_random_checkpoint(small, tmp_path / "ck")
  params_store.copy_tokenizer(tokenizer_dir, tmp_path / "ck" / "tokenizer")  # copied in by hand
  with pytest.raises(CheckpointError, match=r"tokenizer.model has 90 pieces but the model's vocabulary is 64"):
    hf_convert.orbax_to_hf(tmp_path / "ck", tmp_path / "hf")
  hf_files.assert_no_output(tmp_path / "hf")


def test_an_export_without_a_tokenizer_says_so(tmp_path, capsys, tokenizer_dir):
  from heal_jax.checkpoint import random_init  # pylint: disable=import-outside-toplevel
  from heal_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  cfg = ModelConfig(vocab_size=90, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2,
                    max_position_embeddings=64)
  random_init.write_random_checkpoint(cfg, tmp_path / "bare")
  assert cli.main(["convert", "orbax-to-hf", str(tmp_path / "bare"), str(tmp_path / "hf_bare")]) == 0
  out = capsys.readouterr()
  assert "has no tokenizer files" in out.err and json.loads(out.out)["tokenizer_files"] == []
  random_init.write_random_checkpoint(cfg, tmp_path / "ck", tokenizer_dir=tokenizer_dir)
  assert cli.main(["convert", "orbax-to-hf", str(tmp_path / "ck"), str(tmp_path / "hf")]) == 0
  out = capsys.readouterr()
  assert "warning" not in out.err and "tokenizer.model" in json.loads(out.out)["tokenizer_files"]
