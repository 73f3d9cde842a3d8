"""LLaMA forward pass against transformers' torch LlamaForCausalLM on the same weights (fp32, 1e-4)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heal_jax.checkpoint import hf_mapping
from heal_jax.model import llama
from tests import hf_reference

TOL = 1e-4

VARIANTS = {
    "mha": dict(num_key_value_heads=4),
    "gqa_kv2": dict(num_key_value_heads=2),
    "mqa_kv1": dict(num_key_value_heads=1),
    "linear_rope_x2": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "theta_500k": dict(rope_theta=500000.0),
    "tied_embeddings": dict(tie_word_embeddings=True),
    "head_dim_32": dict(head_dim=32),  # wider than hidden / heads = 16, as some LLaMA-family models are
}


def _apply(cfg, params, tokens, **kw):
  if cfg.scan_layers:
    params = hf_mapping.stack_layers(params, cfg.num_layers)
  return np.asarray(llama.Llama(cfg).apply({"params": params}, jnp.asarray(tokens), **kw))


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_hf(variant, scan):
  model = hf_reference.hf_llama(**VARIANTS[variant])
  cfg = hf_reference.our_config(model, scan_layers=scan)
  tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 40))
  ours = _apply(cfg, hf_reference.our_params(model, cfg), tokens)
  ref = hf_reference.hf_logits(model, tokens)
  assert ours.shape == ref.shape == (2, 40, 97)
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_packed_row_equals_separate_documents():
  model = hf_reference.hf_llama(num_key_value_heads=2)
  cfg = hf_reference.our_config(model)
  params = hf_reference.our_params(model, cfg)
  rng = np.random.RandomState(2)
  doc_a, doc_b = rng.randint(0, 97, 13), rng.randint(0, 97, 19)
  tokens = np.concatenate([doc_a, doc_b])[None]
  segment_ids = np.array([[1] * 13 + [2] * 19])
  positions = np.array([list(range(13)) + list(range(19))])
  packed = _apply(cfg, params, tokens, segment_ids_BxL=jnp.asarray(segment_ids),
                  positions_BxL=jnp.asarray(positions))
  np.testing.assert_allclose(packed[0, :13], hf_reference.hf_logits(model, doc_a[None])[0], atol=TOL, rtol=0)
  np.testing.assert_allclose(packed[0, 13:], hf_reference.hf_logits(model, doc_b[None])[0], atol=TOL, rtol=0)


def test_remat_and_bf16_compute_keep_logits_close():
  model = hf_reference.hf_llama()
  cfg = hf_reference.our_config(model)
  params = hf_reference.our_params(model, cfg)
  tokens = np.random.RandomState(3).randint(0, 97, (2, 24))
  ref = hf_reference.hf_logits(model, tokens)
  remat = _apply(cfg.replace(remat_policy="full", scan_layers=True), params, tokens)
  np.testing.assert_allclose(remat, ref, atol=TOL, rtol=0)
  bf16 = _apply(cfg.replace(compute_dtype="bfloat16"), params, tokens)
  assert np.abs(bf16 - ref).max() < 0.1  # bf16 activations, fp32 params: close, not exact
  assert np.abs(bf16 - ref).max() > 0  # and it really computed in bf16


def test_gradients_flow_through_remat_and_scan():
  model = hf_reference.hf_llama()
  tokens = jnp.asarray(np.random.RandomState(4).randint(0, 97, (2, 16)))
  grads = {}
  for policy in ("none", "full", "dots"):
    cfg = hf_reference.our_config(model, scan_layers=True, remat_policy=policy)
    params = hf_mapping.stack_layers(hf_reference.our_params(model, cfg), cfg.num_layers)
    loss = lambda p, cfg=cfg: llama.Llama(cfg).apply({"params": p}, tokens).mean()
    grads[policy] = jax.grad(loss)(params)
  for policy in ("full", "dots"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads["none"], grads[policy])


def test_every_parameter_has_logical_axes():
  cfg = hf_reference.our_config(hf_reference.hf_llama(), scan_layers=True)
  shapes = nn.unbox(llama.param_shapes(cfg))
  axes = llama.logical_axes(cfg)
  axes_paths, shape_paths = list(hf_mapping.iter_paths(axes)), list(hf_mapping.iter_paths(shapes))
  assert [p for p, _ in axes_paths] == [p for p, _ in shape_paths]  # the same parameters, none left out
  for (path, spec), (_, shape) in zip(axes_paths, shape_paths):
    assert len(spec) == len(shape.shape), path
    assert spec[0] == "layers" or path[0] != "layers", path
  assert tuple(axes["layers"]["attention"]["wk"]["kernel"]) == ("layers", "embed", "kv_heads", "head_dim")


@pytest.mark.parametrize("impl", ["cudnn", "pallas"])
def test_parameters_initialise_the_same_for_every_attention_impl(impl):
  """A 'cudnn' or 'pallas' config initialises on any host (here a CPU, where cuDNN does not exist and
  'cudnn' would refuse the packed rows init traces) to the same parameters as 'xla'."""
  cfg = hf_reference.our_config(hf_reference.hf_llama(), scan_layers=True)
  want = llama.init_params(cfg.replace(attention_impl="xla"), jax.random.PRNGKey(3))
  got = llama.init_params(cfg.replace(attention_impl=impl), jax.random.PRNGKey(3))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(nn.unbox(got)), jax.tree.leaves(nn.unbox(want))):
    np.testing.assert_array_equal(a, b)
