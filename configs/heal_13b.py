"""HEAL (arXiv 2403.09057): LLaMA2-13B continued pretraining on 32 x A100 80GB (4 hosts x 8), FSDP.

About 14.89B tokens over three tiers in equal proportions (general web text, public medical text,
clinical data), then medical instructions with explanations:
  pretrain  4K context, 23,000 steps x 128 rows x 4,096 = 12.06B tokens, equal thirds
  extend    8K context (linear position interpolation x2), 3,500 steps x 64 x 8,192 = 1.84B tokens
  instruct  8K context, 1,900 steps x 64 x 8,192 = 1.0B tokens, loss on responses only
  total     14.89B tokens
Point the paths at your data (`heal-jax data check` each file first) and init_from at the HF
download of meta-llama/Llama-2-13b-hf; `heal-jax plan --config configs/heal_13b.py` checks the fit.
"""

from heal_jax import config as config_lib


def get_config():
  config = config_lib.llama2_config("13b", corpus_source=False)
  config.init_from = "/shared/models/Llama-2-13b-hf"
  config.data.tokenizer = "/shared/models/Llama-2-13b-hf"
  config.data.prepared_dir = "/shared/heal/prepared"
  src = config_lib.source_config
  config.data.sources.c4 = src("c4/en:train@/shared/tensorflow_datasets", "document", 1.0, format="tfds")
  config.data.sources.pubmed = src("/shared/heal/raw/pubmed/*.jsonl.zst", "document", 0.5)
  config.data.sources.meddialog = src("/shared/heal/raw/meddialog/*.jsonl", "document", 0.3)
  config.data.sources.nih = src("/shared/heal/raw/nih_gov/*.jsonl", "document", 0.2)
  config.data.sources.clinical_notes = src("/shared/heal/raw/ehr_notes/*.jsonl", "document", 0.5)
  config.data.sources.conversations = src("/shared/heal/raw/conversations/*.csv", "conversation", 0.5,
                                          fields="conversation=dialogue,note=note")
  config.data.sources.instructions = src("/shared/heal/raw/instructions/*.jsonl", "instruction", 1.0)
  thirds = "c4,pubmed,meddialog,nih,clinical_notes,conversations"  # at the weights above: a third per tier
  config.data.num_shards = 4            # one per host
  config.mesh.update(dict(data=1, fsdp=-1, tensor=1))
  config.train.update(dict(global_batch=128, micro_steps=2, z_loss=1e-4))
  config.phase_order = "pretrain,extend,instruct"
  config.phases.pretrain = config_lib.phase_config(
      steps=23000, seq_len=4096, weights=thirds, peak_lr=3e-5, warmup_steps=500, schedule="cosine")
  config.phases.extend = config_lib.phase_config(
      steps=3500, seq_len=8192, weights=thirds, rope_scaling_factor=2.0, peak_lr=2e-5, warmup_steps=100,
      global_batch=64)
  config.phases.instruct = config_lib.phase_config(
      steps=1900, seq_len=8192, weights="instructions=3,conversations=1", rope_scaling_factor=2.0,
      instruction_tuning=True, peak_lr=1e-5, warmup_steps=100, schedule="linear", end_lr_ratio=0.0,
      global_batch=64)
  config.checkpoint.update(dict(every_steps=500, keep=3, keep_period=5000))
  config.metrics.update(dict(every_steps=10, peak_tflops=312.0))
  config.eval.update(dict(every_steps=1000, holdout_examples=512, batches=4))
  config.plan.update(dict(devices=32, device_memory_gb=80.0, peak_tflops=312.0, mfu=0.45))
  return config
