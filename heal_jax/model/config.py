"""LLaMA2 model hyper-parameters and their mapping to and from HF `config.json`."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

ATTENTION_IMPLS = ("xla", "pallas", "cudnn", "splash", "auto")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attention_out")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """A config key that is unknown, of the wrong type, inconsistent or unsupported; the message names it."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a LLaMA2-family decoder.

  `num_kv_heads` must divide `num_heads` (1 = MQA, num_heads = MHA).
  `rope_scaling_factor` > 1 applies HF's "linear" position interpolation:
  positions are divided by the factor before the rotary angles are taken.
  `param_dtype` is the storage dtype of parameters; `compute_dtype` the dtype
  of activations and matmul inputs (norms, softmax and logits stay float32).
  """

  vocab_size: int                   # rows of the embedding and lm_head (>= the tokenizer's pieces)
  hidden_size: int                  # the residual stream's width
  intermediate_size: int            # the SwiGLU MLP's inner width
  num_layers: int
  num_heads: int                    # query heads
  num_kv_heads: int                 # key/value heads (GQA groups)
  head_dim: int | None = None       # None: hidden_size // num_heads
  max_position_embeddings: int = 4096  # the context the weights were trained for (HF's field of that name)
  rms_norm_eps: float = 1e-5        # RMSNorm's epsilon
  rope_theta: float = 10000.0       # RoPE base frequency
  rope_scaling_factor: float = 1.0  # linear position interpolation (see above); in training, set per phase
  tie_word_embeddings: bool = False  # lm_head shares the embedding matrix
  param_dtype: str = "float32"      # one of DTYPES
  compute_dtype: str = "float32"    # one of DTYPES
  remat_policy: str = "none"        # REMAT_POLICIES: what the backward pass recomputes (heal_jax/model/llama.py)
  scan_layers: bool = False         # layers as one jax.lax.scan over stacked weights (one compiled layer)
  attention_impl: str = "xla"       # ATTENTION_IMPLS ("auto": pallas on GPU, splash on TPU, else xla)

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                 "num_heads", "num_kv_heads", "max_position_embeddings"):
      if int(getattr(self, name)) <= 0:
        raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(
          f"model.num_kv_heads={self.num_kv_heads} must divide model.num_heads={self.num_heads}")
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ConfigError(
            f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads};"
            " set model.head_dim")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.head_dim <= 0:
      raise ConfigError(f"model.head_dim must be positive, got {self.head_dim}")
    for name in ("rms_norm_eps", "rope_theta"):  # eps 0 divides a zero row by zero; theta <= 0 has no rotary
      if not float(getattr(self, name)) > 0:
        raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.head_dim % 2:
      raise ConfigError(f"model.head_dim={self.head_dim} must be even for rotary embeddings")
    if self.rope_scaling_factor < 1.0:
      raise ConfigError(f"model.rope_scaling_factor must be >= 1, got {self.rope_scaling_factor}")
    for name, allowed in (("param_dtype", DTYPES), ("compute_dtype", DTYPES),
                          ("remat_policy", REMAT_POLICIES), ("attention_impl", ATTENTION_IMPLS)):
      if getattr(self, name) not in allowed:
        raise ConfigError(f"model.{name}={getattr(self, name)!r} is not one of {allowed}")

  @property
  def num_groups(self) -> int:
    """Query heads per key/value head."""
    return self.num_heads // self.num_kv_heads

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    """Builds a config from a mapping; an unknown key is an error naming it."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ConfigError(f"unknown model config key(s): {', '.join('model.' + k for k in unknown)}")
    return cls(**dict(d))

  def num_params(self, include_embedding: bool = True) -> int:
    """Parameter count (embedding and untied head counted when asked)."""
    d, f, h, kv, hd = (self.hidden_size, self.intermediate_size, self.num_heads,
                       self.num_kv_heads, self.head_dim)
    per_layer = d * hd * (h + 2 * kv) + h * hd * d + 3 * d * f + 2 * d
    n = self.num_layers * per_layer + d
    if include_embedding:
      n += self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
    return n


# --- HF config.json <-> ModelConfig -------------------------------------------------------------

_HF_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _hf_rope(hf: Mapping[str, Any]) -> tuple[float, float]:
  """Reads (rope_theta, linear factor) from either transformers 4 or 5 style config.json."""
  params = hf.get("rope_parameters")
  scaling = hf.get("rope_scaling")
  theta = hf.get("rope_theta")
  rope_type, factor = "default", 1.0
  for src_name, src in (("rope_parameters", params), ("rope_scaling", scaling)):
    if not src:
      continue
    if not isinstance(src, Mapping):
      raise ConfigError(f"config.json field {src_name} must be an object, got {src!r}")
    theta = src.get("rope_theta", theta)
    rope_type = src.get("rope_type", src.get("type", rope_type))
    if rope_type not in ("default", "linear"):
      raise ConfigError(
          f"config.json field {src_name}.rope_type={rope_type!r} is not supported"
          " (supported: 'default', 'linear')")
    if rope_type == "linear":
      if "factor" not in src:
        raise ConfigError(f"config.json field {src_name}.factor is required for linear rope scaling")
      factor = _number(src, "factor", float, where=f"{src_name}.")
  return _number({"rope_theta": 10000.0 if theta is None else theta}, "rope_theta", float), factor


def _number(hf: Mapping[str, Any], key: str, cast: type, default: Any = None, where: str = "") -> Any:
  """hf[key] (or `default`) as `cast`; ConfigError naming the field when it is not a number."""
  value = hf.get(key, default)
  try:
    if isinstance(value, bool) or (cast is int and isinstance(value, float) and not value.is_integer()):
      raise TypeError
    return cast(value)
  except (TypeError, ValueError):
    raise ConfigError(f"config.json field {where}{key}={value!r} is not a valid {cast.__name__}") from None


def from_hf_config(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
  """Reads a transformers `LlamaConfig` dict (config.json) into a ModelConfig.

  Raises ConfigError naming the field for a non-LLaMA model, an unsupported rope type,
  or features this model does not implement (attention/MLP biases).
  """
  if not isinstance(hf, Mapping):
    raise ConfigError(f"config.json holds a JSON {type(hf).__name__}, expected an object")
  model_type = hf.get("model_type", "llama")
  if model_type != "llama":
    raise ConfigError(f"config.json field model_type={model_type!r}: only 'llama' is supported")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ConfigError(f"config.json field {flag}=true is not supported")
  if hf.get("hidden_act", "silu") != "silu":
    raise ConfigError(f"config.json field hidden_act={hf.get('hidden_act')!r}: only 'silu' is supported")
  required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
  for key in required:
    if key not in hf:
      raise ConfigError(f"config.json is missing field {key}")
  theta, factor = _hf_rope(hf)
  dtype = hf.get("dtype", hf.get("torch_dtype")) or "float32"
  kwargs = dict(
      vocab_size=_number(hf, "vocab_size", int),
      hidden_size=_number(hf, "hidden_size", int),
      intermediate_size=_number(hf, "intermediate_size", int),
      num_layers=_number(hf, "num_hidden_layers", int),
      num_heads=_number(hf, "num_attention_heads", int),
      num_kv_heads=_number(hf, "num_key_value_heads" if hf.get("num_key_value_heads") else "num_attention_heads",
                           int),
      head_dim=_number(hf, "head_dim", int) if hf.get("head_dim") else None,
      # transformers' LlamaConfig defaults, so a config.json without these loads as it does there.
      max_position_embeddings=_number(hf, "max_position_embeddings", int, 2048),
      rms_norm_eps=_number(hf, "rms_norm_eps", float, 1e-6),
      rope_theta=theta,
      rope_scaling_factor=factor,
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      param_dtype=_HF_DTYPE.get(str(dtype), "float32"),
  )
  kwargs.update(overrides)
  return ModelConfig(**kwargs)


def to_hf_config(cfg: ModelConfig, base: Mapping[str, Any] | None = None,
                 dtype: str | None = None) -> dict[str, Any]:
  """Writes a transformers 5 `LlamaConfig` dict; keys of `base` not owned by the model are kept."""
  hf = dict(base or {})
  for legacy in ("rope_scaling", "rope_theta", "torch_dtype"):
    hf.pop(legacy, None)
  rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
  if cfg.rope_scaling_factor != 1.0:
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "linear", "factor": cfg.rope_scaling_factor}
  hf.update(
      architectures=["LlamaForCausalLM"],
      model_type="llama",
      vocab_size=cfg.vocab_size,
      hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size,
      num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim,
      max_position_embeddings=cfg.max_position_embeddings,
      rms_norm_eps=cfg.rms_norm_eps,
      rope_parameters=rope,
      tie_word_embeddings=cfg.tie_word_embeddings,
      hidden_act="silu",
      attention_bias=False,
      mlp_bias=False,
      dtype=dtype or cfg.param_dtype,
  )
  return hf
