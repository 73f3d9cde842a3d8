"""Train-step throughput, measured side by side in one run.

CPU (default): tokens/s of our jitted train step (forward, backward, clipped AdamW; fp32) against
transformers' torch LlamaForCausalLM with the same shapes, batch and optimizer, and their ratio.

GPU (--gpu): MFU of a LLaMA2-7B-width model (hidden 4096, 32 heads, MLP 11008, vocab 32000; as
many layers as --layers) at seq 4096 and 8192 for each attention implementation, bf16 compute, fp32
master weights and AdamW state, for each --remat policy (default full). Implementations: pallas
(packed rows: the kernel gets segment ids, here one document per row, as training passes them),
pallas_1doc (rows declared one document each, packed=False: no segment ids, like cudnn), cudnn
(packed=False), xla.
MFU uses PaLM's FLOPs per token (heal_jax.train.metrics) over the device's dense bf16 peak (H100
989 TFLOP/s); remat's recomputation is not counted as useful work.

  python bench/train.py                   # CPU comparison (under a minute here)
  python bench/train.py --gpu --layers 8  # on one H100

On CPU our step is timed on one host device and on a data-parallel mesh of several (`--cpu-devices`,
default 1,2: XLA's host platform split into that many devices, batch rows split between them, gradients
averaged across them, as the trainer's data axis does), and torch with 1 thread and its default count
(`--torch-threads`); the ratio is our fastest over torch's fastest. XLA:CPU runs most of a step's ops one at a time, so on two cores a second
device fills the idle core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _host_devices_from_argv(argv: list[str]) -> int:
  """The most host devices --cpu-devices asks for (1 with --gpu): XLA reads its flags when jax loads."""
  if "--gpu" in argv:
    return 1
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--cpu-devices=")), None)
  if spec is None and "--cpu-devices" in argv[:-1]:
    spec = argv[argv.index("--cpu-devices") + 1]
  return max(int(n) for n in (spec or "1,2").split(","))


if __name__ == "__main__" and _host_devices_from_argv(sys.argv[1:]) > 1 and \
    "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                             f"{_host_devices_from_argv(sys.argv[1:])}").strip()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from heal_jax.model.config import ModelConfig  # pylint: disable=wrong-import-position
from heal_jax.parallel import mesh as mesh_lib  # pylint: disable=wrong-import-position
from heal_jax.train import metrics, optimizer as opt_lib, state as state_lib, step as step_lib  # pylint: disable=wrong-import-position


def _our_step(cfg: ModelConfig, batch_rows: int, seq: int, packed: bool = True, devices: int = 1):
  mesh = mesh_lib.make_mesh({"data": devices, "fsdp": 1, "tensor": 1}, jax.devices()[:devices])
  spec = opt_lib.OptimizerSpec(peak_lr=1e-4, steps=1000, warmup_steps=0, schedule="constant")
  tx = opt_lib.make_optimizer(opt_lib.hyperparams(spec))
  p_shard = state_lib.param_shardings(cfg, mesh)
  params = jax.jit(lambda k: state_lib.unboxed_init(cfg, k), out_shardings=p_shard)(jax.random.PRNGKey(0))
  state = state_lib.new_state(params, tx, jax.random.PRNGKey(0))
  st_shard = state_lib.state_shardings(jax.eval_shape(lambda: state), p_shard, mesh)
  # The step's outputs carry st_shard; inputs placed otherwise would compile a second program.
  state = jax.device_put(state, st_shard)
  jitted = step_lib.jit_train_step(cfg, 1, 0.0, 1, st_shard, mesh_lib.batch_sharding(mesh), packed=packed)
  hp = step_lib.replicated_hyperparams(spec, mesh)
  fn = lambda st, b: jitted(st, b, hp)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (batch_rows, seq), dtype=np.int32)
  ones = np.ones_like(tokens)
  batch = {"tokens": tokens, "segment_ids": ones, "positions": np.broadcast_to(np.arange(seq, dtype=np.int32),
                                                                                 tokens.shape).copy(),
           "loss_mask": ones, "source": np.zeros_like(tokens)}
  batch = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
  return fn, state, batch


def time_ours(cfg: ModelConfig, batch_rows: int, seq: int, steps: int, packed: bool = True,
              devices: int = 1) -> float:
  """Seconds per step, after one warm-up (compile) step, on a data mesh of `devices` devices."""
  fn, state, batch = _our_step(cfg, batch_rows, seq, packed, devices)
  return _time_steps(fn, state, batch, steps)


def _time_steps(fn, state, batch, steps: int, trace_dir: str = "") -> float:
  """Seconds per step after a warm-up step; with trace_dir, two more steps under the jax profiler
  (its <host>.trace.json.gz there, for bench/trace_summary.py; a profiler failure is printed and
  leaves the timing intact)."""
  state, m = fn(state, batch)
  jax.block_until_ready(m["loss"])
  t = time.perf_counter()
  for _ in range(steps):
    state, m = fn(state, batch)
  jax.block_until_ready(m["loss"])
  dt = (time.perf_counter() - t) / steps
  if trace_dir:
    try:
      with jax.profiler.trace(trace_dir):
        for _ in range(2):
          state, m = fn(state, batch)
        jax.block_until_ready(m["loss"])
    except Exception as e:  # pylint: disable=broad-except
      print(f"profiling into {trace_dir} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
  return dt


def time_torch(cfg: ModelConfig, batch_rows: int, seq: int, steps: int) -> float:
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import LlamaConfig, LlamaForCausalLM  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  hf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                   num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                   num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=seq, rms_norm_eps=cfg.rms_norm_eps,
                   tie_word_embeddings=cfg.tie_word_embeddings)
  model = LlamaForCausalLM(hf).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
  tokens = torch.randint(0, cfg.vocab_size, (batch_rows, seq))

  def one():
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
  one()
  t = time.perf_counter()
  for _ in range(steps):
    one()
  return (time.perf_counter() - t) / steps


def cpu(args) -> dict:
  cfg = ModelConfig(vocab_size=8192, hidden_size=256, intermediate_size=688, num_layers=6, num_heads=4,
                    num_kv_heads=4, max_position_embeddings=args.seq, param_dtype="float32",
                    compute_dtype="float32", attention_impl="xla")
  tokens = args.batch * args.seq
  counts = sorted({int(n) for n in args.cpu_devices.split(",")})
  if max(counts) > jax.device_count() or any(args.batch % n for n in counts):
    raise SystemExit(f"--cpu-devices {args.cpu_devices}: {jax.device_count()} host device(s) exist and "
                     f"each count must divide --batch {args.batch}")
  ours = {n: time_ours(cfg, args.batch, args.seq, args.steps, devices=n) for n in counts}
  import torch  # pylint: disable=import-outside-toplevel
  default_threads = torch.get_num_threads()
  refs = {}
  for n in sorted({int(t) for t in (args.torch_threads or f"1,{default_threads}").split(",")}):
    torch.set_num_threads(n)
    refs[n] = time_torch(cfg, args.batch, args.seq, args.steps)
  torch.set_num_threads(default_threads)
  threads = min(refs, key=refs.get)
  ref = refs[threads]
  best = min(ours, key=ours.get)
  result = {"device": "cpu", "params": cfg.num_params(), "batch": args.batch, "seq": args.seq,
            "ours_tokens_per_s": tokens / ours[best], "ours_devices": best,
            "ours_tokens_per_s_by_devices": {n: tokens / t for n, t in ours.items()},
            "torch_tokens_per_s": tokens / ref, "torch_threads": threads,
            "torch_tokens_per_s_by_threads": {n: tokens / t for n, t in refs.items()}, "ratio": ref / ours[best],
            "ratio_one_device": ref / ours[1] if 1 in ours else None}
  print(f"{cfg.num_params() / 1e6:.1f}M-parameter LLaMA, batch {args.batch} x {args.seq}, fp32, "
        f"fwd+bwd+AdamW; {os.cpu_count()} CPUs")
  for n, t in ours.items():
    print(f"ours  (jax {jax.__version__}), {n} host device(s), data mesh: {tokens / t:9,.0f} tokens/s")
  for n, t in refs.items():
    print(f"torch (transformers), {n} thread(s):                {tokens / t:9,.0f} tokens/s")
  print(f"ratio ours/torch: {ref / ours[best]:.2f}x, our {best} device(s) vs torch's {threads} thread(s)  "
        "(target >= 1.2x)")
  return result


def _peak_gib() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return peak / 2**30 if peak else None


def _width_7b(layers: int, seq: int, remat: str, impl: str) -> ModelConfig:
  """LLaMA2-7B width with `layers` layers: bf16 compute, fp32 master weights, scanned layers."""
  return ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=layers,
                     num_heads=32, num_kv_heads=32, max_position_embeddings=seq, param_dtype="float32",
                     compute_dtype="bfloat16", remat_policy=remat, scan_layers=True, attention_impl=impl)


def _impl_and_packed(label: str) -> tuple[str, bool]:
  """An --impls label -> (attention_impl, whether rows are passed as packed: segment ids honoured)."""
  impl = label.removesuffix("_1doc")
  return impl, not (impl == "cudnn" or label.endswith("_1doc"))


def gpu(args) -> dict:
  peak = metrics.device_peak_flops(args.peak_tflops)
  rows = []
  # Ordered by importance: a run cut short by its time limit still has the rows that matter most.
  for remat in args.remat.split(","):
    for seq in (int(s) for s in args.seqs.split(",")):
      for impl in args.impls.split(","):
        attention_impl, packed = _impl_and_packed(impl)
        cfg = _width_7b(args.layers, seq, remat, attention_impl)
        batch_rows = max(args.tokens // seq, 1)
        row = {"seq": seq, "impl": impl, "remat": remat, "layers": args.layers, "batch": batch_rows}
        try:
          dt = time_ours(cfg, batch_rows, seq, args.steps, packed=packed)
        except Exception as e:  # pylint: disable=broad-except
          rows.append({**row, "error": f"{type(e).__name__}: {str(e)[:300]}"})
          print(f"seq {seq:5d} {impl:11s} remat {remat:14s} failed: {rows[-1]['error']}", flush=True)
          continue
        tok_s = batch_rows * seq / dt
        mfu = metrics.flops_per_token(cfg, seq) * tok_s / peak if peak else float("nan")
        rows.append({**row, "step_s": dt, "tokens_per_s": tok_s, "mfu": mfu, "peak_gib_so_far": _peak_gib()})
        print(f"seq {seq:5d} {impl:11s} remat {remat:14s} batch {batch_rows} step {dt * 1e3:8.1f} ms "
              f"{tok_s:10,.0f} tok/s MFU {mfu:6.1%} (device peak so far {rows[-1]['peak_gib_so_far'] or 0:.1f} GiB)",
              flush=True)
  return {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows}


def _time_jitted(fn, *args, steps: int) -> float:
  jax.block_until_ready(fn(*args))
  t = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def breakdown(args) -> dict:
  """Where a train step's time goes: forward+loss, forward+backward, the whole step (AdamW and the
  guard added), and one bf16 matmul of the MLP's shape as the device's attainable rate."""
  seq, remat = int(args.seqs.split(",")[0]), args.remat.split(",")[0]
  batch_rows = max(args.tokens // seq, 1)
  rows = []
  a = jnp.ones((args.tokens, 4096), jnp.bfloat16)
  w = jnp.ones((4096, 11008), jnp.bfloat16)
  mm = _time_jitted(jax.jit(lambda a, w: a @ w), a, w, steps=20)
  mm_tflops = 2 * args.tokens * 4096 * 11008 / mm / 1e12
  print(f"bf16 matmul [{args.tokens},4096]x[4096,11008]: {mm * 1e3:.2f} ms, {mm_tflops:.0f} TFLOP/s", flush=True)
  for impl in args.impls.split(","):
    attention_impl, packed = _impl_and_packed(impl)
    cfg = _width_7b(args.layers, seq, remat, attention_impl)
    try:
      fn, state, batch = _our_step(cfg, batch_rows, seq, packed)
      fwd = jax.jit(lambda p, b: step_lib.batch_stats(p, b, cfg, 0.0, 1, packed)["nll_sum"])
      grad = jax.jit(lambda p, b: step_lib.loss_and_grads(p, b, cfg, 1, 0.0, 1, packed)[1])
      t_fwd = _time_jitted(fwd, state.params, batch, steps=args.steps)
      t_grad = _time_jitted(grad, state.params, batch, steps=args.steps)
      del fwd, grad
      trace_dir = f"{args.trace}/{impl}" if args.trace else ""
      t_step = _time_steps(fn, state, batch, args.steps, trace_dir)  # the same state: one model in memory
    except Exception as e:  # pylint: disable=broad-except
      print(f"{impl}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
      continue
    rows.append({"impl": impl, "seq": seq, "remat": remat, "layers": args.layers, "forward_s": t_fwd,
                 "fwd_bwd_s": t_grad, "step_s": t_step, "matmul_tflops": mm_tflops})
    print(f"{impl:11s} seq {seq} remat {remat}: forward {t_fwd * 1e3:7.1f} ms, forward+backward "
          f"{t_grad * 1e3:7.1f} ms, whole step {t_step * 1e3:7.1f} ms", flush=True)
  return {"device": jax.devices()[0].device_kind, "breakdown": rows}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gpu", action="store_true")
  parser.add_argument("--breakdown", action="store_true",
                      help="GPU: time forward, forward+backward and the whole step at the first --seqs")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--tokens", type=int, default=16384, help="tokens per step on GPU")
  parser.add_argument("--remat", default="full", help="GPU: remat policies to time, comma separated")
  parser.add_argument("--seqs", default="4096,8192", help="GPU: sequence lengths")
  parser.add_argument("--impls", default="pallas,cudnn,xla", help="GPU: attention implementations")
  parser.add_argument("--peak-tflops", type=float, default=0.0)
  parser.add_argument("--trace", default="", help="--breakdown: profile two whole steps per impl into DIR/IMPL")
  parser.add_argument("--cpu-devices", default="1,2",
                      help="CPU: host device counts to time our step with (a data mesh over them)")
  parser.add_argument("--torch-threads", default="",
                      help="CPU: torch thread counts to time (default 1 and torch's default); the best counts")
  args = parser.parse_args()
  result = breakdown(args) if args.breakdown else gpu(args) if args.gpu else cpu(args)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
