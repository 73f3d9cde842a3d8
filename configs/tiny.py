"""The embedded default: a ~1M-parameter LLaMA that trains on the bundled synthetic corpus on CPU."""

from heal_jax import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.base_config()
  config.model.update(dict(
      vocab_size=1024, hidden_size=128, intermediate_size=352, num_layers=4, num_heads=4,
      num_kv_heads=2, max_position_embeddings=1024, param_dtype="float32", compute_dtype="float32",
      attention_impl="xla"))
  return config
