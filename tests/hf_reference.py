"""Builders shared by tests: random HF torch LLaMA models and their weights as our params."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from heal_jax.checkpoint import hf_mapping
from heal_jax.model.config import ModelConfig, from_hf_config


def hf_llama(seed: int = 0, **overrides: Any) -> LlamaForCausalLM:
  """A small random fp32 `LlamaForCausalLM` in eval mode (vocab 97, 2 layers, 4 heads of 16)."""
  kwargs = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
  kwargs.update(overrides)
  torch.manual_seed(seed)
  model = LlamaForCausalLM(LlamaConfig(**kwargs)).eval()
  with torch.no_grad():  # norms start at 1.0; perturb them so a wrong mapping shows
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def our_config(model: LlamaForCausalLM, **overrides: Any) -> ModelConfig:
  return from_hf_config(model.config.to_dict(), **overrides)


def our_params(model: LlamaForCausalLM, cfg: ModelConfig) -> dict[str, Any]:
  """The torch state dict mapped into our (unscanned) parameter tree, float32 numpy."""
  state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  params: dict[str, Any] = {}
  for spec in hf_mapping.tensor_specs(cfg):
    hf_mapping.set_path(params, spec.path, spec.to_ours(state[spec.hf_name]))
  return params


def hf_logits(model: LlamaForCausalLM, tokens_BxL: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens_BxL), dtype=torch.long)).logits.float().numpy()
