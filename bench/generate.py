"""Generation benchmark: our jitted KV-cache greedy decoding against transformers' `generate`.

One run builds a ~10M-parameter LLaMA (random weights, 8 layers, hidden 256, GQA 8:4, vocabulary of a
sentencepiece model trained on the bundled synthetic corpus), writes it as a heal-jax checkpoint,
exports it with `orbax_to_hf` and loads that into transformers (torch, CPU). Both decode
the same prompts (the note-writing instruction over the first turns of synthetic conversations, BOS
included, lengths differing within a batch) greedily for exactly `--max-new-tokens` tokens (EOS does
not stop either side). Batches are left-padded on both sides (ours to a multiple of 64, transformers
to the longest prompt, with an attention mask).

tokens/s = batch * max_new_tokens / wall time of one whole call (prefill + decode + returning the
tokens to the host), the median of `--repeats` calls. Ours excludes jit compile time: each batch size
is run once to compile before timing (transformers also gets one untimed warm-up call). Transformers
is timed with each torch thread count of `--torch-threads` and the ratio uses its fastest (on a
shared, oversubscribed machine torch's 2-thread pool can be many times slower than 1 thread). Finally
the greedy tokens of the two are compared token by token.

`--dtype bfloat16` casts the weights of both sides to bfloat16 and computes in it (ours:
param and compute dtype; transformers: `dtype=torch.bfloat16`), as a bfloat16 export is used.

`--lookahead K` (default 4; 0 skips it) also times our speculative prompt-lookup decoding (K draft
tokens a forward pass, `infer/ngram_draft.py`), whose tokens must equal our plain greedy ones, and, at
batch 1 (transformers' assisted generation takes one row), transformers' own prompt lookup
(`prompt_lookup_num_tokens=K`, its default 2-token n-grams, as ours) at the thread count fastest for
its plain decoding. How
much speculation gains depends on how often the model repeats its prompt or itself: this bench's
random model soon repeats one token, so its passes per token flatter drafts; the table prints them.

  python bench/generate.py [--max-new-tokens 128] [--batches 1,8] [--repeats 3] [--torch-threads 1,2]
                           [--dtype float32|bfloat16] [--lookahead 4] [--checkpoint DIR]

`--checkpoint DIR` times a given model instead (a converted checkpoint or a training work directory,
exported to HF for transformers), e.g. the tiny recipe's `runs/tiny`, whose notes show how often drafts
are kept on text a trained model writes.
Prints a table and, last, one JSON line. Targets: ours >= 5x at batch 1 and >= 3x at batch 8 (plain).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from heal_jax.checkpoint import hf_convert, random_init, restore
from heal_jax.data import synthetic, tokenizer as tokenizer_lib
from heal_jax.infer import decode, generate as generate_lib
from heal_jax.model.config import ModelConfig


def corpus(workdir: pathlib.Path) -> tuple[dict[str, pathlib.Path], list[str]]:
  """(the bundled synthetic corpus's files, written under `workdir`; its conversations)."""
  files = synthetic.generate_corpus(workdir / "corpus", seed=0)
  with open(files["clinical"], encoding="utf-8") as f:
    return files, [json.loads(line)["conversation"] for line in f]


def build(workdir: pathlib.Path, files: dict[str, pathlib.Path]) -> tuple[pathlib.Path, pathlib.Path]:
  """(heal-jax checkpoint, HF directory) of the random model under `workdir`, its tokenizer trained on
  `files`."""
  tok = tokenizer_lib.train_tokenizer([files[t] for t in sorted(files)], workdir / "tokenizer",
                                      vocab_size=8000)
  cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=256, intermediate_size=688, num_layers=8,
                    num_heads=8, num_kv_heads=4, max_position_embeddings=2048)
  random_init.write_random_checkpoint(cfg, workdir / "ckpt", seed=0, tokenizer_dir=workdir / "tokenizer",
                                      overwrite=True)
  hf_convert.orbax_to_hf(workdir / "ckpt", workdir / "hf", overwrite=True)
  return workdir / "ckpt", workdir / "hf"


def export(checkpoint: pathlib.Path, workdir: pathlib.Path, dtype: str) -> pathlib.Path:
  """The HF export (under `workdir`) of a given model, e.g. the tiny recipe's trained one: a converted
  checkpoint as stored, a training work directory's newest checkpoint in `dtype`."""
  from_workdir = restore.is_workdir(checkpoint)
  hf_convert.orbax_to_hf(checkpoint, workdir / "hf", overwrite=True, dtype=dtype if from_workdir else None)
  return workdir / "hf"


def prompts_for(tok: tokenizer_lib.Tokenizer, conversations: list[str], batch: int) -> list[list[int]]:
  """Note-writing prompts over the first 2..(batch+1) turns of `batch` conversations."""
  texts = ["\n".join(c.splitlines()[:2 + i % 6]) for i, c in enumerate(conversations[:batch])]
  return [tok.encode(generate_lib.note_prompt_text(t), add_bos=True) for t in texts]


def time_calls(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--max-new-tokens", type=int, default=128)
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--workdir", type=pathlib.Path, default=None)
  parser.add_argument("--torch-threads", default=f"1,{torch.get_num_threads()}",
                      help="torch thread counts to time transformers with (best one is the baseline)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="weights and compute of both sides")
  parser.add_argument("--checkpoint", type=pathlib.Path, default=None,
                      help="time this model (a converted checkpoint or a training work directory, e.g. the "
                           "README's runs/tiny) instead of the random 10M-parameter one")
  parser.add_argument("--lookahead", type=int, default=4,
                      help="draft tokens per pass of our speculative decoding (and transformers' prompt lookup "
                           "at batch 1); 0: plain decoding only")
  args = parser.parse_args()
  workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="heal_bench_generate_"))
  files, conversations = corpus(workdir)
  if args.checkpoint:
    ckpt, hf_dir = args.checkpoint, export(args.checkpoint, workdir, args.dtype)
  else:
    ckpt, hf_dir = build(workdir, files)
  loaded = restore.load_model(ckpt, dtype=args.dtype, compute_dtype=args.dtype)
  tok = tokenizer_lib.Tokenizer(loaded.tokenizer_dir)
  params = jax.device_put(loaded.params)
  n = args.max_new_tokens
  fn = decode.make_generate_fn(loaded.cfg, n, stop_on_eos=False)
  k = args.lookahead
  fn_k = decode.make_generate_fn(loaded.cfg, n, stop_on_eos=False, lookahead=k) if k else None
  hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, args.dtype)).eval()
  hf.generation_config.eos_token_id = None
  hf.generation_config.pad_token_id = 0
  print(f"model: {loaded.source if args.checkpoint else 'random'}, "
        f"{loaded.cfg.num_params() / 1e6:.2f}M parameters, vocab {loaded.cfg.vocab_size}, "
        f"{args.dtype}; max_new_tokens {n}; jax {jax.__version__} ({jax.default_backend()}), torch "
        f"{torch.__version__}, transformers {transformers.__version__}; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
  default_threads = torch.get_num_threads()
  threads = sorted({int(t) for t in args.torch_threads.split(",")})
  hf_cols = " ".join(f"{f'hf tok/s {t}T':>12}" for t in threads)
  print(f"{'batch':>5} {'prompt len':>11} {'ours tok/s':>11} {hf_cols} {'ratio':>6} "
        f"{f'vs {default_threads}T':>6} {'compile s':>10} {'tokens equal':>13}"
        + (f" | {f'ours K={k}':>10} {'passes':>6} {'ratio':>6} {f'hf K={k}':>8} {'vs hf K':>7} {'equal':>5}" if k else ""))
  rows = []
  for batch in [int(b) for b in args.batches.split(",")]:
    prompts = prompts_for(tok, conversations, batch)
    start = time.perf_counter()
    ours = decode.run(fn, params, prompts)  # compiles for this (B, P)
    compile_s = time.perf_counter() - start
    ours_s = time_calls(lambda: decode.run(fn, params, prompts), args.repeats)
    tokens_BxP, pad_B = decode.left_pad(prompts, pad_multiple=1)
    ids = torch.as_tensor(tokens_BxP, dtype=torch.long)
    mask = torch.as_tensor(np.arange(tokens_BxP.shape[1])[None] >= pad_B[:, None], dtype=torch.long)

    def hf_generate(ids=ids, mask=mask):
      with torch.inference_mode():
        return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                           do_sample=False)[:, ids.shape[1]:].numpy()

    hf_s = {}
    for t in threads:
      torch.set_num_threads(t)
      theirs = hf_generate()  # warm-up
      hf_s[t] = time_calls(hf_generate, args.repeats)
    agree = np.asarray(ours) == theirs
    best = min(hf_s.values())
    spec = {}
    if k:
      drafted = decode.run(fn_k, params, prompts)  # compiles
      spec["ours_s"] = time_calls(lambda: decode.run(fn_k, params, prompts), args.repeats)
      tokens_BxP, pad_B = decode.left_pad(prompts)
      spec["passes"] = int(fn_k(params, tokens_BxP, pad_B, jax.random.PRNGKey(0))[2]) + 1  # with the prefill
      spec["tokens_equal"] = drafted == ours
      if batch == 1:
        torch.set_num_threads(min(hf_s, key=hf_s.get))

        def hf_lookup():
          with torch.inference_mode():
            return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                               prompt_lookup_num_tokens=k)[:, ids.shape[1]:].numpy()

        hf_lookup()  # warm-up
        spec["hf_s"] = time_calls(hf_lookup, args.repeats)
        torch.set_num_threads(default_threads)
    row = dict(batch=batch, prompt_lengths=[len(p) for p in prompts], ours_tokens_per_s=batch * n / ours_s,
               hf_tokens_per_s={t: batch * n / s for t, s in hf_s.items()}, ratio=best / ours_s,
               ratio_vs_default_threads=hf_s[default_threads] / ours_s if default_threads in hf_s else None,
               ours_compile_s=compile_s - ours_s, tokens_equal=bool(agree.all()),
               tokens_agreeing=f"{int(agree.sum())}/{agree.size}")
    if k:
      row.update(lookahead=k, ours_lookahead_tokens_per_s=batch * n / spec["ours_s"], lookahead_passes=spec["passes"],
                 ratio_lookahead=best / spec["ours_s"], lookahead_tokens_equal=spec["tokens_equal"],
                 hf_lookup_tokens_per_s=batch * n / spec["hf_s"] if "hf_s" in spec else None,
                 ratio_lookahead_vs_hf_lookup=spec["hf_s"] / spec["ours_s"] if "hf_s" in spec else None)
    rows.append(row)
    hf_cells = " ".join(f"{row['hf_tokens_per_s'][t]:>12.0f}" for t in threads)
    print(f"{batch:>5} {min(row['prompt_lengths']):>4}-{max(row['prompt_lengths']):<6} "
          f"{row['ours_tokens_per_s']:>11.0f} {hf_cells} {row['ratio']:>5.1f}x "
          f"{row['ratio_vs_default_threads'] or float('nan'):>5.1f}x "
          f"{row['ours_compile_s']:>10.1f} {row['tokens_agreeing']:>13}"
          + (f" | {row['ours_lookahead_tokens_per_s']:>10.0f} {row['lookahead_passes']:>6} "
             f"{row['ratio_lookahead']:>5.1f}x "
             + (f"{row['hf_lookup_tokens_per_s']:>8.0f} {row['ratio_lookahead_vs_hf_lookup']:>6.1f}x "
                if row['hf_lookup_tokens_per_s'] else f"{'-':>8} {'-':>7} ")
             + f"{str(row['lookahead_tokens_equal']):>5}" if k else ""))
  print("ours: median wall time of one jitted prefill + while_loop decode call, compile excluded "
        "(first call per shape untimed); hf: model.generate, greedy, one warm-up call untimed per "
        "thread count (nT = torch threads); "
        f"ratio = fastest hf time / ours; vs {default_threads}T = torch's default thread count / ours."
        + (f" K={k}: our speculative decoding (passes: forward passes incl. the prefill, for {n} tokens a row; "
           "ratio against the fastest plain hf; equal: its tokens equal our plain ones); hf K: transformers' "
           "prompt lookup at batch 1, at plain hf's fastest thread count." if k else ""))
  print(json.dumps({"model": str(args.checkpoint or "random"), "max_new_tokens": n, "dtype": args.dtype, "lookahead": k,
                    "params": loaded.cfg.num_params(), "rows": rows}))


if __name__ == "__main__":
  main()
