"""Loading a model for inference from any checkpoint a user points at (eval, generation, export).

`DIR` is either a converted checkpoint (`heal_checkpoint.json` + `params/` + `tokenizer/`, see
`params_store`) or a training work directory (`checkpoints/` written by the trainer), whose newest
completed step is used. Eval and generation go through `load_model` and never import the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from heal_jax.checkpoint import params_store
from heal_jax.checkpoint.errors import CheckpointError
from heal_jax.model.config import ModelConfig

WORKDIR_CHECKPOINTS = "checkpoints"
WORKDIR_TOKENIZER = "tokenizer"


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """Model config, parameters (numpy, unscanned unless `cfg.scan_layers`) and tokenizer location.

  add_bos: whether the tokenizer's config asks for BOS (LLaMA's does); evaluation follows it.
  """
  cfg: ModelConfig
  params: dict[str, Any]
  tokenizer_dir: pathlib.Path | None
  add_bos: bool
  source: str


def _add_bos(tokenizer_dir: pathlib.Path | None) -> bool:
  if tokenizer_dir is None or not (tokenizer_dir / "tokenizer_config.json").is_file():
    return True
  return bool(json.loads((tokenizer_dir / "tokenizer_config.json").read_text()).get("add_bos_token", True))


def is_workdir(path: pathlib.Path) -> bool:
  return (pathlib.Path(path) / WORKDIR_CHECKPOINTS).is_dir()


def load_model(path: str | pathlib.Path, dtype: Any = None, **cfg_overrides: Any) -> LoadedModel:
  """Loads a converted checkpoint or a work directory's newest checkpoint.

  Args:
    path: checkpoint or work directory.
    dtype: cast parameters (e.g. "float32"); None keeps the stored dtype.
    cfg_overrides: ModelConfig fields to change for inference (e.g. attention_impl, compute_dtype,
      scan_layers=False); shapes cannot change.
  Raises CheckpointError naming the directory when neither layout is found or the data is damaged.
  """
  path = pathlib.Path(path)
  if (path / params_store.MANIFEST).is_file():
    cfg = params_store.model_config(path).replace(**cfg_overrides)
    params = params_store.load_params(path, cfg, dtype)
    tok = path / "tokenizer"
    tok = tok if (tok / "tokenizer.model").is_file() else None
    return LoadedModel(cfg, params, tok, _add_bos(tok), str(path))
  if is_workdir(path):
    from heal_jax.checkpoint import workdir_restore  # pylint: disable=import-outside-toplevel
    cfg, params, step = workdir_restore.newest_params(path, dtype, **cfg_overrides)
    tok = path / WORKDIR_TOKENIZER
    tok = tok if (tok / "tokenizer.model").is_file() else None
    return LoadedModel(cfg, params, tok, _add_bos(tok), f"{path} step {step}")
  raise CheckpointError(f"{path}: neither a converted checkpoint ({params_store.MANIFEST}) nor a "
                        f"training work directory ({WORKDIR_CHECKPOINTS}/)")
