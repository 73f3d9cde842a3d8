"""The embedded default: the HEAL recipe in miniature on the bundled synthetic corpus, CPU, minutes.

A ~1M-parameter LLaMA (4 layers, GQA 4:2) on a synthetic three-tier corpus (general prose, trial
abstracts, doctor-patient conversations with their SOAP notes) plus medical instructions with
explanations: pretraining on equal thirds at 256 tokens, context extension to 2048 with linear
position interpolation (factor 8), then instruction tuning (loss on responses only) at 2048, long
enough for every synthetic conversation with its note (1,077-1,948 tokens; at 1024, before
2026-11-27, none fitted and notes were trained apart from their conversations).
"""

from heal_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.update(dict(
      vocab_size=1024, hidden_size=128, intermediate_size=352, num_layers=4, num_heads=4,
      num_kv_heads=2, max_position_embeddings=256, param_dtype="float32", compute_dtype="float32",
      attention_impl="xla"))
  config.data.bootstrap = "synthetic"
  config.data.tokenizer = "{workdir}/tokenizer"
  for tier, kind in (("general", "document"), ("medical", "document"), ("clinical", "conversation"),
                     ("instructions", "instruction")):
    config.data.sources[tier] = config_lib.source_config(f"{{workdir}}/corpus/{tier}.jsonl", kind, 1.0)
  config.train.global_batch = 8
  config.phase_order = "pretrain,extend,instruct"
  config.phases.pretrain = config_lib.phase_config(
      steps=150, seq_len=256, weights="general,medical,clinical", peak_lr=3e-3, warmup_steps=30)
  # 256 -> 2048 positions (x8 linear interpolation): every synthetic conversation with its note
  # (1,077-1,948 tokens) fits in a row, so no note is trained apart from its conversation.
  config.phases.extend = config_lib.phase_config(
      steps=20, seq_len=2048, global_batch=2, weights="general,medical,clinical",
      rope_scaling_factor=8.0, peak_lr=1e-3, warmup_steps=5)
  # Weights are token shares: two thirds of this phase's tokens are conversation -> note examples.
  # 2 rows a step (on at most 2 devices; more need --config.phases.{extend,instruct}.global_batch): 4 rows
  # for 40 steps, the same tokens, ended at held-out clinical loss 1.39 and a degenerate note (1.06 here).
  config.phases.instruct = config_lib.phase_config(
      steps=80, seq_len=2048, global_batch=2, weights="instructions=1,clinical=2", rope_scaling_factor=8.0,
      instruction_tuning=True, peak_lr=3e-3, warmup_steps=10)
  config.checkpoint.every_steps = 50
  config.metrics.every_steps = 20
  config.eval.holdout_examples = 16
  config.eval.batches = 2
  config.eval.sample_note_tokens = 300
  config.plan.devices = 1  # as the first README command runs: one CPU device
  return config
