"""Data pipeline throughput, side by side in one run (one process, this machine's CPU).

1. Online: the training pipeline reading raw JSONL (tokenizing as it reads, then mixing, packing,
   batching) against plain sentencepiece encoding of the same texts in a loop; ratio = pipeline /
   raw encoding (target >= 0.8).
2. Prepared: the same pipeline over `heal-jax data prepare` output (ArrayRecord through TFDS,
   random access), tokens/s of packed batches (target >= 1M tokens/s per process).

  python bench/data.py [--seq-len 2048] [--batch 8] [--workdir /tmp/heal-bench-data]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import grain

from heal_jax import config as config_lib
from heal_jax.data import mixture, pipeline, prepare, sources as sources_lib, tokenizer as tokenizer_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tokens_per_s(it, tokens_per_batch: int, seconds: float) -> float:
  next(it)  # first batch: pipeline start-up
  n, t = 0, time.perf_counter()
  while time.perf_counter() - t < seconds:
    next(it)
    n += 1
  return n * tokens_per_batch / (time.perf_counter() - t)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq-len", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/heal-bench-data"))
  args = parser.parse_args()
  config = config_lib.load_config(str(REPO / "configs" / "tiny.py"))
  work = args.workdir.absolute()
  mixture.bootstrap(config, work, print)
  tok_dir = mixture.resolve(config.data.tokenizer, work)
  weights = {"general": 1.0, "medical": 1.0, "clinical": 1.0, "instructions": 1.0}
  spec = pipeline.PipelineSpec(seq_len=args.seq_len, global_batch=args.batch, weights=weights, seed=0)
  tokens_per_batch = args.seq_len * args.batch

  # 1. raw encoding of the same (prompt, target) texts vs the online pipeline
  srcs = sources_lib.from_config(config.data.sources, workdir=str(work))
  texts = {s.name: sources_lib.load_texts(s, "raise")[0]
           for s in srcs}
  tok = tokenizer_lib.Tokenizer(tok_dir)
  all_texts = [p + t for pairs in texts.values() for p, t in pairs]
  t, n = time.perf_counter(), 0
  while time.perf_counter() - t < args.seconds:
    for text in all_texts[:2000]:
      n += len(tok.encode(text))
    if time.perf_counter() - t > args.seconds:
      break
  raw = n / (time.perf_counter() - t)
  online_sources = {name: grain.MapDataset.source(pipeline.EncodedTexts(pairs, str(tok_dir)))
                    for name, pairs in texts.items()}
  online = _tokens_per_s(pipeline.BatchIterator(online_sources, spec), tokens_per_batch, args.seconds)

  # 2. prepared ArrayRecord
  out = work / "prepared"
  if not (out / "report.json").is_file():
    prepare.prepare(config, out, workdir=str(work), overwrite=True)
  prepared_sources = {s.name: grain.MapDataset.source(prepare.open_prepared(out, s.name)) for s in srcs}
  prepared = _tokens_per_s(pipeline.BatchIterator(prepared_sources, spec), tokens_per_batch, args.seconds)

  print(f"packed rows of {args.seq_len}, batch {args.batch}, 4 sources, 1 process, in-process reading")
  print(f"raw sentencepiece encoding:     {raw:12,.0f} tokens/s")
  print(f"online pipeline (tokenize+pack): {online:12,.0f} tokens/s   ratio {online / raw:.2f}x (target >= 0.8x)")
  print(f"prepared ArrayRecord pipeline:   {prepared:12,.0f} tokens/s   (target >= 1,000,000)")
  print(json.dumps({"raw_encode_tokens_per_s": raw, "online_tokens_per_s": online, "online_ratio": online / raw,
                    "prepared_tokens_per_s": prepared, "seq_len": args.seq_len, "batch": args.batch}))


if __name__ == "__main__":
  main()
