"""train/step.py: two optimizer steps against transformers + torch (loss with -100 labels, autograd,
clip_grad_norm_, torch.optim.AdamW), and gradient accumulation against one whole batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from heal_jax.checkpoint import hf_mapping
from heal_jax.train import optimizer, step
from heal_jax.train import state as state_lib
from tests import hf_reference

LR, WEIGHT_DECAY, CLIP = 1e-2, 0.5, 0.05  # large enough that decay and clipping move every parameter visibly
# Adam's first update is lr * g / (|g| + eps): an eps well above float32's rounding of small gradients keeps
# the two libraries' summation orders from deciding an element's update (bounded by lr * delta / eps).
EPS = 1e-5


def _batch(vocab: int, seed: int) -> dict[str, np.ndarray]:
  """4 rows of one document each (lengths 12, 9, 16, 5), padded to 16; the first 3 tokens of rows 1
  and 2 are a prompt (loss_mask 0). Row 0 and 3 come from source 0, rows 1 and 2 from source 1."""
  rng = np.random.default_rng(seed)
  lengths, prompts = (12, 9, 16, 5), (0, 3, 3, 0)
  tokens = np.zeros((4, 16), np.int32)
  segments, positions, loss_mask = np.zeros_like(tokens), np.zeros_like(tokens), np.zeros_like(tokens)
  for b, (n, p) in enumerate(zip(lengths, prompts)):
    tokens[b, :n] = rng.integers(1, vocab, n)
    segments[b, :n] = 1
    positions[b, :n] = np.arange(n)
    loss_mask[b, p:n] = 1
  source = np.broadcast_to(np.array([[0], [1], [1], [0]], np.int32), tokens.shape).copy()
  return {"tokens": tokens, "segment_ids": segments, "positions": positions, "loss_mask": loss_mask,
          "source": source}


def _hf_labels(batch: dict[str, np.ndarray]) -> np.ndarray:
  """HF's labels: the token where it is a target, -100 elsewhere (HF shifts them itself)."""
  keep = (batch["loss_mask"] > 0) & (batch["segment_ids"] > 0)
  keep[:, 0] = False
  return np.where(keep, batch["tokens"], -100)


def _params(model, cfg):
  """The torch model's weights in our tree, stacked over layers when cfg.scan_layers."""
  params = hf_reference.our_params(model, cfg.replace(scan_layers=False))
  return hf_mapping.stack_layers(params, cfg.num_layers) if cfg.scan_layers else params


def _ours(micro_steps: int, z_loss: float = 0.0, steps: int = 2, seed: int = 0, scan: bool = False):
  model = hf_reference.hf_llama(seed)
  cfg = hf_reference.our_config(model, scan_layers=scan)
  params = jax.tree.map(jnp.asarray, _params(model, cfg))
  spec = optimizer.OptimizerSpec(peak_lr=LR, steps=10, schedule="constant", weight_decay=WEIGHT_DECAY,
                                 clip_norm=CLIP, eps=EPS)
  hp = optimizer.hyperparams(spec)
  fn = jax.jit(functools.partial(step.train_step, cfg=cfg, micro_steps=micro_steps, z_loss=z_loss, num_sources=2))
  st = state_lib.new_state(params, optimizer.make_optimizer(hp), jax.random.PRNGKey(0))
  metrics = []
  for i in range(steps):
    st, m = fn(st, jax.tree.map(jnp.asarray, _batch(cfg.vocab_size, seed=i)), hp)
    metrics.append(jax.tree.map(np.asarray, m))
  return model, cfg, st, metrics


@pytest.mark.parametrize("scan", [False, True], ids=["per_layer", "scanned"])
def test_two_steps_equal_transformers_with_torch_adamw(scan):
  """Scanned: norm scales are [layers, hidden] there, and still not decayed."""
  model, cfg, st, metrics = _ours(micro_steps=1, scan=scan)
  ref = hf_reference.hf_llama(0).train()  # same seed: the weights the run started from
  decay = [p for p in ref.parameters() if p.ndim >= 2]
  no_decay = [p for p in ref.parameters() if p.ndim < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                           {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.95), eps=EPS)
  for i in range(2):
    batch = _batch(cfg.vocab_size, seed=i)
    opt.zero_grad()
    out = ref(torch.as_tensor(batch["tokens"], dtype=torch.long),
              attention_mask=torch.as_tensor(batch["segment_ids"] > 0, dtype=torch.long),
              labels=torch.as_tensor(_hf_labels(batch), dtype=torch.long))
    out.loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP))
    opt.step()
    np.testing.assert_allclose(metrics[i]["loss"], float(out.loss.detach()), rtol=1e-5)
    np.testing.assert_allclose(metrics[i]["grad_norm"], norm, rtol=1e-4)
    assert norm > CLIP  # the clip acted
    assert int(metrics[i]["tokens"]) == int((_hf_labels(batch) != -100).sum())
  want = _params(ref.eval(), cfg)
  flat_ours = dict(jax.tree_util.tree_flatten_with_path(st.params)[0])
  flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
  assert flat_ours.keys() == flat_want.keys()
  start = dict(jax.tree_util.tree_flatten_with_path(_params(hf_reference.hf_llama(0), cfg))[0])
  for path, value in flat_want.items():
    moved = np.abs(value - start[path]).max()
    assert moved > 1e-3 * LR, path  # every tensor was updated
    diff = np.abs(np.asarray(flat_ours[path]) - value)
    assert diff.max() < 1e-3 * LR and diff.mean() < 1e-5 * LR, (jax.tree_util.keystr(path), diff.max(), diff.mean())


@pytest.mark.parametrize("micro_steps", [2, 4])
def test_gradient_accumulation_equals_the_whole_batch(micro_steps):
  _, _, whole, m_whole = _ours(micro_steps=1, z_loss=1e-2)
  _, _, accum, m_accum = _ours(micro_steps=micro_steps, z_loss=1e-2)
  for key in ("loss", "z_loss", "grad_norm", "tokens", "source_nll_S", "source_tokens_S", "filled", "slots"):
    for a, b in zip(m_whole, m_accum):
      np.testing.assert_allclose(b[key], a[key], rtol=2e-6, err_msg=key)
  assert m_whole[0]["z_loss"] > 0
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(accum.params)):
    diff = np.abs(np.asarray(b) - np.asarray(a))
    assert diff.max() < 1e-2 * LR and diff.mean() < 1e-4 * LR, (diff.max(), diff.mean())


def test_per_source_sums_split_the_batch_by_source():
  model, cfg, _, metrics = _ours(micro_steps=1, steps=1)
  batch = _batch(cfg.vocab_size, seed=0)
  labels = _hf_labels(batch)
  logits = hf_reference.hf_logits(model, batch["tokens"]).astype(np.float64)
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  want_nll, want_tokens = np.zeros(2), np.zeros(2)
  for b in range(4):
    for t in range(1, 16):
      if labels[b, t] != -100:
        src = batch["source"][b, t]
        want_nll[src] += lse[b, t - 1] - logits[b, t - 1, labels[b, t]]
        want_tokens[src] += 1
  np.testing.assert_allclose(metrics[0]["source_tokens_S"], want_tokens)
  np.testing.assert_allclose(metrics[0]["source_nll_S"], want_nll, rtol=1e-5)
  assert (metrics[0]["filled"], metrics[0]["slots"]) == (12 + 9 + 16 + 5, 4 * 16)  # the packing's fill


def test_bfloat16_moments_keep_their_dtype_under_float32_step_numbers():
  """The optimizer's numbers enter the step as float32 arrays (one program for every schedule): the
  moments of bfloat16 parameters stay bfloat16, so step 2 reuses step 1's program; the learning rate
  logged is the schedule's at the optimizer's count."""
  model = hf_reference.hf_llama(0)
  cfg = hf_reference.our_config(model).replace(param_dtype="bfloat16")
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), _params(model, cfg))
  spec = optimizer.OptimizerSpec(peak_lr=LR, steps=4, warmup_steps=2, schedule="linear")
  hp = {k: np.float32(v) for k, v in optimizer.hyperparams(spec).items()}
  fn = jax.jit(functools.partial(step.train_step, cfg=cfg, micro_steps=1, z_loss=0.0, num_sources=2))
  st = state_lib.new_state(params, optimizer.make_optimizer(hp), jax.random.PRNGKey(0))
  dtypes = [x.dtype for x in jax.tree.leaves(st.opt_state)]
  assert jnp.bfloat16 in dtypes
  rates = []
  for i in range(3):
    st, m = fn(st, jax.tree.map(jnp.asarray, _batch(cfg.vocab_size, seed=i)), hp)
    rates.append(float(m["learning_rate"]))
  assert [x.dtype for x in jax.tree.leaves(st.opt_state)] == dtypes
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(st.params))
  assert fn._cache_size() == 1  # pylint: disable=protected-access
  np.testing.assert_allclose(rates, [0.0, LR / 2, LR], rtol=1e-6)


def test_a_batch_without_target_tokens_changes_nothing_but_the_counters():
  """Every token masked (instruction examples whose responses lie past seq_len): the step used to apply
  AdamW on zero gradients, so weight decay (0.5 here) shrank every weight and the moments decayed. Now
  parameters and optimizer state stay bit for bit, and the step is counted as skipped; a good step
  after it resets the streak."""
  model = hf_reference.hf_llama(0)
  cfg = hf_reference.our_config(model)
  params = jax.tree.map(jnp.asarray, _params(model, cfg))
  spec = optimizer.OptimizerSpec(peak_lr=LR, steps=10, schedule="constant", weight_decay=WEIGHT_DECAY, eps=EPS)
  hp = optimizer.hyperparams(spec)
  fn = jax.jit(functools.partial(step.train_step, cfg=cfg, micro_steps=1, z_loss=0.0, num_sources=2))
  st = state_lib.new_state(params, optimizer.make_optimizer(hp), jax.random.PRNGKey(0))
  st, _ = fn(st, jax.tree.map(jnp.asarray, _batch(cfg.vocab_size, seed=0)), hp)  # moments now non-zero
  empty = {**_batch(cfg.vocab_size, seed=1)}
  empty["loss_mask"] = np.zeros_like(empty["loss_mask"])
  after, m = fn(st, jax.tree.map(jnp.asarray, empty), hp)
  assert float(m["tokens"]) == 0 and not bool(m["applied"])  # left out of the logged means
  for a, b in zip(jax.tree.leaves((st.params, st.opt_state)), jax.tree.leaves((after.params, after.opt_state))):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert (int(after.step), int(after.skipped), int(after.bad_streak)) == (2, 1, 1)
  after, _ = fn(after, jax.tree.map(jnp.asarray, _batch(cfg.vocab_size, seed=2)), hp)
  assert (int(after.step), int(after.skipped), int(after.bad_streak)) == (3, 1, 0)
