"""SOAP notes from doctor-patient conversations: `generate_notes` (library) and `heal-jax generate`.

  heal-jax generate --checkpoint DIR --conversation FILE [--max-new-tokens N] [--seed S]
                    [--temperature T] [--top-k K] [--top-p P]

FILE is plain text (UTF-8, a leading byte-order mark allowed), one turn per line, as `[doctor] ...` /
`[patient] ...` (ACI-Bench and the synthetic corpus; other bracketed speakers such as `[patient_guest]`
are kept) or `Doctor: ...` / `Patient: ...`, which is rewritten to the bracketed form; in that form the
other speakers of MTS-Dialog (`Guest_family:`, `Guest_clinician:`, any `Guest_...:` or `..._guest:`)
are kept as speakers too. A line without a speaker continues the
turn above it; blank lines are dropped; `-` reads standard input. The model input is the instruction-tuning prompt,
`format_instruction(note_prompt(conversation))[0]`, encoded with BOS as in training. Default is greedy
decoding; `--temperature` > 0 samples (with `--top-k`, `--top-p`) reproducibly for a `--seed`.
The note is printed to stdout; errors go to stderr with exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import pathlib
import sys

import jax

from heal_jax.checkpoint.errors import CheckpointError
from heal_jax.checkpoint.restore import LoadedModel, load_model
from heal_jax.data import templates
from heal_jax.data.tokenizer import Tokenizer
from heal_jax.infer import decode
from heal_jax.infer.sampling import Sampling
from heal_jax.model.config import ConfigError

DEFAULT_MAX_NEW_TOKENS = 512
# A note ends at EOS; a model that runs on into a new prompt is cut there.
STOP_STRINGS = ("\n### Instruction:", "\n### Response:")
def note_prompt_text(conversation: str) -> str:
  """The generation input for one conversation (either accepted form): the training prompt
  (`templates.note_prompt`) of its normalised turns. Raises ValueError for text without turns."""
  return templates.format_instruction(templates.note_prompt(templates.normalize_conversation(conversation)))[0]


def generate_notes(loaded: LoadedModel, conversations: Sequence[str], *,
                   max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, sampling: Sampling = Sampling(),
                   seed: int = 0, batch_size: int = 8,
                   stop_strings: Sequence[str] = STOP_STRINGS,
                   log: Callable[[str], None] | None = None) -> list[str]:
  """One generated note (stripped text) per conversation, in order.

  Conversations go through the model `batch_size` at a time (the last batch is filled up with
  copies so that one program serves all batches). Batch i draws with seed `seed + i`. Notes stay
  within the model's context (`max_position_embeddings`): when the longest prompt plus
  `max_new_tokens` would pass it, fewer new tokens are made and `log` (default: stderr) says so; it
  also names the notes that reached the limit without ending (no EOS, no stop string).
  Raises ValueError for a conversation that is not a conversation, a prompt that fills the whole
  context, or a checkpoint without tokenizer.
  """
  log = log or (lambda message: print(message, file=sys.stderr))
  if loaded.tokenizer_dir is None:
    raise ValueError(f"{loaded.source}: the checkpoint has no tokenizer (tokenizer/tokenizer.model)")
  if not conversations:
    return []
  tokenizer = Tokenizer(loaded.tokenizer_dir)
  prompts = [tokenizer.encode(note_prompt_text(c), add_bos=True) for c in conversations]
  context, longest = loaded.cfg.max_position_embeddings, max(len(p) for p in prompts)
  if longest >= context:
    raise ValueError(f"the prompt has {longest} tokens and the model's context is {context}: no room for a note"
                     " (shorten the conversation)")
  if longest + max_new_tokens > context:
    log(f"warning: at most {context - longest} new tokens instead of {max_new_tokens}: the longest prompt has"
        f" {longest} tokens and the model's context is {context}")
    max_new_tokens = context - longest
  params = jax.device_put(loaded.params)
  fn = decode.make_generate_fn(loaded.cfg, max_new_tokens, sampling, tokenizer.eos_id,
                               vocab_limit=tokenizer.vocab_size)
  batch_size = min(batch_size, len(prompts))
  notes, unfinished = [], 0
  for i, start in enumerate(range(0, len(prompts), batch_size)):
    batch = prompts[start:start + batch_size]
    filled = batch + [batch[0]] * (batch_size - len(batch))
    new_tokens = decode.run(fn, params, filled, seed=seed + i, eos_id=tokenizer.eos_id)
    for tokens in new_tokens[:len(batch)]:
      text = tokenizer.decode(tokens)
      stopped = decode.truncate_at_stop(text, stop_strings)
      unfinished += len(tokens) == max_new_tokens and stopped == text  # neither EOS nor a stop string
      notes.append(stopped.strip())
  if unfinished:
    log(f"warning: {unfinished} of {len(notes)} note(s) reached the limit of {max_new_tokens} new tokens without "
        "ending (no EOS or stop string): they may be cut short; raise --max-new-tokens")
  return notes


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="heal-jax generate",
                                   description="Write the SOAP note of a doctor-patient conversation.")
  parser.add_argument("--checkpoint", required=True, type=pathlib.Path,
                      help="converted checkpoint or training work directory")
  parser.add_argument("--conversation", required=True, help="plain-text conversation file, or -")
  parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
  parser.add_argument("--seed", type=int, default=0, help="sampling seed, 0 <= S < 2**32")
  parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) = greedy")
  parser.add_argument("--top-k", type=int, default=0, help="0 = no limit")
  parser.add_argument("--top-p", type=float, default=1.0, help="1 = no limit")
  return parser


def _error(message: str) -> int:
  print(f"heal-jax generate: error: {message}", file=sys.stderr)
  return 2


def main(argv: Sequence[str] | None = None) -> int:
  """The `heal-jax generate` command; returns the exit status."""
  try:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
    return int(e.code or 0)
  if args.max_new_tokens < 1:
    return _error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
  if not 0 <= args.seed < 2**32:  # jax.random.PRNGKey keeps 32 bits: 2**32 would draw as 0 does
    return _error(f"--seed must be in [0, 2**32), got {args.seed}")
  try:
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
  except ValueError as e:
    return _error(f"--{str(e).replace('_', '-')}")
  try:
    text = (sys.stdin.read() if args.conversation == "-" else
            pathlib.Path(args.conversation).read_text(encoding="utf-8"))
    templates.normalize_conversation(text)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    return _error(f"{args.conversation}: {e}")
  try:
    loaded = load_model(args.checkpoint)
    print(f"heal-jax generate: model {loaded.source}", file=sys.stderr)
    note = generate_notes(loaded, [text], max_new_tokens=args.max_new_tokens, sampling=sampling,
                          seed=args.seed)[0]
  except (CheckpointError, ConfigError, ValueError, OSError) as e:
    return _error(str(e))
  print(note)
  return 0


if __name__ == "__main__":
  sys.exit(main())
