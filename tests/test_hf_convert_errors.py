"""HF <-> heal-jax checkpoint conversion, bad input: each fails before writing, names the tensor, field or file,
and leaves nothing behind."""

import json
import pathlib
import struct

import jax
import numpy as np
import pytest
import torch

from heal_jax import cli
from heal_jax.checkpoint import hf_convert, hf_mapping, params_store, restore, safetensors_io
from heal_jax.checkpoint.errors import CheckpointError
from tests import hf_files, hf_reference


def _truncate(path: pathlib.Path):
  f = sorted(path.glob("*.safetensors"))[-1]
  data = f.read_bytes()
  f.write_bytes(data[:-100])
  return f.name


def _edit_header(path: pathlib.Path, edit) -> None:
  """One model.safetensors whose JSON header is replaced by edit(header) (same data bytes after it)."""
  hf_files.rewrite_single_file(path, lambda t: None)
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
    "rope_factor_not_a_number": (lambda p: hf_files.edit_config(p, rope_parameters={"rope_type": "linear", "factor": "two",
                                                                            "rope_theta": 10000.0}),
                                 "config.json: config.json field rope_parameters.factor='two' is not a valid float"),
    "heads_not_a_number": (lambda p: hf_files.edit_config(p, num_attention_heads="four"),
                           "field num_attention_heads='four' is not a valid int"),
    "overlapping_tensors": (lambda p: _edit_header(p, _overlap),
                            "tensor model.layers.1.input_layernorm.weight at byte"),
    "bytes_after_the_data": (lambda p: (hf_files.rewrite_single_file(p, lambda t: None),
                                        (p / "model.safetensors").open("ab").write(b"\0" * 8)),
                             "8 bytes after the last tensor's data"),
    "index_names_the_wrong_shard": (
        lambda p: _edit_index(p, **{"model.norm.weight": _other_shard(p, "model.norm.weight")}),
        "maps tensor model.norm.weight to"),
    "index_leaves_the_directory": (lambda p: _edit_index(p, **{"model.norm.weight": "../model.safetensors"}),
                                   "lists '../model.safetensors': shards must be plain file names"),
    "missing_tensor": (lambda p: hf_files.rewrite_single_file(p, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
                       "missing tensor model.layers.1.mlp.up_proj.weight"),
    "unexpected_tensor": (lambda p: hf_files.rewrite_single_file(
        p, lambda t: t.__setitem__("model.layers.9.extra.weight", np.zeros(3, np.float32))),
                          "unexpected tensor model.layers.9.extra.weight"),
    "shape_mismatch": (lambda p: hf_files.rewrite_single_file(
        p, lambda t: t.__setitem__("model.norm.weight", np.zeros(65, np.float32))),
                       "tensor model.norm.weight has shape [65]"),
    "config_disagrees": (lambda p: hf_files.edit_config(p, num_key_value_heads=4),
                         "tensor model.layers.0.self_attn.k_proj.weight has shape [32, 64]"),
    "mixed_dtypes": (lambda p: hf_files.rewrite_single_file(
        p, lambda t: t.__setitem__("model.norm.weight", t["model.norm.weight"].astype(np.float16))),
                     "mixed dtypes"),
    "unsupported_rope": (lambda p: hf_files.edit_config(p, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                     "rope_theta": 10000.0}),
                         "rope_parameters.rope_type='yarn' is not supported"),
    "truncated_file": (_truncate, "truncated"),
    "tied_but_head_differs": (lambda p: hf_files.edit_config(p, tie_word_embeddings=True),
                              "lm_head.weight in"),
    "no_config": (lambda p: (p / "config.json").unlink(), "config.json is missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly(tmp_path, case, capsys):
  src = hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  corrupt, message = BAD_INPUTS[case]
  corrupt(src)
  dst = tmp_path / "ck"
  with pytest.raises(CheckpointError, match=None) as err:
    hf_convert.hf_to_orbax(src, dst)
  assert message in str(err.value)
  hf_files.assert_no_output(dst)
  assert cli.main(["convert", "hf-to-orbax", str(src), str(dst)]) == 2
  assert message in capsys.readouterr().err
  hf_files.assert_no_output(dst)


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
  hf_convert.hf_to_orbax(hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf"), tmp_path / "ck")
  damage, message = DAMAGED_CHECKPOINTS[case]
  damage(tmp_path / "ck")
  assert cli.main(["convert", "orbax-to-hf", str(tmp_path / "ck"), str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
  hf_files.assert_no_output(tmp_path / "out")


def test_truncated_shard_names_file(tmp_path):
  src = hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf")
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
  hf_files.assert_no_output(tmp_path / "ck")
  hf_convert.hf_to_orbax(src, tmp_path / "ck", allow_pickle=True)
  hf_convert.orbax_to_hf(tmp_path / "ck", tmp_path / "out")
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  for name, x in hf_files.tensors(tmp_path / "out").items():
    assert x.tobytes() == state[name].tobytes(), name


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
    hf_convert.hf_to_orbax(hf_files.save_hf(model, tmp_path / "st"), tmp_path / "ck_st")
    a, b = restore.load_model(tmp_path / "ck").params, restore.load_model(tmp_path / "ck_st").params
    assert jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b))
    return
  message = "cannot be read as PyTorch weights" if case == "truncated" else "entry 'state_dict' is not a tensor"
  with pytest.raises(CheckpointError, match=f"pytorch_model.bin: {message}"):
    hf_convert.hf_to_orbax(src, tmp_path / "ck", allow_pickle=True)
  hf_files.assert_no_output(tmp_path / "ck")


@pytest.mark.parametrize("size", ["0", "-1", "nan", "inf"])
def test_max_shard_size_must_be_a_positive_number(tmp_path, size, capsys):
  assert cli.main(["convert", "orbax-to-hf", str(tmp_path / "ck"), str(tmp_path / "out"), "--max-shard-gb", size]) == 2
  assert "--max-shard-gb must be in (0, 1024)" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_a_converted_checkpoint_with_truncated_files_is_named(tmp_path):
  hf_convert.hf_to_orbax(hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf"), tmp_path / "ck")
  for data_file in (p for p in (tmp_path / "ck" / "params").rglob("*") if p.is_file() and p.parent.name == "d"):
    data_file.write_bytes(data_file.read_bytes()[:data_file.stat().st_size // 2])
  with pytest.raises(CheckpointError, match=r"ck/params.* unreadable.*convert or export the checkpoint again"):
    restore.load_model(tmp_path / "ck")


def test_export_of_damaged_checkpoint_leaves_nothing(tmp_path):
  src = hf_files.save_hf(hf_reference.hf_llama(), tmp_path / "hf")
  hf_convert.hf_to_orbax(src, tmp_path / "ck")
  manifest = json.loads((tmp_path / "ck" / params_store.MANIFEST).read_text())
  manifest["model"]["num_layers"] = 3
  (tmp_path / "ck" / params_store.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(CheckpointError, match="missing parameter layers_2/attention_norm/scale"):
    hf_convert.orbax_to_hf(tmp_path / "ck", tmp_path / "out")
  hf_files.assert_no_output(tmp_path / "out")


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
  hf_files.assert_no_output(tmp_path / "hf")
  data.write_bytes(bytes(raw[:len(raw) // 2]) + bytes([raw[len(raw) // 2] ^ 1]) + bytes(raw[len(raw) // 2 + 1:]))
  manifest = json.loads((ck / params_store.MANIFEST).read_text())
  del manifest["crc32"]["lm_head/kernel"]  # a map that lost an entry must not skip that tensor's check
  (ck / params_store.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(CheckpointError, match=r"heal_checkpoint.json: no CRC-32 for tensor lm_head/kernel"):
    restore.load_model(ck)
  with pytest.raises(CheckpointError, match=r"heal_checkpoint.json: no CRC-32 for tensor lm_head/kernel"):
    placement.load(str(ck), "fsdp=2,tensor=4")
