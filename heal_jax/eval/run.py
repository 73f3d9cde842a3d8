"""`heal-jax eval pubmedqa|medqa|perplexity`: score a checkpoint, print one JSON object.

  heal-jax eval pubmedqa --checkpoint DIR --data ../shared/data/pubmedqa [--limit N | --sample N] [--output F.jsonl]
  heal-jax eval medqa --checkpoint DIR --data .../US_4_options_phrases_no_exclude_test.jsonl [...]
  heal-jax eval perplexity --checkpoint DIR --data texts.jsonl

For pubmedqa, --data is the directory holding ori_pqal.json and test_ground_truth.json. Multiple-choice
tasks print {"task", "n", "acc", "acc_norm"} and write one row per question to --output in data order:
{"id", "choices", "loglikelihoods", "pred", "gold"} plus "pred_norm" and "is_greedy"; perplexity prints
{"nll_per_token", "tokens", "texts"} and writes one row per text: {"id" (the text's own, if it has one),
"line" (of the file), "index", "tokens", "nll", "nll_per_token"}. --output is checked before the model is loaded (writable, not an input, and if it exists
a rows file of the same command: never a manifest, data file or metrics.jsonl). --limit N scores
the first N questions (texts), as lm-evaluation-harness's --limit does; --sample N a seeded random N
questions, in file order (PubMedQA's test file lists its 276 "yes" questions first, so its first N <= 276
hold one class: a note on stderr says so). Errors print a message on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

_TASKS = ("pubmedqa", "medqa", "perplexity")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="heal-jax eval", description=__doc__,
                              usage=f"%(prog)s {{{','.join(_TASKS)}}} --checkpoint DIR --data PATH [options]",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("task", choices=_TASKS)
  p.add_argument("--checkpoint", required=True, type=pathlib.Path,
                 help="converted checkpoint or training work directory (newest step)")
  p.add_argument("--data", required=True, type=pathlib.Path)
  p.add_argument("--limit", type=int, help="score the first N questions (perplexity: texts), as the harness does")
  p.add_argument("--sample", type=int, help="score a seeded random N questions, in file order (PubMedQA's test file "
                 "lists all 'yes' first); the trainer's eval.task_limit takes the same N")
  p.add_argument("--output", type=pathlib.Path, help="JSONL file of per-question (perplexity: per-text) rows")
  p.add_argument("--num-fewshot", type=int, default=0)
  p.add_argument("--fewshot-data", type=pathlib.Path,
                 help="medqa only: jsonl of questions to draw shots from (default: the test file, minus the question)")
  p.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--max-length", type=int, help="context length; default the model's max_position_embeddings")
  p.add_argument("--bos", choices=("auto", "on", "off"), default="auto",
                 help="BOS before the context: auto follows the tokenizer config (add_bos_token)")
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                 help="cast parameters and compute to this dtype; default: as stored")
  p.add_argument("--mesh", help="split the model over this process's devices, e.g. tensor=8 or fsdp=2,tensor=4 "
                                "(axes data, fsdp, tensor; --batch-size rounds up to a multiple of data x fsdp)")
  return p


def _run(args: argparse.Namespace) -> dict:
  # Imported here so that `--help` and argument errors stay fast.
  from heal_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  from heal_jax.eval import loglik, output, perplexity, tasks  # pylint: disable=import-outside-toplevel
  from heal_jax.infer import placement  # pylint: disable=import-outside-toplevel

  for name in ("limit", "sample"):
    if getattr(args, name) is not None and getattr(args, name) < 1:
      raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.limit is not None and args.sample is not None:
    raise ValueError("--limit (the first N) and --sample (a random N) are alternatives: give one")
  if args.task == "perplexity" and args.sample is not None:
    raise ValueError("--sample applies to pubmedqa and medqa; perplexity takes --limit N (the first N texts)")
  if args.batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.max_length is not None and args.max_length < 1:
    raise ValueError(f"--max-length must be >= 1, got {args.max_length}")
  if args.task == "perplexity" and (args.num_fewshot or args.fewshot_data):
    raise ValueError("--num-fewshot and --fewshot-data apply to pubmedqa and medqa, not perplexity")
  if args.fewshot_data and args.num_fewshot < 1:
    raise ValueError("--fewshot-data is a pool of shots: give --num-fewshot N (N >= 1) too")
  if args.seed < 0:
    raise ValueError(f"--seed must be >= 0, got {args.seed}")
  batch_size = placement.batch_rows(args.batch_size, args.mesh)  # (a mesh that does not fit: before loading)
  if args.output:  # before the model is loaded: a bad path must not cost the scoring
    row_keys = perplexity.ROW_KEYS if args.task == "perplexity" else loglik.ROW_KEYS
    output.check_writable(args.output, [args.data, args.fewshot_data], row_keys)
  if args.task == "perplexity":
    texts = perplexity.read_text_rows(args.data)
    _note_limit(args, len(texts), "texts")
    texts = texts[:args.limit]
  else:
    examples, pool = tasks.load_task(args.task, args.data, args.fewshot_data)
    _note_limit(args, len(examples), "questions")
    examples = tasks.subset(examples, args.sample) if args.sample else examples[:args.limit]
    golds = {e.choices[e.gold] for e in examples}
    if args.limit is not None and len(examples) > 1 and len(golds) == 1:
      print(f"heal-jax eval {args.task}: note: the first {len(examples)} questions all have the answer "
            f"{golds.pop()!r}, so accuracy on them says little; --sample N scores a seeded random N",
            file=sys.stderr)
    contexts = tasks.fewshot_contexts(examples, pool, args.num_fewshot, args.seed)
  overrides = {"remat_policy": "none"}
  if args.dtype:
    overrides["compute_dtype"] = args.dtype
  model = placement.load(args.checkpoint, args.mesh, args.dtype, **overrides)  # onto the mesh's devices
  print(f"heal-jax eval {args.task}: scoring {model.source}", file=sys.stderr)  # which step of a work directory
  if model.tokenizer_dir is None:
    raise ValueError(f"{args.checkpoint}: no tokenizer/ directory with tokenizer.model")
  tokenizer = Tokenizer(model.tokenizer_dir)
  if args.max_length is not None and args.max_length > model.cfg.max_position_embeddings:
    print(f"heal-jax eval {args.task}: warning: --max-length {args.max_length} is beyond the model's "
          f"max_position_embeddings {model.cfg.max_position_embeddings}: positions it was not trained on",
          file=sys.stderr)
  with placement.placed(model, args.mesh) as model:
    if args.task == "perplexity":
      result = perplexity.perplexity(model.cfg, model.params, tokenizer, [t.text for t in texts], batch_size,
                                     max_length=args.max_length)
      result["rows"] = perplexity.source_fields(result["rows"], texts)
      summary_keys = ("nll_per_token", "tokens", "texts")
    else:
      add_bos = model.add_bos if args.bos == "auto" else args.bos == "on"
      result = loglik.evaluate(args.task, model.cfg, model.params, tokenizer, examples, batch_size,
                               contexts=contexts, add_bos=add_bos, max_length=args.max_length)
      summary_keys = ("task", "n", "acc", "acc_norm")
      if result["truncated"]:
        print(f"heal-jax eval {args.task}: note: {result['truncated']} of {result['n']} questions' prompts were longer "
              f"than {loglik.resolve_max_length(model.cfg, args.max_length)} tokens and were left-truncated to fit "
              "(as lm-evaluation-harness does)", file=sys.stderr)
  if args.output:
    output.write_rows(args.output, result["rows"])
  return {k: result[k] for k in summary_keys}


def _note_limit(args: argparse.Namespace, count: int, what: str) -> None:
  """A note on stderr when --limit or --sample asks for more than the data holds (all of it is scored)."""
  asked = args.limit or args.sample
  if asked is not None and asked > count:
    flag = "--limit" if args.limit else "--sample"
    print(f"heal-jax eval {args.task}: note: {flag} {asked} is more than the {count} {what} in {args.data}; "
          f"scoring all {count}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point; argv starts with the task word. Returns the exit status."""
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
    return int(e.code or 0)
  try:
    summary = _run(args)
  except (CheckpointError, ValueError, OSError) as e:
    print(f"heal-jax eval {args.task}: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
