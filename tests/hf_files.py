"""HF checkpoint directories for tests: written from a torch model, read back, edited."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch

from heal_jax.checkpoint import hf_convert, params_store, safetensors_io


def save_hf(model, path: pathlib.Path, tokenizer_dir=None, dtype=torch.float32, shard="40KB"):
  model.to(dtype).save_pretrained(path, max_shard_size=shard)
  if tokenizer_dir is not None:
    params_store.copy_tokenizer(tokenizer_dir, path)
  return path


def tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  ckpt = hf_convert.open_hf(path)
  return {name: t.load() for name, t in ckpt.tensors.items()}


def assert_no_output(dst: pathlib.Path):
  assert not dst.exists()
  assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.partial")]


def rewrite_single_file(path: pathlib.Path, edit) -> None:
  """Loads all tensors of an HF dir, applies edit(dict), writes one model.safetensors."""
  arrays = tensors(path)
  for f in list(path.glob("*.safetensors")) + list(path.glob("*.index.json")):
    f.unlink()
  edit(arrays)
  plan = [safetensors_io.PlannedTensor(n, a.dtype, a.shape) for n, a in arrays.items()]
  writer = safetensors_io.StreamingWriter(path / "model.safetensors", plan)
  for n, a in arrays.items():
    writer.write(n, a)
  writer.close()


def edit_config(path: pathlib.Path, **changes):
  config = json.loads((path / "config.json").read_text())
  config.update(changes)
  (path / "config.json").write_text(json.dumps(config))
