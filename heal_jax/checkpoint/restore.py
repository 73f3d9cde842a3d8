"""Loading a model for inference from any checkpoint a user points at (eval, generation, export).

`DIR` is either a converted checkpoint (`heal_checkpoint.json` + `params/` + `tokenizer/`, see
`params_store`) or a training work directory (`checkpoints/` written by the trainer), whose newest
completed step is used. Eval and generation go through `load_model` and never import the trainer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any, Callable

from heal_jax.checkpoint import params_store
from heal_jax.checkpoint.errors import CheckpointError
from heal_jax.model.config import ModelConfig

WORKDIR_CHECKPOINTS = "checkpoints"
WORKDIR_TOKENIZER = "tokenizer"


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """Model config, parameters (numpy as loaded, or jax arrays read onto devices by `infer.placement`;
  unscanned unless `cfg.scan_layers`) and tokenizer location.

  add_bos: whether the tokenizer's config asks for BOS (LLaMA's does); evaluation follows it.
  weights_digest: a SHA-256 of the checksums stored with the weights (a converted checkpoint's CRC-32s,
    a training step's fingerprints), which the read was checked against: the weights' identity
    without hashing them again. None where none are stored, and for `params` changed after loading.
  """
  cfg: ModelConfig
  params: dict[str, Any]
  tokenizer_dir: pathlib.Path | None
  add_bos: bool
  source: str
  weights_digest: str | None = None


def _add_bos(tokenizer_dir: pathlib.Path | None) -> bool:
  path = None if tokenizer_dir is None else tokenizer_dir / "tokenizer_config.json"
  if path is None or not path.is_file():
    return True
  try:
    config = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot be read as JSON: {e}") from None
  if not isinstance(config, dict):
    raise CheckpointError(f"{path}: not a JSON object")
  return bool(config.get("add_bos_token", True))


def _tokenizer_dir(path: pathlib.Path, cfg: ModelConfig) -> pathlib.Path | None:
  """path/tokenizer when it holds tokenizer.model, checked to fit the model's embedding table.

  A tokenizer with more pieces than cfg.vocab_size would feed ids past the table (JAX clamps them:
  silently wrong scores and notes), so it is refused. Fewer pieces are allowed (vocabularies padded
  for speed, or with added tokens): generation then never produces the ids beyond the tokenizer's.
  """
  tok = path / WORKDIR_TOKENIZER
  if not (tok / "tokenizer.model").is_file():
    return None
  check_tokenizer_fits(tok, cfg.vocab_size)
  return tok


def check_tokenizer_fits(tokenizer_dir: pathlib.Path, vocab_size: int) -> None:
  """CheckpointError unless tokenizer_dir/tokenizer.model loads and has at most `vocab_size` pieces."""
  from heal_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  model = pathlib.Path(tokenizer_dir) / "tokenizer.model"
  try:
    pieces = Tokenizer(tokenizer_dir).vocab_size
  except (OSError, RuntimeError) as e:  # sentencepiece raises RuntimeError/OSError on a damaged model file
    raise CheckpointError(f"{model}: cannot be loaded: {e}") from None
  if pieces > vocab_size:
    raise CheckpointError(f"{model} has {pieces} pieces but the model's vocabulary is {vocab_size}: ids past "
                          "the embedding table; is this the model's tokenizer?")


def workdir_and_step(path: pathlib.Path) -> tuple[pathlib.Path, int | None] | None:
  """(work directory, None for its newest step) for WORKDIR, (work directory, N) for one of its step
  directories WORKDIR/checkpoints/N; None for anything else."""
  path = pathlib.Path(path)
  if (path / WORKDIR_CHECKPOINTS).is_dir():
    return path, None
  if path.parent.name == WORKDIR_CHECKPOINTS and path.name.isdigit() and path.parent.is_dir():
    return path.parent.parent, int(path.name)
  return None


def is_workdir(path: pathlib.Path) -> bool:
  """A training work directory or one of its step directories."""
  return workdir_and_step(path) is not None


def load_model(path: str | pathlib.Path, dtype: Any = None,
               shardings_for: Callable[[ModelConfig], Any] | None = None, **cfg_overrides: Any) -> LoadedModel:
  """Loads a converted checkpoint, a work directory's newest checkpoint or one of its steps.

  Args:
    path: checkpoint, work directory, or a step of it (WORKDIR/checkpoints/N).
    dtype: cast parameters (e.g. "float32"); None keeps the stored dtype.
    shardings_for: None: numpy parameters, the whole model in host memory. Else a function of the
      model config giving the parameters' shardings (`infer.placement`): each tensor is read straight
      onto its devices, checked as above, and the host never holds the whole model. A converted
      checkpoint is then read per layer (scan_layers=False), a work directory in its stored layout.
    cfg_overrides: ModelConfig fields to change for inference (e.g. attention_impl, compute_dtype,
      scan_layers=False); shapes cannot change.
  Raises CheckpointError naming the directory when neither layout is found or the data is damaged.
  """
  path = pathlib.Path(path)
  if (path / params_store.MANIFEST).is_file():
    cfg = params_store.model_config(path).replace(**cfg_overrides)
    tok = _tokenizer_dir(path, cfg)  # before the weights: a mismatch is reported at once
    if shardings_for is None:
      params = params_store.load_params(path, cfg, dtype)
    else:
      cfg = cfg.replace(scan_layers=False)
      params = params_store.params_placed(path, cfg, shardings_for(cfg), dtype)
    crc = params_store.read_manifest(path).get("crc32")
    digest = hashlib.sha256(json.dumps(crc, sort_keys=True).encode()).hexdigest() if crc else None
    return LoadedModel(cfg, params, tok, _add_bos(tok), str(path), digest)
  found = workdir_and_step(path)
  if found is not None:
    from heal_jax.checkpoint import workdir_restore  # pylint: disable=import-outside-toplevel
    workdir, step = found
    cfg, params, step, digest = workdir_restore.newest_params(workdir, dtype, step=step, shardings_for=shardings_for,
                                                              **cfg_overrides)
    tok = _tokenizer_dir(workdir, cfg)
    return LoadedModel(cfg, params, tok, _add_bos(tok), f"{workdir} step {step}", digest)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or directory")
  hint = ""
  if (path / "config.json").is_file():  # a Hugging Face model folder
    hint = f"; it looks like a Hugging Face checkpoint: convert it first (heal-jax convert hf-to-orbax {path} DIR)"
  raise CheckpointError(f"{path}: neither a converted checkpoint ({params_store.MANIFEST}), a training work "
                        f"directory ({WORKDIR_CHECKPOINTS}/) nor one of its steps ({WORKDIR_CHECKPOINTS}/N){hint}")
