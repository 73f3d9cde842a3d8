"""LLaMA2-70B with Meta's published shapes (HF meta-llama/Llama-2-70b-hf)."""

from heal_jax import config as config_lib


def get_config():
  config = config_lib.llama2_config("70b")
  config.plan.devices = 64   # 8 hosts x 8: fp32 parameters + AdamW state are ~770 GiB
  config.train.global_batch = 256
  return config
