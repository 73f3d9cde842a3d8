"""The embedded default, end to end on CPU in about a minute (until the trainer lands).

synthetic three-tier corpus -> sentencepiece tokenizer -> tiny LLaMA (configs/tiny.py, random
init) -> export to HF -> load it in transformers when torch is installed -> import it back ->
check that our logits equal transformers' and that the re-imported weights are bitwise equal.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from heal_jax import config as config_lib
from heal_jax.checkpoint import hf_convert, params_store, random_init
from heal_jax.data import synthetic, tokenizer, templates
from heal_jax.model import llama


def run_demo(config_path: str, workdir: pathlib.Path, overrides: list[str]) -> dict[str, Any]:
  """Runs the demo in `workdir` (reused: steps whose output exists are redone into fresh dirs)."""
  log = lambda msg: print(f"[demo] {msg}", file=sys.stderr)
  workdir = pathlib.Path(workdir)
  config = config_lib.load_config(config_path, overrides)
  corpus = synthetic.generate_corpus(workdir / "corpus", seed=config.seed)
  log(f"corpus: {', '.join(f'{k}={v.stat().st_size // 1024} KiB' for k, v in corpus.items())}")
  tok = tokenizer.train_tokenizer([corpus["general"], corpus["medical"]], workdir / "tokenizer",
                                  vocab_size=config.model.vocab_size)
  cfg = config_lib.model_config(config).replace(vocab_size=tok.vocab_size)
  log(f"tokenizer: {tok.vocab_size} pieces; model: {cfg.num_params():,} parameters")
  init = random_init.write_random_checkpoint(cfg, workdir / "init", seed=config.seed,
                                             tokenizer_dir=workdir / "tokenizer", overwrite=True)
  exported = hf_convert.orbax_to_hf(workdir / "init", workdir / "hf", overwrite=True)
  imported = hf_convert.hf_to_orbax(workdir / "hf", workdir / "reimported", overwrite=True)
  log(f"exported to {workdir / 'hf'} ({exported['shards']} file(s)) and imported back")
  conversation = json.loads(corpus["clinical"].read_text().splitlines()[0])["conversation"]
  tokens = np.array([tok.encode(templates.note_prompt(conversation))[:256]])
  params = params_store.load_params(workdir / "reimported", cfg)
  ours = np.asarray(llama.Llama(cfg).apply({"params": params}, jnp.asarray(tokens)))
  original = params_store.load_params(workdir / "init", cfg)
  before, after = _leaves(original), _leaves(params)
  bitwise = before.keys() == after.keys() and all(
      before[k].dtype == after[k].dtype and before[k].shape == after[k].shape and
      before[k].tobytes() == after[k].tobytes() for k in before)
  result = {"params": init["params"], "vocab_size": tok.vocab_size, "prompt_tokens": int(tokens.shape[1]),
            "round_trip_bitwise": bitwise, "hf_dir": str(workdir / "hf"), "tensors": imported["tensors"]}
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel
  except ImportError:
    log("torch not installed: skipping the transformers comparison")
  else:
    model = AutoModelForCausalLM.from_pretrained(workdir / "hf").eval()
    with torch.no_grad():
      ref = model(torch.as_tensor(tokens)).logits.float().numpy()
    result["max_abs_logit_diff_vs_transformers"] = float(np.abs(ours - ref).max())
  return result


def _leaves(tree: Any) -> dict[str, np.ndarray]:
  """{path: array} of every leaf of a parameter tree."""
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
