"""HF <-> heal-jax checkpoint conversion: bitwise round trips, loadability, and every bad input."""

import json
import pathlib
import struct

import jax
import numpy as np
import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from heal_jax import cli
from heal_jax.checkpoint import hf_convert, hf_mapping, params_store, restore, safetensors_io
from heal_jax.checkpoint.errors import CheckpointError
from tests import hf_reference

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


def _save_hf(model, path: pathlib.Path, tokenizer_dir=None, dtype=torch.float32, shard="40KB"):
  model.to(dtype).save_pretrained(path, max_shard_size=shard)
  if tokenizer_dir is not None:
    params_store.copy_tokenizer(tokenizer_dir, path)
  return path


def _tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  ckpt = hf_convert.open_hf(path)
  return {name: t.load() for name, t in ckpt.tensors.items()}


def _assert_no_output(dst: pathlib.Path):
  assert not dst.exists()
  assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.partial")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_round_trip_is_bitwise_and_loads_in_transformers(tmp_path, tokenizer_dir, dtype, tied):
  model = hf_reference.hf_llama(vocab_size=90, tie_word_embeddings=tied,
                                rope_scaling={"rope_type": "linear", "factor": 2.0},
                                head_dim=16 if tied else 32)  # 32: wider than hidden / heads
  src = _save_hf(model, tmp_path / "hf", tokenizer_dir, dtype)
  assert len(list(src.glob("*.safetensors"))) >= 2
  assert cli.main(["convert", "hf-to-orbax", str(src), str(tmp_path / "ck")]) == 0
  assert cli.main(["convert", "orbax-to-hf", str(tmp_path / "ck"), str(tmp_path / "out"),
                   "--max-shard-gb", str(30_000 / 1024**3)]) == 0
  out = tmp_path / "out"
  assert (out / "model.safetensors.index.json").is_file()
  before, after = _tensors(src), _tensors(out)
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
  src = _save_hf(model, tmp_path / "hf")
  hf_convert.hf_to_orbax(src, tmp_path / "ck")
  for scan in (False, True):
    cfg = params_store.model_config(tmp_path / "ck").replace(scan_layers=scan)
    params = params_store.load_params(tmp_path / "ck", cfg)
    tokens = np.random.RandomState(1).randint(0, 97, (1, 17))
    ours = llama.Llama(cfg).apply({"params": params}, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(ours), hf_reference.hf_logits(model, tokens), atol=1e-4, rtol=0)


# --- bad input: each fails before writing, names the tensor or field, leaves nothing ----------

def _rewrite_single_file(path: pathlib.Path, edit) -> None:
  """Loads all tensors of an HF dir, applies edit(dict), writes one model.safetensors."""
  tensors = _tensors(path)
  for f in list(path.glob("*.safetensors")) + list(path.glob("*.index.json")):
    f.unlink()
  edit(tensors)
  plan = [safetensors_io.PlannedTensor(n, a.dtype, a.shape) for n, a in tensors.items()]
  writer = safetensors_io.StreamingWriter(path / "model.safetensors", plan)
  for n, a in tensors.items():
    writer.write(n, a)
  writer.close()


def _edit_config(path: pathlib.Path, **changes):
  config = json.loads((path / "config.json").read_text())
  config.update(changes)
  (path / "config.json").write_text(json.dumps(config))


def _truncate(path: pathlib.Path):
  f = sorted(path.glob("*.safetensors"))[-1]
  data = f.read_bytes()
  f.write_bytes(data[:-100])
  return f.name


def _edit_header(path: pathlib.Path, edit) -> None:
  """One model.safetensors whose JSON header is replaced by edit(header) (same data bytes after it)."""
  _rewrite_single_file(path, lambda t: None)
  f = path / "model.safetensors"
  raw = f.read_bytes()
  (n,) = struct.unpack("<Q", raw[:8])
  header = json.loads(raw[8:8 + n])
  edit(header)
  new = json.dumps(header).encode()
  new += b" " * (n - len(new)) if len(new) <= n else b""
  f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def _overlap(header):  # layer 1's input norm reads layer 0's bytes (both [64] float32)
  header["model.layers.1.input_layernorm.weight"]["data_offsets"] = (
      header["model.layers.0.input_layernorm.weight"]["data_offsets"])


def _edit_index(path: pathlib.Path, **changes) -> None:
  index = json.loads((path / "model.safetensors.index.json").read_text())
  index["weight_map"].update(changes)
  (path / "model.safetensors.index.json").write_text(json.dumps(index))


def _other_shard(path: pathlib.Path, name: str) -> str:
  index = json.loads((path / "model.safetensors.index.json").read_text())
  return next(f for f in sorted(set(index["weight_map"].values())) if f != index["weight_map"][name])


BAD_INPUTS = {
    "config_not_an_object": (lambda p: (p / "config.json").write_text("[]"), "config.json: holds a JSON list"),
    "rope_factor_not_a_number": (lambda p: _edit_config(p, rope_parameters={"rope_type": "linear", "factor": "two",
                                                                            "rope_theta": 10000.0}),
                                 "config.json: config.json field rope_parameters.factor='two' is not a valid float"),
    "heads_not_a_number": (lambda p: _edit_config(p, num_attention_heads="four"),
                           "field num_attention_heads='four' is not a valid int"),
    "overlapping_tensors": (lambda p: _edit_header(p, _overlap),
                            "tensor model.layers.1.input_layernorm.weight at byte"),
    "bytes_after_the_data": (lambda p: (_rewrite_single_file(p, lambda t: None),
                                        (p / "model.safetensors").open("ab").write(b"\0" * 8)),
                             "8 bytes after the last tensor's data"),
    "index_names_the_wrong_shard": (
        lambda p: _edit_index(p, **{"model.norm.weight": _other_shard(p, "model.norm.weight")}),
        "maps tensor model.norm.weight to"),
    "index_leaves_the_directory": (lambda p: _edit_index(p, **{"model.norm.weight": "../model.safetensors"}),
                                   "lists '../model.safetensors': shards must be plain file names"),
    "missing_tensor": (lambda p: _rewrite_single_file(p, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
                       "missing tensor model.layers.1.mlp.up_proj.weight"),
    "unexpected_tensor": (lambda p: _rewrite_single_file(
        p, lambda t: t.__setitem__("model.layers.9.extra.weight", np.zeros(3, np.float32))),
                          "unexpected tensor model.layers.9.extra.weight"),
    "shape_mismatch": (lambda p: _rewrite_single_file(
        p, lambda t: t.__setitem__("model.norm.weight", np.zeros(65, np.float32))),
                       "tensor model.norm.weight has shape [65]"),
    "config_disagrees": (lambda p: _edit_config(p, num_key_value_heads=4),
                         "tensor model.layers.0.self_attn.k_proj.weight has shape [32, 64]"),
    "mixed_dtypes": (lambda p: _rewrite_single_file(
        p, lambda t: t.__setitem__("model.norm.weight", t["model.norm.weight"].astype(np.float16))),
                     "mixed dtypes"),
    "unsupported_rope": (lambda p: _edit_config(p, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                     "rope_theta": 10000.0}),
                         "rope_parameters.rope_type='yarn' is not supported"),
    "truncated_file": (_truncate, "truncated"),
    "tied_but_head_differs": (lambda p: _edit_config(p, tie_word_embeddings=True),
                              "lm_head.weight in"),
    "no_config": (lambda p: (p / "config.json").unlink(), "config.json is missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly(tmp_path, case, capsys):
  src = _save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  corrupt, message = BAD_INPUTS[case]
  corrupt(src)
  dst = tmp_path / "ck"
  with pytest.raises(CheckpointError, match=None) as err:
    hf_convert.hf_to_orbax(src, dst)
  assert message in str(err.value)
  _assert_no_output(dst)
  assert cli.main(["convert", "hf-to-orbax", str(src), str(dst)]) == 2
  assert message in capsys.readouterr().err
  _assert_no_output(dst)


def test_relative_paths_convert_and_load(tmp_path, monkeypatch):
  _save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  monkeypatch.chdir(tmp_path)
  hf_convert.hf_to_orbax(pathlib.Path("hf"), pathlib.Path("ck"))
  hf_convert.orbax_to_hf(pathlib.Path("ck"), pathlib.Path("out"))
  cfg = params_store.model_config(pathlib.Path("ck"))
  assert params_store.load_params(pathlib.Path("ck"), cfg)["final_norm"]["scale"].shape == (cfg.hidden_size,)
  for name, x in _tensors(tmp_path / "out").items():
    assert x.tobytes() == _tensors(tmp_path / "hf")[name].tobytes(), name


DAMAGED_CHECKPOINTS = {
    "orbax_metadata_deleted": (lambda c: (c / "params" / "_METADATA").unlink(),
                               "params: orbax metadata (_METADATA) missing or unreadable"),
    "manifest_without_model": (lambda c: _edit_manifest(c, lambda m: m.pop("model")),
                               "heal_checkpoint.json: no \"model\" object"),
    "manifest_field_missing": (lambda c: _edit_manifest(c, lambda m: m["model"].pop("hidden_size")),
                               "heal_checkpoint.json: \"model\": ModelConfig.__init__() missing"),
    "manifest_unknown_key": (lambda c: _edit_manifest(c, lambda m: m["model"].update(hiden_size=3)),
                             "heal_checkpoint.json: \"model\": unknown model config key(s): model.hiden_size"),
}


def _edit_manifest(ckpt: pathlib.Path, edit) -> None:
  manifest = json.loads((ckpt / params_store.MANIFEST).read_text())
  edit(manifest)
  (ckpt / params_store.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("case", sorted(DAMAGED_CHECKPOINTS))
def test_damaged_checkpoint_is_named_on_export(tmp_path, case, capsys):
  hf_convert.hf_to_orbax(_save_hf(hf_reference.hf_llama(), tmp_path / "hf"), tmp_path / "ck")
  damage, message = DAMAGED_CHECKPOINTS[case]
  damage(tmp_path / "ck")
  assert cli.main(["convert", "orbax-to-hf", str(tmp_path / "ck"), str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
  _assert_no_output(tmp_path / "out")


def test_an_output_that_would_delete_the_input_is_refused(tmp_path):
  src = _save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  before = _tensors(src)
  for dst in (src, tmp_path):
    with pytest.raises(CheckpointError, match="would replace the input"):
      hf_convert.hf_to_orbax(src, dst, overwrite=True)
  hf_convert.hf_to_orbax(src, tmp_path / "ck")
  with pytest.raises(CheckpointError, match="would replace the input"):
    hf_convert.orbax_to_hf(tmp_path / "ck", tmp_path / "ck", overwrite=True)
  assert _tensors(src).keys() == before.keys() and (tmp_path / "ck" / params_store.MANIFEST).is_file()
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


def test_truncated_shard_names_file(tmp_path):
  src = _save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  name = _truncate(src)
  with pytest.raises(CheckpointError, match=f"{name}: truncated"):
    hf_convert.hf_to_orbax(src, tmp_path / "ck")


def test_pickle_weights_refused_unless_allowed(tmp_path):
  model = hf_reference.hf_llama()
  src = tmp_path / "hf"
  src.mkdir()
  model.config.save_pretrained(src)
  torch.save(model.state_dict(), src / "pytorch_model.bin")
  with pytest.raises(CheckpointError, match="pickle weights.*--allow-pickle"):
    hf_convert.hf_to_orbax(src, tmp_path / "ck")
  _assert_no_output(tmp_path / "ck")
  hf_convert.hf_to_orbax(src, tmp_path / "ck", allow_pickle=True)
  hf_convert.orbax_to_hf(tmp_path / "ck", tmp_path / "out")
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  for name, x in _tensors(tmp_path / "out").items():
    assert x.tobytes() == state[name].tobytes(), name


def test_a_stale_config_dtype_is_a_warning_and_the_weights_convert_as_stored(tmp_path):
  src = _save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  _edit_config(src, dtype="bfloat16")  # transformers reads it as a loading default; the weights are float32
  messages = []
  summary = hf_convert.hf_to_orbax(src, tmp_path / "ck", log=messages.append)
  assert any("says dtype='bfloat16' but the weights are float32" in m for m in messages)
  assert summary["dtype"] == "float32"
  loaded = restore.load_model(tmp_path / "ck")
  assert loaded.params["embed"]["embedding"].dtype == np.float32 and loaded.cfg.param_dtype == "float32"


def test_without_the_cpu_backend_conversion_says_how_to_add_it(tmp_path, monkeypatch):
  src = _save_hf(hf_reference.hf_llama(), tmp_path / "hf")

  def no_cpu(backend=None):
    raise RuntimeError(f"Unknown backend {backend}")

  monkeypatch.setattr(jax, "local_devices", no_cpu)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  with pytest.raises(CheckpointError, match=r"JAX_PLATFORMS='cuda' leaves out; add it \(e.g. JAX_PLATFORMS=cuda,cpu\)"):
    hf_convert.hf_to_orbax(src, tmp_path / "ck")
  _assert_no_output(tmp_path / "ck")


def test_tied_checkpoint_that_also_stores_its_head_converts(tmp_path):
  """torch.save(state_dict) of a tied model stores lm_head.weight as a copy of the embedding: it is
  skipped when equal bit for bit, and the result equals the checkpoint without it."""
  src = _save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  _edit_config(src, tie_word_embeddings=True)
  _rewrite_single_file(src, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].copy()))
  hf_convert.hf_to_orbax(src, tmp_path / "ck")
  _rewrite_single_file(src, lambda t: t.pop("lm_head.weight"))
  hf_convert.hf_to_orbax(src, tmp_path / "ck_without")
  a, b = restore.load_model(tmp_path / "ck").params, restore.load_model(tmp_path / "ck_without").params
  assert jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b))


@pytest.mark.parametrize("case", ["legacy_format", "truncated", "nested"])
def test_pickle_weights_damaged_or_old_formats(tmp_path, case):
  """The pre-1.6 torch.save format cannot be memory-mapped: read without mapping, equal to the
  safetensors conversion; a damaged file or a nested training checkpoint is an error naming the file."""
  model = hf_reference.hf_llama()
  src = tmp_path / "hf"
  src.mkdir()
  model.config.save_pretrained(src)
  weights = src / "pytorch_model.bin"
  if case == "nested":
    torch.save({"state_dict": model.state_dict()}, weights)
  else:
    torch.save(model.state_dict(), weights, _use_new_zipfile_serialization=case != "legacy_format")
  if case == "truncated":
    weights.write_bytes(weights.read_bytes()[:1000])
  if case == "legacy_format":
    hf_convert.hf_to_orbax(src, tmp_path / "ck", allow_pickle=True)
    hf_convert.hf_to_orbax(_save_hf(model, tmp_path / "st"), tmp_path / "ck_st")
    a, b = restore.load_model(tmp_path / "ck").params, restore.load_model(tmp_path / "ck_st").params
    assert jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b))
    return
  message = "cannot be read as PyTorch weights" if case == "truncated" else "entry 'state_dict' is not a tensor"
  with pytest.raises(CheckpointError, match=f"pytorch_model.bin: {message}"):
    hf_convert.hf_to_orbax(src, tmp_path / "ck", allow_pickle=True)
  _assert_no_output(tmp_path / "ck")


@pytest.mark.parametrize("size", ["0", "-1", "nan", "inf"])
def test_max_shard_size_must_be_a_positive_number(tmp_path, size, capsys):
  assert cli.main(["convert", "orbax-to-hf", str(tmp_path / "ck"), str(tmp_path / "out"), "--max-shard-gb", size]) == 2
  assert "--max-shard-gb must be in (0, 1024)" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_a_converted_checkpoint_with_truncated_files_is_named(tmp_path):
  hf_convert.hf_to_orbax(_save_hf(hf_reference.hf_llama(), tmp_path / "hf"), tmp_path / "ck")
  for data_file in (p for p in (tmp_path / "ck" / "params").rglob("*") if p.is_file() and p.parent.name == "d"):
    data_file.write_bytes(data_file.read_bytes()[:data_file.stat().st_size // 2])
  with pytest.raises(CheckpointError, match=r"ck/params.* unreadable.*convert or export the checkpoint again"):
    restore.load_model(tmp_path / "ck")


def test_export_of_damaged_checkpoint_leaves_nothing(tmp_path):
  src = _save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  hf_convert.hf_to_orbax(src, tmp_path / "ck")
  manifest = json.loads((tmp_path / "ck" / params_store.MANIFEST).read_text())
  manifest["model"]["num_layers"] = 3
  (tmp_path / "ck" / params_store.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(CheckpointError, match="missing parameter layers_2/attention_norm/scale"):
    hf_convert.orbax_to_hf(tmp_path / "ck", tmp_path / "out")
  _assert_no_output(tmp_path / "out")


def test_existing_output_is_not_overwritten(tmp_path):
  src = _save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  (tmp_path / "ck").mkdir()
  (tmp_path / "ck" / "keep.txt").write_text("mine")
  with pytest.raises(CheckpointError, match="already exists"):
    hf_convert.hf_to_orbax(src, tmp_path / "ck")
  assert (tmp_path / "ck" / "keep.txt").read_text() == "mine"


def test_safetensors_header_checks(tmp_path):
  f = tmp_path / "x.safetensors"
  f.write_bytes(struct.pack("<Q", 10_000) + b"{}")
  with pytest.raises(safetensors_io.SafetensorsError, match="x.safetensors: truncated or corrupt"):
    safetensors_io.read_header(f)
  header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
  f.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
  with pytest.raises(safetensors_io.SafetensorsError, match="tensor w: 12 bytes for shape"):
    safetensors_io.read_header(f)
  f.write_bytes(struct.pack("<Q", 2) + b"[]")
  with pytest.raises(safetensors_io.SafetensorsError, match="x.safetensors: header is a JSON list"):
    safetensors_io.read_header(f)


def test_tokenizer_files_without_tokenizer_model_are_warned_about(tmp_path, tokenizer_dir):
  src = _save_hf(hf_reference.hf_llama(vocab_size=90), tmp_path / "hf", tokenizer_dir)
  lines = []
  hf_convert.hf_to_orbax(src, tmp_path / "ck", log=lines.append)
  assert not lines
  (src / "tokenizer.model").unlink()  # tokenizer_config.json stays
  hf_convert.hf_to_orbax(src, tmp_path / "ck2", log=lines.append)
  assert lines == [f"warning: {src} has tokenizer files but no tokenizer.model (sentencepiece), which heal-jax's "
                   "train, eval and generate read; copy it into DST/tokenizer/ before using the checkpoint"]


def test_a_flipped_bit_in_a_converted_checkpoint_is_named(tmp_path, capsys):
  import zlib  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint import random_init, restore  # pylint: disable=import-outside-toplevel
  from heal_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, max_position_embeddings=64)
  ck = tmp_path / "ck"
  random_init.write_random_checkpoint(cfg, ck)
  crc = json.loads((ck / params_store.MANIFEST).read_text())["crc32"]
  params = restore.load_model(ck).params
  expected = {"/".join(p): f"{zlib.crc32(np.ascontiguousarray(x).tobytes()):08x}"
              for p, x in hf_mapping.iter_paths(params)}
  assert crc == expected and len(crc) == 3 + 9 * 2  # embed, final norm, head + 9 per layer
  data = max((ck / "params").rglob("d/*"), key=lambda f: f.stat().st_size)  # the tensors' bytes
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 1  # a low mantissa bit: the value stays finite
  data.write_bytes(bytes(raw))
  with pytest.raises(CheckpointError, match=r"/params: tensor \S+ does not match its CRC-32 in heal_checkpoint.json"):
    restore.load_model(ck)
  from heal_jax.infer import placement  # pylint: disable=import-outside-toplevel
  with pytest.raises(CheckpointError, match=r"/params: tensor \S+ does not match its CRC-32 in heal_checkpoint.json"):
    placement.load(str(ck), "fsdp=2,tensor=4")  # read tensor by tensor onto a mesh: the same check
  assert cli.main(["convert", "orbax-to-hf", str(ck), str(tmp_path / "hf")]) == 2
  assert "does not match its CRC-32" in capsys.readouterr().err
  _assert_no_output(tmp_path / "hf")
  data.write_bytes(bytes(raw[:len(raw) // 2]) + bytes([raw[len(raw) // 2] ^ 1]) + bytes(raw[len(raw) // 2 + 1:]))
  manifest = json.loads((ck / params_store.MANIFEST).read_text())
  del manifest["crc32"]["lm_head/kernel"]  # a map that lost an entry must not skip that tensor's check
  (ck / params_store.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(CheckpointError, match=r"heal_checkpoint.json: no CRC-32 for tensor lm_head/kernel"):
    restore.load_model(ck)
  with pytest.raises(CheckpointError, match=r"heal_checkpoint.json: no CRC-32 for tensor lm_head/kernel"):
    placement.load(str(ck), "fsdp=2,tensor=4")


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
  src = _save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  (tmp_path / "big").mkdir()
  (tmp_path / "big" / "ck").mkdir()
  (tmp_path / "big" / "ck" / "old.txt").write_text("old")
  (tmp_path / "ck").symlink_to(tmp_path / "big" / "ck")
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
  _assert_no_output(tmp_path / "hf")


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
