"""The `heal-jax` command line: one entry point, each subcommand a thin call into the library."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import traceback
from typing import Callable, Sequence

Handler = Callable[[argparse.Namespace, list[str]], int]


def _no_overrides(overrides: list[str]) -> None:
  if overrides:
    raise ValueError(f"this command reads no config; {overrides[0]} has nothing to override")


def _convert_hf_to_orbax(args: argparse.Namespace, overrides: list[str]) -> int:
  _no_overrides(overrides)
  from heal_jax.checkpoint import hf_convert  # pylint: disable=import-outside-toplevel
  summary = hf_convert.hf_to_orbax(args.src, args.dst, allow_pickle=args.allow_pickle, overwrite=args.overwrite)
  print(json.dumps(summary))
  return 0


def _convert_orbax_to_hf(args: argparse.Namespace, overrides: list[str]) -> int:
  _no_overrides(overrides)
  if not 0 < args.max_shard_gb < 1024:  # NaN fails too
    raise ValueError(f"--max-shard-gb must be in (0, 1024), got {args.max_shard_gb}")
  from heal_jax.checkpoint import hf_convert  # pylint: disable=import-outside-toplevel
  summary = hf_convert.orbax_to_hf(args.src, args.dst, max_shard_bytes=int(args.max_shard_gb * 1024**3),
                                   overwrite=args.overwrite, dtype=args.dtype)
  if not summary["tokenizer_files"]:
    print(f"heal-jax convert orbax-to-hf: warning: {args.src} has no tokenizer files, so {args.dst} has weights "
          "and configs only (AutoTokenizer cannot load it); copy the model's tokenizer files into it", file=sys.stderr)
  print(json.dumps(summary))
  return 0


def _init(args: argparse.Namespace, overrides: list[str]) -> int:
  from heal_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint import random_init  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(args.config, overrides)
  summary = random_init.write_random_checkpoint(
      config_lib.model_config(config), args.out, seed=config.seed, tokenizer_dir=args.tokenizer,
      overwrite=args.overwrite)
  print(json.dumps(summary))
  return 0


def _demo(args: argparse.Namespace, overrides: list[str]) -> int:
  from heal_jax import demo  # pylint: disable=import-outside-toplevel
  print(json.dumps(demo.run_demo(args.config, args.workdir, overrides)))
  return 0


def _data_synth(args: argparse.Namespace, overrides: list[str]) -> int:
  _no_overrides(overrides)
  from heal_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  if args.out.exists() and not args.out.is_dir():
    raise ValueError(f"--out {args.out}: a file, not a directory")
  present = [f"{tier}.jsonl" for tier in synthetic.DEFAULT_SIZES if (args.out / f"{tier}.jsonl").exists()]
  if present and not args.overwrite:
    raise ValueError(f"--out {args.out} already holds {', '.join(present)}; pass --overwrite to replace them")
  files = synthetic.generate_corpus(args.out, seed=args.seed)
  print(json.dumps({k: str(v) for k, v in files.items()}))
  return 0


def _data_train_tokenizer(args: argparse.Namespace, overrides: list[str]) -> int:
  _no_overrides(overrides)
  from heal_jax.data import tokenizer  # pylint: disable=import-outside-toplevel
  if args.out.exists() and not args.out.is_dir():
    raise ValueError(f"--out {args.out}: a file, not a directory")
  written = (tokenizer.MODEL_FILE, "tokenizer_config.json", "special_tokens_map.json")
  present = [name for name in written if (args.out / name).exists()]
  if present and not args.overwrite:  # checked before training, which can take hours on a real corpus
    raise ValueError(f"--out {args.out} already holds {', '.join(present)}; pass --overwrite to replace them")
  tok = tokenizer.train_tokenizer(args.inputs, args.out, vocab_size=args.vocab_size)
  print(json.dumps({"out": str(args.out), "vocab_size": tok.vocab_size}))
  return 0


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
  from heal_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  from heal_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  from heal_jax.train import loop  # pylint: disable=import-outside-toplevel
  from heal_jax.train.workdir_lock import WorkdirInUse  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(args.config, overrides)
  topology = distributed.initialize(config.distributed)
  try:
    same = config.to_dict()
    del same["distributed"]["process_id"]  # (the one setting that differs by design, where the config gives it)
    distributed.check_same_run({"config": same, "workdir": str(pathlib.Path(args.workdir).absolute()),
                                "num_processes": topology.num_processes})
    summary = loop.train(config, args.workdir)
  except loop.TrainingHalted as e:  # every process halts at the same step: a normal exit, together
    print(f"heal-jax: training halted: {e}", file=sys.stderr)
    return 3
  except (loop.Process0Failed, CheckpointError, config_lib.ConfigError, ValueError, WorkdirInUse, OSError) as e:
    return _exit_now(f"heal-jax: error: {e}", 2)
  except BaseException:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    traceback.print_exc()
    return _exit_now(f"heal-jax: error: process {jax.process_index()} stopped on the exception above (a collective "
                     "that fails with a closed connection means a peer process is gone: its log says why)", 1)
  if jax.process_index() == 0:
    print(json.dumps(summary))
  return 0


def _exit_now(message: str, code: int) -> int:
  """Prints `message`; returns `code`, or in a multi-process job exits at once: a normal exit waits
  in jax.distributed's shutdown barrier for peers that are still training (minutes, then an abort),
  while an exit now lets them notice this process is gone within the heartbeat timeout."""
  import jax  # pylint: disable=import-outside-toplevel
  print(message, file=sys.stderr, flush=True)
  if jax.process_count() > 1:
    sys.stdout.flush()
    os._exit(code)  # pylint: disable=protected-access
  return code


# Subcommands whose module parses its own arguments: {leading words: (module, words dropped, help)}; the
# module's `main` gets argv after the dropped words (eval's tasks keep their task word). They are also
# listed in the parser below, for --help only: main() hands them over before argparse sees them.
_PASSTHROUGH = {
    ("data", "check"): ("heal_jax.data.check", 2, "read a raw data file as preparation would; report bad records"),
    ("data", "prepare"): ("heal_jax.data.prepare", 2, "raw sources -> deduplicated, tokenized ArrayRecord"),
    ("eval", "notes"): ("heal_jax.eval.notes", 2, "ROUGE and the automatic HEAL rubric of generated notes"),
    ("eval", "pubmedqa"): ("heal_jax.eval.run", 1, "PubMedQA accuracy of a checkpoint (harness rules)"),
    ("eval", "medqa"): ("heal_jax.eval.run", 1, "MedQA-USMLE 4-option accuracy of a checkpoint"),
    ("eval", "perplexity"): ("heal_jax.eval.run", 1, "NLL per token of a checkpoint on a JSONL of texts"),
    ("plan",): ("heal_jax.train.plan", 1, "per-device memory and step time of a config, before renting GPUs"),
    ("generate",): ("heal_jax.infer.generate", 1, "write a SOAP note from a doctor-patient conversation"),
    ("report",): ("heal_jax.report", 1, "Markdown + PNG report of a training work directory"),
}


def _list_passthrough(subparsers: dict[tuple[str, ...], argparse._SubParsersAction]) -> None:
  """Adds each passthrough subcommand under its group's subparsers, with its help line."""
  for words, (_, _, text) in _PASSTHROUGH.items():
    subparsers[words[:-1]].add_parser(words[-1], help=text)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="heal-jax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)

  convert = sub.add_parser("convert", help="convert checkpoints between HF and heal-jax (orbax)")
  csub = convert.add_subparsers(dest="direction", required=True)
  h2o = csub.add_parser("hf-to-orbax", help="HF directory -> heal-jax checkpoint")
  h2o.add_argument("src", type=pathlib.Path)
  h2o.add_argument("dst", type=pathlib.Path)
  h2o.add_argument("--allow-pickle", action="store_true",
                   help="also read pytorch_model*.bin (unpickling executes code: trusted sources only)")
  h2o.add_argument("--overwrite", action="store_true")
  h2o.set_defaults(handler=_convert_hf_to_orbax)
  o2h = csub.add_parser("orbax-to-hf", help="heal-jax checkpoint or training work directory -> HF directory")
  o2h.add_argument("src", type=pathlib.Path)
  o2h.add_argument("dst", type=pathlib.Path)
  o2h.add_argument("--max-shard-gb", type=float, default=5.0,
                   help="largest safetensors shard in GiB (default 5, as transformers)")
  o2h.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="dtype of an export from a work directory (default bfloat16)")
  o2h.add_argument("--overwrite", action="store_true")
  o2h.set_defaults(handler=_convert_orbax_to_hf)

  init = sub.add_parser("init", help="write a randomly initialised checkpoint for a config")
  init.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py; then --config.x=y overrides")
  init.add_argument("--out", required=True, type=pathlib.Path)
  init.add_argument("--tokenizer", type=pathlib.Path, help="directory with tokenizer.model to bundle")
  init.add_argument("--overwrite", action="store_true")
  init.set_defaults(handler=_init)

  demo = sub.add_parser("demo", help="the embedded default end to end: corpus, tokenizer, tiny model, HF round trip")
  demo.add_argument("--config", default=str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py"),
                    help="default: the repository's configs/tiny.py, wherever the command runs")
  demo.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/demo"))
  demo.set_defaults(handler=_demo)

  train = sub.add_parser(
      "train", help="train (or resume) every phase of a config in a work directory",
      description="Trains every phase of CONFIG in WORKDIR, resuming from its newest checkpoint if it has one. "
                  "Exit status: 0 done, or preempted by SIGTERM after saving; 2 a bad config, input or checkpoint, "
                  "or WORKDIR in use by another trainer; 3 halted after train.max_bad_steps non-finite steps in a "
                  "row (the newest checkpoint is the last good state).")
  train.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py; then --config.x=y overrides")
  train.add_argument("--workdir", required=True, type=pathlib.Path)
  train.set_defaults(handler=_train)

  data = sub.add_parser("data", help="data tools")
  dsub = data.add_subparsers(dest="data_command", required=True)
  synth = dsub.add_parser("synth", help="write the bundled synthetic three-tier medical corpus")
  synth.add_argument("--out", required=True, type=pathlib.Path)
  synth.add_argument("--seed", type=int, default=0)
  synth.add_argument("--overwrite", action="store_true", help="replace corpus files already in --out")
  synth.set_defaults(handler=_data_synth)
  tok = dsub.add_parser("train-tokenizer", help="train a LLaMA-compatible sentencepiece model")
  tok.add_argument("inputs", nargs="+", type=pathlib.Path, help="text files (one sentence a line) or .jsonl files (their string values)")
  tok.add_argument("--out", required=True, type=pathlib.Path)
  tok.add_argument("--vocab-size", type=int, default=32000,
                   help="pieces asked for (default 32000, LLaMA's); a small corpus yields fewer, and the "
                        "printed vocab_size says how many")
  tok.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --out")
  tok.set_defaults(handler=_data_train_tokenizer)
  evaluate = sub.add_parser("eval", help="score checkpoints and notes")
  esub = evaluate.add_subparsers(dest="eval_task", required=True)
  _list_passthrough({(): sub, ("data",): dsub, ("eval",): esub})
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  from heal_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  from heal_jax.train.workdir_lock import WorkdirInUse  # pylint: disable=import-outside-toplevel
  argv = list(sys.argv[1:] if argv is None else argv)
  _quiet_closed_event_loop()
  try:
    overrides, rest = config_lib.split_overrides(argv)
    for n in (2, 1):
      if tuple(rest[:n]) in _PASSTHROUGH:  # its module parses its own arguments, overrides included
        import importlib  # pylint: disable=import-outside-toplevel
        module, drop, _ = _PASSTHROUGH[tuple(rest[:n])]
        return importlib.import_module(module).main(rest[drop:] + overrides)
    args = build_parser().parse_args(rest)
    return args.handler(args, overrides)
  except (CheckpointError, config_lib.ConfigError, ValueError, WorkdirInUse, OSError) as e:
    # OSError: an output that cannot be written (read-only, a file where a folder belongs), a full disk.
    print(f"heal-jax: error: {e}", file=sys.stderr)
    return 2


def _quiet_closed_event_loop() -> None:
  """After a failed checkpoint read, orbax's reads still in flight finish on tensorstore threads and
  call back into its closed asyncio loop; each prints an unraisable 'RuntimeError: Event loop is
  closed' traceback around the one-line error (some before the error reaches `main`). Drops exactly
  those, for the command's whole life; every other unraisable exception is printed as before."""
  previous = sys.unraisablehook
  if getattr(previous, "heal_jax_quiet", False):  # main() called again in one process
    return
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)
  hook.heal_jax_quiet = True
  sys.unraisablehook = hook


if __name__ == "__main__":
  sys.exit(main())
