"""Conversion benchmark: HF -> heal-jax -> HF on a generated ~1B-parameter bf16 checkpoint.

Writes a random HF LLaMA directory (TinyLlama-1.1B shape by default, bf16, sharded into 2+
safetensors files), then runs `heal-jax convert hf-to-orbax` and `orbax-to-hf` each in its own
process and prints wall time and peak RSS (from wait4) beside the checkpoint size. Target: peak
RSS at most 1.3x the checkpoint size. Also checks the round trip is bitwise.

  python bench/convert.py [--workdir /tmp/heal_bench_convert] [--layers 22] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

import ml_dtypes
import numpy as np

from heal_jax.checkpoint import hf_convert, hf_mapping, safetensors_io
from heal_jax.model.config import ModelConfig, to_hf_config


def write_random_hf(out: pathlib.Path, cfg: ModelConfig, max_shard_bytes: int, seed: int = 0) -> int:
  """Streams a random bf16 HF checkpoint to `out`; returns its tensor bytes."""
  out.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  specs = hf_mapping.tensor_specs(cfg)
  bf16 = np.dtype(ml_dtypes.bfloat16)
  plan = [safetensors_io.PlannedTensor(s.hf_name, bf16, s.hf_shape) for s in specs]
  shards = safetensors_io.shard_plan(plan, max_shard_bytes)
  weight_map, total = {}, 0
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    writer = safetensors_io.StreamingWriter(out / name, shard)
    for t in shard:
      writer.write(t.name, (rng.standard_normal(t.shape, np.float32) * 0.02).astype(bf16))
      weight_map[t.name] = name
      total += t.nbytes
    writer.close()
  (out / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
  (out / "config.json").write_text(json.dumps(to_hf_config(cfg, dtype="bfloat16")))
  return total


def run_measured(argv: list[str]) -> tuple[float, int]:
  """(wall seconds, peak RSS bytes) of a child process."""
  start = time.perf_counter()
  proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"{' '.join(argv)} failed with status {status}")
  return wall, usage.ru_maxrss * 1024


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/heal_bench_convert"))
  parser.add_argument("--layers", type=int, default=22)
  parser.add_argument("--shard-gb", type=float, default=1.0)
  parser.add_argument("--keep", action="store_true")
  args = parser.parse_args()
  cfg = ModelConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=args.layers,
                    num_heads=32, num_kv_heads=4, param_dtype="bfloat16")
  shutil.rmtree(args.workdir, ignore_errors=True)
  src, ck, out = args.workdir / "hf", args.workdir / "ck", args.workdir / "hf_out"
  size = write_random_hf(src, cfg, int(args.shard_gb * 1024**3))
  n_files = len(list(src.glob("*.safetensors")))
  cli = [sys.executable, "-m", "heal_jax.cli", "convert"]
  rows = [("hf-to-orbax", *run_measured(cli + ["hf-to-orbax", str(src), str(ck)])),
          ("orbax-to-hf", *run_measured(cli + ["orbax-to-hf", str(ck), str(out), "--max-shard-gb",
                                               str(args.shard_gb)]))]
  a, b = hf_convert.open_hf(src), hf_convert.open_hf(out)
  bitwise = all(t.load().tobytes() == b.tensors[n].load().tobytes() for n, t in a.tensors.items())
  print(f"machine: {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}")
  print(f"checkpoint: {cfg.num_params() / 1e9:.2f}B params, bf16, {size / 1e9:.2f} GB in {n_files} files")
  print(f"{'direction':<12} {'wall s':>8} {'peak RSS GB':>12} {'RSS / size':>11}")
  for name, wall, rss in rows:
    print(f"{name:<12} {wall:>8.1f} {rss / 1e9:>12.2f} {rss / size:>11.2f}")
  print(f"round trip bitwise: {bitwise}")
  print(json.dumps({"params": cfg.num_params(), "bytes": size, "files": n_files, "bitwise": bitwise,
                    **{f"{n}_wall_s": round(w, 2) for n, w, _ in rows},
                    **{f"{n}_rss_ratio": round(r / size, 3) for n, _, r in rows}}))
  if not args.keep:
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
