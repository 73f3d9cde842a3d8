"""Mixture ablation (issue 8): what the five arms share, and the base run they all start from.

Study design (see bench/ablation.py, which prepares the data these paths point at and runs everything):
- Model: the tiny LLaMA of configs/tiny.py (4 layers, hidden 128, GQA 4:2, vocab 1024) with a 512-position
  context, trained at 512 tokens per row, (RoPE has no position parameters, so this adds none) to leave room for note generation.
- Training tiers (one source each, files written by bench/ablation.py under ROOT/data):
    general  = the bundled synthetic general prose;
    medical  = synthetic trial abstracts + the abstracts (CONTEXTS) of the 500 PubMedQA PQA-L questions
               that are not in the 500-question test split;
    clinical = synthetic conversations + ACI-Bench train (67) + MTS-Dialog train (1201), each a
               conversation with its note (trained as the note-writing instruction, loss on every token).
- Base: trained from scratch on equal thirds (`base_config`) in ROOT/base; bench/ablation.py writes its
  newest checkpoint as a converted checkpoint, ROOT/base_checkpoint, which every arm's `init_from` names
  (a work directory would do too, but heal_jax.train.init takes any directory holding a config.json
  for an HF checkpoint, and a work directory holds its run config.json). Every arm trains one phase, `ablate`, with the same steps, seq_len, batch and schedule, so every
  arm sees the same number of tokens. The arms differ only in `phases.ablate.weights` (ARMS).
`get_config(arg)` of each preset takes ROOT (default DEFAULT_ROOT): ROOT/data holds the corpus and
tokenizer, ROOT/base the base run, ROOT/base_checkpoint its exported weights.
"""

from __future__ import annotations

from heal_jax import config as config_lib

DEFAULT_ROOT = "runs/ablation"
TIERS = ("general", "medical", "clinical")
ARMS = {  # arm -> mixture weights of its `ablate` phase (a tier left out is not read)
    "general_only": "general=1",
    "medical_only": "medical=1",
    "clinical_only": "clinical=1",
    "heal_equal": "general=1,medical=1,clinical=1",
    "no_general": "medical=1,clinical=1",
}
SEQ_LEN = 512
BASE_STEPS = 250
ARM_STEPS = 100


def tier_paths(root: str) -> dict[str, str]:
  """Comma-separated files of each training tier (written by bench/ablation.py's `prepare_data`)."""
  data = f"{root}/data"
  return {
      "general": f"{data}/corpus/general.jsonl",
      "medical": f"{data}/corpus/medical.jsonl,{data}/real/pubmedqa_train.jsonl",
      "clinical": f"{data}/corpus/clinical.jsonl,{data}/real/aci_train.jsonl,{data}/real/mts_train.jsonl",
  }


def shared_config(root: str | None = None):
  """Model, data and trainer settings common to the base run and every arm."""
  root = root or DEFAULT_ROOT
  config = config_lib.base_config()
  config.model.update(dict(
      vocab_size=1024, hidden_size=128, intermediate_size=352, num_layers=4, num_heads=4,
      num_kv_heads=2, max_position_embeddings=512, param_dtype="float32", compute_dtype="float32",
      attention_impl="xla"))
  config.data.tokenizer = f"{root}/data/tokenizer"
  kinds = {"general": "document", "medical": "document", "clinical": "conversation"}
  for tier, paths in tier_paths(root).items():
    config.data.sources[tier] = config_lib.source_config(paths, kinds[tier], 1.0, format="jsonl")
  config.train.global_batch = 8
  config.checkpoint.every_steps = 100
  config.checkpoint.keep = 1
  config.checkpoint.async_save = False
  config.metrics.every_steps = 20
  config.eval.every_steps = 50
  config.eval.holdout_examples = 16
  config.eval.batches = 2
  return config


def base_config(root: str | None = None):
  """The shared starting point: from scratch on equal thirds of the three tiers."""
  config = shared_config(root)
  config.phase_order = "base"
  config.phases.base = config_lib.phase_config(
      steps=BASE_STEPS, seq_len=SEQ_LEN, weights="general=1,medical=1,clinical=1", peak_lr=3e-3,
      warmup_steps=30)
  return config


def arm_config(arm: str, root: str | None = None):
  """One ablation arm: the base run's newest checkpoint, then `ablate` on the arm's mixture."""
  root = root or DEFAULT_ROOT
  config = shared_config(root)
  config.init_from = f"{root}/base_checkpoint"
  config.phase_order = "ablate"
  config.phases.ablate = config_lib.phase_config(
      steps=ARM_STEPS, seq_len=SEQ_LEN, weights=ARMS[arm], peak_lr=1e-3, warmup_steps=20)
  return config
