"""Randomly initialised checkpoints (a model to start from scratch, tests and benchmarks)."""

from __future__ import annotations

import pathlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from heal_jax.checkpoint import hf_mapping, params_store
from heal_jax.model import llama
from heal_jax.model.config import ModelConfig, to_hf_config


def random_params(cfg: ModelConfig, seed: int = 0) -> dict[str, Any]:
  """Unscanned parameter tree of numpy arrays in `cfg.param_dtype`."""
  params = nn.unbox(llama.init_params(cfg.replace(scan_layers=False), jax.random.PRNGKey(seed)))
  return jax.tree.map(np.asarray, params)


def write_random_checkpoint(cfg: ModelConfig, out: pathlib.Path, seed: int = 0,
                            tokenizer_dir: pathlib.Path | None = None, overwrite: bool = False) -> dict[str, Any]:
  """A heal-jax checkpoint directory (see params_store) holding freshly initialised weights, and the
  tokenizer files of `tokenizer_dir` (ValueError, before anything is written, if it has no
  tokenizer.model or more pieces than cfg.vocab_size)."""
  if tokenizer_dir is not None:
    if not (pathlib.Path(tokenizer_dir) / "tokenizer.model").is_file():
      raise ValueError(f"tokenizer directory {tokenizer_dir}: no tokenizer.model there (give the directory holding it)")
    from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
    restore.check_tokenizer_fits(tokenizer_dir, cfg.vocab_size)
  params = random_params(cfg, seed)
  with params_store.atomic_output_dir(out, overwrite) as staging:
    params_store.write_checkpoint(staging, params, cfg, to_hf_config(cfg), cfg.param_dtype, tokenizer_dir,
                                  {"source": f"random init, seed {seed}"})
  n = sum(x.size for _, x in hf_mapping.iter_paths(params))
  return {"params": int(n), "dtype": cfg.param_dtype, "out": str(out)}
