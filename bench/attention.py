"""Attention benchmark: our Pallas flash attention against cuDNN, jax's reference Pallas mha and XLA.

Shapes (the issue's): causal, bf16, head dim 128, sequence 2K/4K/8K/16K with B*L = 16K tokens per
call (B = 8, 4, 2, 1), two head layouts: MHA 32:32 and GQA 64:8 (query heads : K/V heads).

Implementations (each cell is guarded: an error, e.g. XLA's OOM at 16K, is shown as ERR[n] with the
message below the table, and the run goes on):
  ours      heal_jax.kernels.flash_attention, no segment ids (same work as the others).
  ours_seg  the same with all-ones segment ids: the price of segment masking (training passes them).
  cudnn     jax.nn.dot_product_attention(..., is_causal=True, implementation='cudnn'); GQA native.
  mha       jax.experimental.pallas.ops.gpu.attention.mha(causal=True, sm_scale=1/sqrt(D)) with its
            default blocks; it has no GQA, so K/V are repeated to H heads inside the timed function.
  xla       heal_jax.model.attention.xla_attention + make_mask: the 'xla' attention_impl's computation
            in one block (the impl itself splits sequences over 256 into blocks of query rows).

FLOPs (model FLOPs, causal halving applied, the same count for every implementation):
  forward          = 4 * B * H * L * L * D / 2        (QK^T and PV, 2 FLOPs per MAC, half the pairs)
  forward+backward = 3.5 * forward                    (backward = 2.5 x forward: QK^T recomputed,
                                                        dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q)
TFLOP/s = FLOPs / median wall time of `--iters` calls after `--warmup` calls, each ended by
block_until_ready. "fwd+bwd" times one jitted call computing the output and the vjp of a fixed
random cotangent (dq, dk, dv).

Memory: "exe GiB" = temp + output bytes of the compiled fwd+bwd executable (memory_analysis), an exact
per-cell number; the JSON also has the device's `peak_bytes_in_use` after each cell, which is a
process-wide high-water mark (it never goes down, so read it as "at most").

Before timing, each implementation's fwd+bwd on a small packed GQA case is checked against the
float32 XLA reference (ours also with segment ids, odd length); failures are printed, not fatal.

  python bench/attention.py                 # the full run (GPU; about 3-4 minutes on an H100)
  python bench/attention.py --smoke         # tiny sizes, runs anywhere (interpret mode on CPU)
  python bench/attention.py --sweep         # block-size sweep of ours at 4K (GPU)
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from heal_jax.kernels.flash_attention import flash_attention  # noqa: E402
from heal_jax.model import attention as attention_lib  # noqa: E402

IMPLS = ("ours", "ours_seg", "cudnn", "mha", "xla")


# --- implementations: each maps (q, k, v) -> out, all [B, L, *, D], causal ---------------------

def _ours(q, k, v, *, segments: bool, interpret, **blocks):
  seg = jnp.ones(q.shape[:2], jnp.int32) if segments else None
  return flash_attention(q, k, v, seg, seg, interpret=interpret, **blocks)


def _cudnn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def _mha(q, k, v, *, interpret):
  # Imported here: a jax build without it should fail only this column.
  from jax.experimental.pallas.ops.gpu import attention as pallas_mha  # pylint: disable=g-import-not-at-top
  groups = q.shape[2] // k.shape[2]
  if groups > 1:  # The reference kernel indexes K/V by the query head: no GQA.
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  kwargs = dict(sm_scale=1.0 / math.sqrt(q.shape[-1]), causal=True)
  if interpret:
    kwargs["interpret"] = True
  return pallas_mha.mha(q, k, v, None, **kwargs)


def _xla(q, k, v):
  b, l = q.shape[:2]
  idx = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  seg = jnp.ones((b, l), jnp.int32)
  return attention_lib.xla_attention(q, k, v, attention_lib.make_mask(seg, seg, idx, idx))


def make_impl(name: str, interpret: bool, blocks: dict):
  if name == "ours":
    return functools.partial(_ours, segments=False, interpret=interpret, **blocks)
  if name == "ours_seg":
    return functools.partial(_ours, segments=True, interpret=interpret, **blocks)
  if name == "cudnn":
    return _cudnn
  if name == "mha":
    return functools.partial(_mha, interpret=interpret)
  if name == "xla":
    return _xla
  raise ValueError(name)


# --- measuring ---------------------------------------------------------------------------------

def attention_flops(b: int, h: int, l: int, d: int, mode: str) -> float:
  fwd = 4.0 * b * h * l * l * d / 2
  return fwd if mode == "fwd" else 3.5 * fwd


def _fwd_bwd(fn):
  def run(q, k, v, dout):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(dout))
  return run


def _block(x):
  return jax.tree_util.tree_map(lambda a: a.block_until_ready(), x)


def _peak_bytes():
  try:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")
  except Exception:  # pylint: disable=broad-except
    return None


def time_cell(fn, args, *, iters: int, warmup: int) -> dict:
  """Compiles, warms up and times `fn(*args)`: median ms, executable bytes, compile seconds."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  exe_bytes = None
  try:
    ma = compiled.memory_analysis()
    if ma is not None:
      exe_bytes = int(ma.temp_size_in_bytes + ma.output_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  for _ in range(warmup):
    _block(compiled(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    _block(compiled(*args))
    times.append(time.perf_counter() - start)
  return dict(ms=1e3 * statistics.median(times), exe_bytes=exe_bytes, compile_s=compile_s)


def make_inputs(b, l, h, kv, d, seed=0, dtype=jnp.bfloat16):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(keys[0], (b, l, h, d), dtype)
  k = jax.random.normal(keys[1], (b, l, kv, d), dtype)
  v = jax.random.normal(keys[2], (b, l, kv, d), dtype)
  dout = jax.random.normal(keys[3], (b, l, h, d), dtype)
  return q, k, v, dout


# --- correctness check against the float32 reference --------------------------------------------

def validate(label: str, fn, *, b: int, l: int, h: int, kv: int, d: int,
             seg_BxL: jax.Array | None = None) -> str:
  """Max errors of out/dq/dk/dv relative to the float32 reference's max magnitude, as one line.

  `fn(q, k, v, seg)` with seg None (plain causal) or the given packed segment ids.
  """
  q, k, v, dout = make_inputs(b, l, h, kv, d, seed=1)
  seg = jnp.ones((b, l), jnp.int32) if seg_BxL is None else seg_BxL
  idx = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  mask = attention_lib.make_mask(seg, seg, idx, idx)
  f32 = lambda x: x.astype(jnp.float32)
  ref = jax.jit(_fwd_bwd(lambda q, k, v: attention_lib.xla_attention(q, k, v, mask)))
  want = ref(f32(q), f32(k), f32(v), f32(dout))
  got = jax.jit(_fwd_bwd(lambda q, k, v: fn(q, k, v, seg_BxL)))(q, k, v, dout)
  errs = [float(jnp.max(jnp.abs(f32(g) - w)) / jnp.maximum(1.0, jnp.max(jnp.abs(w))))
          for g, w in zip(got, want)]
  ok = all(np.isfinite(errs)) and all(e < 3e-2 for e in errs)
  return (f"  {label:34s} out {errs[0]:.1e}  dq {errs[1]:.1e}  dk {errs[2]:.1e}  dv {errs[3]:.1e}"
          f"  {'ok' if ok else 'FAIL'}")


def run_validation(impls, interpret: bool, blocks: dict, l: int, d: int) -> None:
  """Every implementation at [2, l, 8 heads, 2 K/V heads]; ours also packed at an odd length."""
  print("validation against the float32 XLA reference (max |err| / max |ref|), heads 8:2:")
  for name in impls:
    fn = make_impl(name, interpret, blocks)
    checks = [(f"{name} L={l}", lambda q, k, v, seg, fn=fn: fn(q, k, v), l, None)]
    if name == "ours_seg":
      odd = l - 3
      seg = np.sort(np.random.RandomState(0).randint(1, 4, (2, odd)), axis=1)
      seg[:, odd - 7:] = 0  # a padding tail, as the packer writes it
      checks = [(f"ours L={odd} packed 3 docs + padding",
                 lambda q, k, v, seg: flash_attention(q, k, v, seg, seg, interpret=interpret,
                                                      **blocks), odd, jnp.asarray(seg, jnp.int32))]
    for label, run, length, seg in checks:
      try:
        print(validate(label, run, b=2, l=length, h=8, kv=2, d=d, seg_BxL=seg))
      except Exception as e:  # pylint: disable=broad-except
        print(f"  {label:34s} ERROR {type(e).__name__}: {_first_line(e)}")


def _first_line(e: Exception, n: int = 300) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:n] if text else ""


# --- main -----------------------------------------------------------------------------------------

def _cell_text(cell: dict) -> str:
  if "tflops" in cell:
    return f"{cell['tflops']:8.1f}" if cell["tflops"] >= 1 else f"{cell['tflops']:8.2g}"
  if "error_index" in cell:
    return f"{'ERR[' + str(cell['error_index']) + ']':>8s}"
  return f"{'skipped':>8s}"


def run_benchmark(args) -> dict:
  interpret = jax.default_backend() != "gpu"
  blocks = {k: v for k, v in dict(block_q=args.block_q, block_k=args.block_k,
                                  block_q_bwd=args.block_q_bwd, block_k_bwd=args.block_k_bwd,
                                  block_q_dkdv=args.block_q_dkdv,
                                  block_k_dkdv=args.block_k_dkdv).items() if v}
  blocks.update(json.loads(args.ours_kwargs))
  if blocks:
    print(f"ours with {blocks}")
  impls = [x for x in args.impls.split(",") if x]
  configs = [tuple(int(n) for n in c.split(":")) for c in args.heads.split(",")]
  seqs = [int(s) for s in args.seqs.split(",")]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__},"
        f" interpret={interpret}, bf16, causal, head_dim {args.head_dim}, tokens/call {args.tokens}")
  print("FLOPs: fwd = 4*B*H*L*L*D/2 (causal halving); fwd+bwd = 3.5 x fwd (bwd = 2.5 x fwd)")

  run_validation(impls, interpret, blocks, args.validate_len, args.head_dim)

  cells, errors = [], []
  start = time.perf_counter()
  for h, kv in configs:
    for l in seqs:
      b = max(1, args.tokens // l)
      inputs = make_inputs(b, l, h, kv, args.head_dim)
      for mode in ("fwd", "fwd+bwd"):
        for name in impls:
          fn = make_impl(name, interpret, blocks)
          cell = dict(heads=h, kv_heads=kv, seq=l, batch=b, head_dim=args.head_dim, mode=mode,
                      impl=name)
          if time.perf_counter() - start > args.budget_s:
            cell["skipped"] = f"over --budget-s={args.budget_s}"
            cells.append(cell)
            continue
          try:
            if mode == "fwd":
              r = time_cell(fn, inputs[:3], iters=args.iters, warmup=args.warmup)
            else:
              r = time_cell(_fwd_bwd(fn), inputs, iters=args.iters, warmup=args.warmup)
            cell.update(r, tflops=attention_flops(b, h, l, args.head_dim, mode) / (r["ms"] * 1e9))
          except Exception as e:  # pylint: disable=broad-except
            msg = f"{type(e).__name__}: {_first_line(e)}"
            errors.append(f"{name} {h}:{kv} L={l} {mode}: {msg}")
            cell.update(error=msg, error_index=len(errors))
            if args.traceback:
              traceback.print_exc()
          cell["peak_bytes_in_use"] = _peak_bytes()
          cells.append(cell)
      del inputs
  return dict(cells=cells, errors=errors, impls=impls, configs=configs, seqs=seqs)


def print_tables(result) -> dict:
  impls, cells = result["impls"], result["cells"]
  by_key = {(c["heads"], c["kv_heads"], c["seq"], c["mode"], c["impl"]): c for c in cells}
  ratio_names = [r for r in ("cudnn", "mha") if r in impls and "ours" in impls]
  header = (f"{'heads':>7s} {'seq':>6s} {'B':>3s} {'mode':>8s} "
            + " ".join(f"{n:>8s}" for n in impls)
            + "".join(f" {'ours/' + r:>10s}" for r in ratio_names))
  print("\nTFLOP/s (model FLOPs, see above)")
  print(header)
  ratios = []
  for h, kv in result["configs"]:
    for l in result["seqs"]:
      for mode in ("fwd", "fwd+bwd"):
        row = [by_key[(h, kv, l, mode, n)] for n in impls]
        vals = [_cell_text(c) for c in row]
        line = f"{str(h) + ':' + str(kv):>7s} {l:6d} {row[0]['batch']:3d} {mode:>8s} " + " ".join(vals)
        for r in ratio_names:
          ours, other = by_key[(h, kv, l, mode, "ours")], by_key[(h, kv, l, mode, r)]
          ratio = ours["tflops"] / other["tflops"] if "tflops" in ours and "tflops" in other else None
          line += f" {ratio:10.2f}" if ratio is not None else f" {'-':>10s}"
          ratios.append(dict(heads=h, kv_heads=kv, seq=l, mode=mode, versus=r, ratio=ratio))
        print(line)
  print("\nfwd+bwd executable memory, GiB (temp + outputs)")
  print(f"{'heads':>7s} {'seq':>6s} " + " ".join(f"{n:>8s}" for n in impls))
  for h, kv in result["configs"]:
    for l in result["seqs"]:
      row = [by_key[(h, kv, l, "fwd+bwd", n)] for n in impls]
      vals = [f"{c['exe_bytes'] / 2**30:8.2f}" if c.get("exe_bytes") is not None else f"{'-':>8s}"
              for c in row]
      print(f"{str(h) + ':' + str(kv):>7s} {l:6d} " + " ".join(vals))
  if result["errors"]:
    print("\nerrors:")
    for i, e in enumerate(result["errors"], 1):
      print(f"  [{i}] {e}")
  return ratios


def sweep(args) -> None:
  """Times a few block/warp/stage settings of ours at one shape (to pick the defaults on a GPU)."""
  interpret = jax.default_backend() != "gpu"
  h, kv = (int(n) for n in args.heads.split(",")[0].split(":"))
  l = int(args.seqs.split(",")[min(1, len(args.seqs.split(",")) - 1)])
  b = max(1, args.tokens // l)
  inputs = make_inputs(b, l, h, kv, args.head_dim)
  fwd_settings = [dict(block_q=bq, block_k=bk, num_warps=w, num_stages=s)
                  for bq, bk, w, s in ((128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3))]
  # The dq kernel (query block x key block) and the dk/dv kernel (the same, transposed roles) may
  # want opposite shapes: a tall tile for the block a program owns, a short one for the loop.
  bwd_settings = [dict(block_q_bwd=q1, block_k_bwd=k1, block_q_dkdv=q2, block_k_dkdv=k2,
                       num_warps_bwd=w, num_stages_bwd=s)
                  for q1, k1, q2, k2, w, s in ((64, 64, 64, 64, 4, 2), (128, 32, 32, 128, 4, 2),
                                               (128, 32, 32, 128, 4, 3), (64, 64, 32, 128, 4, 2),
                                               (128, 32, 64, 64, 4, 2), (64, 32, 32, 64, 4, 2),
                                               (128, 64, 64, 128, 8, 2), (64, 64, 64, 128, 4, 2),
                                               (128, 64, 64, 64, 4, 2), (64, 64, 64, 32, 4, 2))]
  print(f"sweep at heads {h}:{kv}, L={l}, B={b}, D={args.head_dim}")
  # Last, the defaults with all-ones segment ids (the price of passing them, as training does).
  seg_settings = [dict(segments=True)]
  best = {}  # mode -> (TFLOP/s, settings), over the block settings
  for settings, mode in ((fwd_settings, "fwd"), (bwd_settings, "fwd+bwd"), (seg_settings, "fwd"),
                         (seg_settings, "fwd+bwd")):
    for s in settings:
      fn = functools.partial(_ours, interpret=interpret, **{"segments": False, **s})
      try:
        if mode == "fwd":
          r = time_cell(fn, inputs[:3], iters=args.iters, warmup=args.warmup)
        else:
          r = time_cell(_fwd_bwd(fn), inputs, iters=args.iters, warmup=args.warmup)
        tf = attention_flops(b, h, l, args.head_dim, mode) / (r["ms"] * 1e9)
        print(f"  {mode:8s} {s}: {r['ms']:8.3f} ms {tf:7.1f} TFLOP/s")
        if settings is not seg_settings and tf > best.get(mode, (0.0, None))[0]:
          best[mode] = (tf, s)
      except Exception as e:  # pylint: disable=broad-except
        print(f"  {mode:8s} {s}: ERROR {type(e).__name__}: {_first_line(e)}")
  # For `--ours-kwargs`: the best forward settings with the best backward ones.
  merged = {**best.get("fwd", (0, {}))[1], **best.get("fwd+bwd", (0, {}))[1]}
  print(json.dumps({"sweep_best": merged}))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true", help="tiny sizes; runs on CPU in interpret mode")
  p.add_argument("--seqs", default="2048,4096,8192,16384")
  p.add_argument("--heads", default="32:32,64:8", help="query:kv head layouts, comma separated")
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--tokens", type=int, default=16384, help="B * L per call")
  p.add_argument("--impls", default=",".join(IMPLS))
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--validate-len", type=int, default=1024)
  p.add_argument("--block-q", type=int, default=0)
  p.add_argument("--block-k", type=int, default=0)
  p.add_argument("--block-q-bwd", type=int, default=0)
  p.add_argument("--block-k-bwd", type=int, default=0)
  p.add_argument("--block-q-dkdv", type=int, default=0)
  p.add_argument("--block-k-dkdv", type=int, default=0)
  p.add_argument("--ours-kwargs", default="{}",
                 help="JSON of extra flash_attention keyword arguments for ours (e.g. the sweep's best)")
  p.add_argument("--sweep", action="store_true", help="time a few block settings of ours instead")
  p.add_argument("--budget-s", type=float, default=210.0,
                 help="cells not started within this many seconds are skipped (device time is scarce)")
  p.add_argument("--traceback", action="store_true")
  args = p.parse_args(argv)
  if args.smoke:
    args.seqs, args.heads, args.head_dim, args.tokens = "64,128", "4:4,8:2", 32, 256
    args.iters, args.warmup, args.validate_len = 2, 1, 64
    args.block_q = args.block_k = args.block_q_bwd = args.block_k_bwd = 32
  start = time.perf_counter()
  if args.sweep:
    sweep(args)
    return
  result = run_benchmark(args)
  ratios = print_tables(result)
  print(f"\ntotal {time.perf_counter() - start:.0f} s")
  print(json.dumps(dict(
      bench="attention", device=jax.devices()[0].device_kind, backend=jax.default_backend(),
      jax=jax.__version__, dtype="bfloat16", causal=True,
      flops="fwd=4*B*H*L*L*D/2 (causal halving); fwd+bwd=3.5*fwd", cells=result["cells"],
      ratios=ratios)))


if __name__ == "__main__":
  main()
