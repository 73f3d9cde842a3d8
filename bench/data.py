"""Data pipeline throughput, side by side in one run (one process, this machine's CPU).

1. Online: the training pipeline reading raw JSONL (tokenizing as it reads, then mixing, packing,
   batching) against plain sentencepiece encoding of the same texts in a loop (one text of each
   source in turn, as the equal-weight mixture reads them), in alternating rounds; ratio = median
   pipeline tokens/s / median raw encoding tokens/s (target >= 0.8).
2. Prepared: the same pipeline over `heal-jax data prepare` output (ArrayRecord through TFDS,
   random access), tokens/s of packed batches (target >= 1M tokens/s per process).
Tokens are real tokens: the packer's padding is not counted (row positions/s are printed beside).

  python bench/data.py [--seq-len 2048] [--batch 8] [--seconds 20] [--rounds 10] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

from heal_jax import config as config_lib
from heal_jax.data import mixture, pipeline, prepare, sources as sources_lib, tokenizer as tokenizer_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tokens_per_s(it, seconds: float) -> tuple[float, float]:
  """(real tokens/s, row positions/s) of batches from `it` for `seconds`: real tokens exclude the
  packer's padding."""
  real, positions, t = 0, 0, time.perf_counter()
  while time.perf_counter() - t < seconds:
    batch = next(it)
    real += int((batch["segment_ids"] > 0).sum())
    positions += batch["segment_ids"].size
  dt = time.perf_counter() - t
  return real / dt, positions / dt


def _encode_tokens_per_s(tok, texts, seconds: float, start: int) -> tuple[float, int]:
  """(tokens/s, where it stopped) of `tok.encode` over `texts` from `start` (cycling) for `seconds`."""
  n, k, t = 0, start, time.perf_counter()
  while time.perf_counter() - t < seconds:
    n += len(tok.encode(texts[k % len(texts)]))
    k += 1
  return n / (time.perf_counter() - t), k


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq-len", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
  parser.add_argument("--rounds", type=int, default=10, help="alternating raw/online rounds")
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/heal-bench-data"))
  parser.add_argument("--pack-defer", type=int, default=None, help="data.pack_defer (default: the config's)")
  args = parser.parse_args()
  config = config_lib.load_config(str(REPO / "configs" / "tiny.py"))
  if args.pack_defer is not None:
    config.data.pack_defer = args.pack_defer
  work = args.workdir.absolute()
  mixture.bootstrap(config, work, print)
  tok_dir = mixture.resolve(config.data.tokenizer, work, "data.tokenizer")
  weights = {"general": 1.0, "medical": 1.0, "clinical": 1.0, "instructions": 1.0}
  spec = pipeline.PipelineSpec(seq_len=args.seq_len, global_batch=args.batch, weights=weights, seed=0,
                               pack_defer=config.data.pack_defer)

  # 1. raw encoding of the same (prompt, target) texts vs the online pipeline
  srcs = sources_lib.from_config(config.data.sources, workdir=str(work))
  texts = {s.name: sources_lib.load_texts(s, "raise")[0]
           for s in srcs}
  tok = tokenizer_lib.Tokenizer(tok_dir)
  # one text of each source in turn, as the equal-weight mixture reads them
  per_source = [[p + t for p, t in pairs] for pairs in texts.values()]
  all_texts = [group[k % len(group)] for k in range(max(map(len, per_source))) for group in per_source]
  online_it = pipeline.BatchIterator(
      {name: pipeline.EncodedTexts(pairs, str(tok_dir)) for name, pairs in texts.items()}, spec)
  next(online_it)  # start-up
  # Alternating rounds, so that drift in the machine's speed hits both sides alike; medians.
  raws, onlines, online_positions, k = [], [], [], 0
  for _ in range(args.rounds):
    rate, k = _encode_tokens_per_s(tok, all_texts, args.seconds / args.rounds, k)
    raws.append(rate)
    rate, positions = _tokens_per_s(online_it, args.seconds / args.rounds)
    onlines.append(rate)
    online_positions.append(positions)
  raw, online, online_pos = (statistics.median(x) for x in (raws, onlines, online_positions))

  # 2. prepared ArrayRecord
  out = work / "prepared"
  if not (out / "report.json").is_file():
    prepare.prepare(config, out, workdir=str(work), overwrite=True)
  prepared_sources = {s.name: prepare.open_prepared(out, s.name) for s in srcs}
  prepared_it = pipeline.BatchIterator(prepared_sources, spec)
  next(prepared_it)  # start-up
  prepared, prepared_pos = _tokens_per_s(prepared_it, args.seconds)

  print(f"packed rows of {args.seq_len}, batch {args.batch}, pack_defer {spec.pack_defer}, 4 sources, 1 process, "
        "in-process reading; "
        "tokens/s count real tokens (padding excluded), positions/s count every row position; "
        f"online and raw: medians of {args.rounds} alternating rounds "
        f"(ratios per round {min(o / r for o, r in zip(onlines, raws)):.2f}..{max(o / r for o, r in zip(onlines, raws)):.2f})")
  print(f"raw sentencepiece encoding:      {raw:12,.0f} tokens/s")
  print(f"online pipeline (tokenize+pack): {online:12,.0f} tokens/s   ratio {online / raw:.2f}x (target >= 0.8x)"
        f"   [{online_pos:,.0f} positions/s]")
  print(f"prepared ArrayRecord pipeline:   {prepared:12,.0f} tokens/s   (target >= 1,000,000)"
        f"   [{prepared_pos:,.0f} positions/s]")
  print(json.dumps({"raw_encode_tokens_per_s": raw, "online_tokens_per_s": online, "online_ratio": online / raw,
                    "online_positions_per_s": online_pos, "prepared_tokens_per_s": prepared,
                    "prepared_positions_per_s": prepared_pos, "seq_len": args.seq_len, "batch": args.batch,
                    "pack_defer": spec.pack_defer}))


if __name__ == "__main__":
  main()
