"""LLaMA2-13B with Meta's published shapes (HF meta-llama/Llama-2-13b-hf)."""

from heal_jax import config as config_lib


def get_config():
  return config_lib.llama2_config("13b")
