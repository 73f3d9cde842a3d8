"""Pallas flash attention (interpret mode on CPU) against the float32 XLA reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heal_jax.kernels import flash_attention as fa_module
from heal_jax.kernels import flash_attention_common as common
from heal_jax.kernels.flash_attention import flash_attention
from heal_jax.model import attention as attention_lib
from heal_jax.model import llama
from heal_jax.model.config import ModelConfig


def _reference(q, k, v, q_seg, kv_seg):
  """xla_attention + make_mask in float32, causal by index order."""
  b, l = q.shape[:2]
  s = k.shape[1]
  if q_seg is None:
    q_seg, kv_seg = jnp.ones((b, l), jnp.int32), jnp.ones((b, s), jnp.int32)
  mask = attention_lib.make_mask(q_seg, kv_seg, jnp.broadcast_to(jnp.arange(l), (b, l)),
                                 jnp.broadcast_to(jnp.arange(s), (b, s)))
  f32 = lambda x: x.astype(jnp.float32)
  return attention_lib.xla_attention(f32(q), f32(k), f32(v), mask)


def _packed_segments(rng, b, l, docs, pad_tail=0):
  """Sorted segment ids 1..docs per row (random boundaries), the last `pad_tail` tokens 0."""
  seg = np.sort(rng.randint(1, docs + 1, (b, l)), axis=1)
  if pad_tail:
    seg[:, l - pad_tail:] = 0
  return jnp.asarray(seg, jnp.int32)


def _inputs(seed, b, l, h, kv, d, dtype):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(keys[0], (b, l, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(keys[1], (b, l, kv, d), jnp.float32).astype(dtype)
  v = jax.random.normal(keys[2], (b, l, kv, d), jnp.float32).astype(dtype)
  dout = jax.random.normal(keys[3], (b, l, h, d), jnp.float32)
  return q, k, v, dout


def _out_and_grads(fn, q, k, v, dout):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(dout.astype(out.dtype)))


CASES = {
    # name: (B, L, H, K, D, docs per row (0 = no segment ids), padding tail, dtype, blocks: forward
    # q, k; dq kernel q, k; [dk/dv kernel q, k])
    "odd37_mha_noseg_f32": (1, 37, 2, 2, 16, 0, 0, jnp.float32, (16, 16, 16, 16)),
    "len100_mqa_3docs_f32": (2, 100, 4, 1, 32, 3, 5, jnp.float32, (32, 16, 16, 32)),
    "len128_gqa8to1_4docs_bf16": (1, 128, 16, 2, 16, 4, 0, jnp.bfloat16, (32, 32, 16, 32)),
    "len61_mqa_d24_2docs_fp16": (2, 61, 4, 1, 24, 2, 3, jnp.float16, (16, 32, 32, 16)),
    "len150_gqa4to2_5docs_own_dkdv_tile_f32": (1, 150, 4, 2, 32, 5, 7, jnp.float32,
                                               (32, 16, 64, 16, 16, 64)),
    "len96_gqa4to2_d64_3docs_bf16": (1, 96, 4, 2, 64, 3, 2, jnp.bfloat16, (32, 32, 32, 32)),
    "len80_mha_d128_2docs_bf16": (1, 80, 2, 2, 128, 2, 0, jnp.bfloat16, (32, 16, 16, 32)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name):
  b, l, h, kv, d, docs, pad_tail, dtype, blocks = CASES[name]
  bq, bk, bq_bwd, bk_bwd = blocks[:4]
  bq_dkdv, bk_dkdv = blocks[4:] or (None, None)
  q, k, v, dout = _inputs(len(name), b, l, h, kv, d, dtype)
  seg = _packed_segments(np.random.RandomState(l), b, l, docs, pad_tail) if docs else None

  def ours(q, k, v):
    return flash_attention(q, k, v, seg, seg, block_q=bq, block_k=bk, block_q_bwd=bq_bwd,
                           block_k_bwd=bk_bwd, block_q_dkdv=bq_dkdv, block_k_dkdv=bk_dkdv)

  got = jax.jit(_out_and_grads, static_argnums=0)(ours, q, k, v, dout)
  want = jax.jit(_out_and_grads, static_argnums=0)(
      lambda q, k, v: _reference(q, k, v, seg, seg), *(x.astype(jnp.float32) for x in (q, k, v)),
      dout)
  for what, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert g.dtype == dtype and g.shape == w.shape, what
    g, w = np.asarray(g, np.float32), np.asarray(w)
    scale = max(1.0, float(np.max(np.abs(w))))
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    err = float(np.max(np.abs(g - w)))
    assert err <= tol * scale, f"{name} {what}: max error {err:.3g} > {tol * scale:.3g}"


def test_long_and_repeated_segment_ids_match_reference():
  """Long documents make most tiles mask-free (the unmasked runs); an id that recurs after another
  document still means one segment, and a padding tail of 0s is its own segment."""
  b, l, h, kv, d = 2, 192, 4, 2, 16
  q, k, v, dout = _inputs(5, b, l, h, kv, d, jnp.float32)
  seg = jnp.asarray([[1] * 70 + [2] * 50 + [1] * 60 + [0] * 12, [7] * 192], jnp.int32)
  unmasked_fwd = np.asarray(common.unmasked_kv_start(seg, seg, 32, 16))
  assert unmasked_fwd[1, -1] == 0 and unmasked_fwd[0, -1] > 0  # Both kinds of run occur.
  fn = lambda q, k, v: flash_attention(q, k, v, seg, seg, block_q=32, block_k=16, block_q_bwd=16,
                                       block_k_bwd=32)
  got = jax.jit(_out_and_grads, static_argnums=0)(fn, q, k, v, dout)
  want = jax.jit(_out_and_grads, static_argnums=0)(
      lambda q, k, v: _reference(q, k, v, seg, seg), q, k, v, dout)
  for what, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5, err_msg=what)


def test_other_document_changes_nothing():
  b, l, h, kv, d = 1, 96, 4, 2, 16
  q, k, v, dout = _inputs(3, b, l, h, kv, d, jnp.float32)
  seg = jnp.asarray([[1] * 30 + [2] * 41 + [3] * 25], jnp.int32)
  in_doc2 = (seg == 2)[:, :, None, None]
  keys = jax.random.split(jax.random.PRNGKey(9), 3)
  q2, k2, v2 = (jnp.where(in_doc2, jax.random.normal(key, x.shape), x)
                for key, x in zip(keys, (q, k, v)))
  fn = jax.jit(lambda q, k, v: _out_and_grads(
      lambda q, k, v: flash_attention(q, k, v, seg, seg, block_q=32, block_k=16, block_q_bwd=16,
                                      block_k_bwd=32), q, k, v, dout))
  before, after = fn(q, k, v), fn(q2, k2, v2)
  others = np.asarray(seg[0] != 2)
  for what, x, y in zip(("out", "dq", "dk", "dv"), before, after):
    np.testing.assert_array_equal(np.asarray(x)[0, others], np.asarray(y)[0, others], err_msg=what)
  assert not np.allclose(np.asarray(before[0])[0, ~others], np.asarray(after[0])[0, ~others])


@pytest.mark.parametrize("tail", [0, 19], ids=["no_padding", "padding_tail"])
def test_block_bounds_skip_exactly_the_invisible_blocks(tail):
  """Loop bounds visit every (query block, key block) pair with a visible entry, and no other."""
  l, block_q, block_k = 256, 32, 16
  seg = np.asarray([1] * 40 + [2] * 90 + [3] * 7 + [4] * (119 - tail) + [0] * tail, np.int32)
  visible = np.asarray(attention_lib.make_mask(seg[None], seg[None], np.arange(l)[None],
                                               np.arange(l)[None]))[0]
  seg_1xL = jnp.asarray(seg[None])
  first = np.asarray(common.first_kv_block(seg_1xL, seg_1xL, block_k))[0]
  last_end = np.asarray(common.last_q_block_end(seg_1xL, seg_1xL, block_q))[0]
  nq, nk = l // block_q, l // block_k

  def want(i, j):
    return visible[i * block_q:(i + 1) * block_q, j * block_k:(j + 1) * block_k].any()

  for i in range(nq):
    lo, full, hi = (int(x) for x in common.kv_blocks_for_q_block(
        jnp.int32(i), jnp.asarray(first[i * block_q:(i + 1) * block_q]), block_q=block_q,
        block_k=block_k, num_kv_blocks=nk))
    assert list(range(lo, hi)) == [j for j in range(nk) if want(i, j)], (i, lo, hi)
    assert not np.any(~visible[i * block_q:(i + 1) * block_q, :full * block_k]
                      & (seg[i * block_q:(i + 1) * block_q, None] == seg[None, :full * block_k]))
  for j in range(nk):
    lo, _, hi = (int(x) for x in common.q_blocks_for_kv_block(
        jnp.int32(j), jnp.asarray(last_end[j * block_k:(j + 1) * block_k]), block_q=block_q,
        block_k=block_k, num_q_blocks=nq))
    assert list(range(lo, hi)) == [i for i in range(nq) if want(i, j)], (j, lo, hi)


def test_segment_bounds_compile_to_straight_line_code():
  """One sort per bound and no while loop (on a GPU each loop iteration is its own kernel launches)."""
  seg = jnp.zeros((2, 512), jnp.int32)
  for bound in (lambda s: common.first_kv_block(s, s, 64), lambda s: common.last_q_block_end(s, s, 64),
                lambda s: common.unmasked_kv_start(s, s, 64, 32), lambda s: common.unmasked_q_end(s, s, 64, 32)):
    hlo = jax.jit(bound).lower(seg).as_text()
    assert "stablehlo.while" not in hlo and hlo.count("stablehlo.sort") <= 1


@pytest.mark.parametrize("tail", [0, 19], ids=["no_padding", "padding_tail"])
def test_unmasked_runs_are_exactly_the_single_segment_tiles(tail):
  """The tiles the kernels run without a segment mask are the longest run, next to the diagonal, of
  tiles whose queries and keys all share one segment id."""
  l, block_q, block_k = 256, 32, 16
  seg = np.asarray([3] * 100 + [5] * 20 + [3] * (136 - tail) + [0] * tail, np.int32)
  seg_1xL = jnp.asarray(seg[None])
  nq, nk = l // block_q, l // block_k

  def single(i, j):
    ids = set(seg[i * block_q:(i + 1) * block_q]) | set(seg[j * block_k:(j + 1) * block_k])
    return len(ids) == 1

  start = np.asarray(common.unmasked_kv_start(seg_1xL, seg_1xL, block_q, block_k))[0]
  for i in range(nq):
    u = int(start[i * block_q])
    assert (start[i * block_q:(i + 1) * block_q] == u).all()
    _, full, _ = (int(x) for x in common.kv_blocks_for_q_block(
        jnp.int32(i), None, block_q=block_q, block_k=block_k, num_kv_blocks=nk))
    assert all(single(i, j) for j in range(u, full)), (i, u, full)
    assert u == 0 or not single(i, u - 1), (i, u)
  end = np.asarray(common.unmasked_q_end(seg_1xL, seg_1xL, block_q, block_k))[0]
  for j in range(nk):
    v = int(end[j * block_k])
    assert (end[j * block_k:(j + 1) * block_k] == v).all()
    _, full, _ = (int(x) for x in common.q_blocks_for_kv_block(
        jnp.int32(j), None, block_q=block_q, block_k=block_k, num_q_blocks=nq))
    assert all(single(i, j) for i in range(full, v)), (j, full, v)
    assert v == nq or not single(v, j), (j, v)


def test_model_logits_pallas_equal_xla():
  cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                    num_kv_heads=2, attention_impl="xla")
  params = llama.init_params(cfg, jax.random.PRNGKey(0))
  rng = np.random.RandomState(0)
  tokens = jnp.asarray(rng.randint(0, 97, (2, 45)))
  seg = _packed_segments(rng, 2, 45, 3, pad_tail=4)
  positions = jnp.asarray(np.concatenate([np.arange(45)[None]] * 2))
  logits = {}
  for impl in ("xla", "pallas"):
    model = llama.Llama(cfg.replace(attention_impl=impl))
    logits[impl] = np.asarray(jax.jit(model.apply)({"params": params}, tokens, seg, positions))
  np.testing.assert_allclose(logits["pallas"], logits["xla"], atol=1e-5, rtol=0)


def test_model_unpacked_rows_skip_segment_ids_and_keep_real_logits():
  """packed=False (one document per row, then padding): the kernel runs without segment ids; the
  real tokens' logits equal the masked XLA reference's (the padding tail's need not)."""
  cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                    num_kv_heads=2, attention_impl="xla")
  params = llama.init_params(cfg, jax.random.PRNGKey(1))
  tokens = jnp.asarray(np.random.RandomState(1).randint(0, 97, (2, 40)))
  seg = jnp.asarray([[1] * 40, [1] * 31 + [0] * 9], jnp.int32)
  positions = jnp.asarray(np.concatenate([np.arange(40)[None]] * 2))
  calls = []
  original = fa_module.flash_attention

  def spy(q, k, v, q_seg=None, kv_seg=None, **kw):
    calls.append(q_seg is None)
    return original(q, k, v, q_seg, kv_seg, **kw)

  logits = {}
  for impl in ("xla", "pallas"):
    model = llama.Llama(cfg.replace(attention_impl=impl))
    apply = lambda p, t, s, pos, model=model: model.apply(p, t, s, pos, packed=False)
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(fa_module, "flash_attention", spy)
      logits[impl] = np.asarray(jax.jit(apply)({"params": params}, tokens, seg, positions))
  assert calls and all(calls)  # Every kernel call went without segment ids.
  real_BxL = np.asarray(seg) > 0
  np.testing.assert_allclose(logits["pallas"][real_BxL], logits["xla"][real_BxL], atol=1e-5, rtol=0)


def _pretend_h100(monkeypatch) -> None:
  """jax >= 0.11 asks the local GPU's compute capability while lowering (0.10 assumes 9.0 without one)."""
  try:
    from jax._src.pallas.triton import gpu_info, pallas_call_registration  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  monkeypatch.setattr(pallas_call_registration.gpu_info_lib, "get_gpu_info",
                      lambda: gpu_info.get_gpu_info_from_version(gpu_info.GpuVersion.H100))


def test_lowers_to_triton_for_gpu(monkeypatch):
  """The kernels (forward and both backward ones) lower through Pallas' Triton path, from a CPU."""
  export = pytest.importorskip("jax.export")
  _pretend_h100(monkeypatch)

  def loss(q, k, v, seg):
    return jnp.sum(flash_attention(q, k, v, seg, seg, interpret=False).astype(jnp.float32) ** 2)

  shapes = [jax.ShapeDtypeStruct((1, 256, 8, 128), jnp.bfloat16),
            *[jax.ShapeDtypeStruct((1, 256, 1, 128), jnp.bfloat16)] * 2,
            jax.ShapeDtypeStruct((1, 256), jnp.int32)]
  try:
    exported = export.export(
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*shapes)
  except (NotImplementedError, ImportError) as e:  # A jaxlib without the Triton bindings.
    pytest.skip(f"no Triton lowering here: {e}")
  assert exported.mlir_module().count("__gpu$xla.gpu.triton") == 3


def test_rejects_bad_arguments():
  q, k, v, _ = _inputs(0, 1, 16, 4, 2, 16, jnp.float32)
  seg = jnp.ones((1, 16), jnp.int32)
  with pytest.raises(ValueError, match="both"):
    flash_attention(q, k, v, seg, None)
  with pytest.raises(ValueError, match="dtypes"):
    flash_attention(q, k.astype(jnp.bfloat16), v, seg, seg)
  with pytest.raises(ValueError, match="divide"):
    flash_attention(q[:, :, :3], k, v)
  with pytest.raises(ValueError, match="power of two"):
    flash_attention(q, k, v, block_q=48)
