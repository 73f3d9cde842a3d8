"""SOAP notes from doctor-patient conversations: `generate_notes` (library) and `heal-jax generate`.

  heal-jax generate --checkpoint DIR --conversation FILE [--max-new-tokens N] [--seed S]
                    [--temperature T] [--top-k K] [--top-p P] [--lookahead K] [--dtype bfloat16]
                    [--mesh tensor=8]
  heal-jax generate --checkpoint DIR --conversations C.jsonl --output P.jsonl [--batch-size B] [...]

The second form writes a note for every conversation of a JSONL file, resumably (`note_file`).

FILE is plain text (UTF-8, a leading byte-order mark allowed), one turn per line, as `[doctor] ...` /
`[patient] ...` (ACI-Bench and the synthetic corpus; other bracketed speakers such as `[patient_guest]`
are kept) or `Doctor: ...` / `Patient: ...`, which is rewritten to the bracketed form; in that form the
other speakers of MTS-Dialog (`Guest_family:`, `Guest_clinician:`, any `Guest_...:` or `..._guest:`)
are kept as speakers too. A line without a speaker continues the
turn above it; blank lines are dropped; `-` reads standard input. The model input is the instruction-tuning prompt,
`format_instruction(note_prompt(conversation))[0]`, encoded with BOS as in training. Default is greedy
decoding; `--temperature` > 0 samples (with `--top-k`, `--top-p`) reproducibly for a `--seed`.
`--lookahead K` (greedy only) checks K draft tokens per forward pass, copied from where the text so far
last had its newest tokens (`infer/ngram_draft.py`): the same note in fewer passes.
The note is printed to stdout; errors go to stderr with exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Container, Iterator, Sequence
import dataclasses
import pathlib
import signal
import sys
import threading
import typing
from typing import Any, Literal

import jax

from heal_jax.checkpoint.errors import CheckpointError
from heal_jax.checkpoint.restore import LoadedModel
from heal_jax.data import templates
from heal_jax.data.tokenizer import Tokenizer
from heal_jax.infer import decode, placement
from heal_jax.infer.sampling import Sampling
from heal_jax.model.config import ConfigError, ModelConfig

DEFAULT_MAX_NEW_TOKENS = 512
# A note ends at EOS; a model that runs on into a new prompt is cut there.
STOP_STRINGS = ("\n### Instruction:", "\n### Response:")


def note_prompt_text(conversation: str) -> str:
  """The generation input for one conversation (either accepted form): the training prompt
  (`templates.note_prompt`) of its normalised turns. Raises ValueError for text without turns."""
  return templates.format_instruction(templates.note_prompt(templates.normalize_conversation(conversation)))[0]


Ended = Literal["eos", "stop_string", "limit", "context"]
ENDINGS: tuple[str, ...] = typing.get_args(Ended)


@dataclasses.dataclass(frozen=True)
class Note:
  """One generated note.

  text: the decoded new tokens before EOS, cut at the first stop string, stripped.
  new_tokens: how many tokens were generated before EOS (all of them when there was none).
  ended: "eos" or "stop_string"; else the note was cut (it may be unfinished): "limit" by
    max_new_tokens, "context" where its prompt left fewer positions in the model's context.
  """
  text: str
  new_tokens: int
  ended: Ended


@dataclasses.dataclass(frozen=True)
class NotePlan:
  """How a list of conversations is generated.

  prompts: token ids (with BOS) of each conversation's note prompt.
  rooms: new tokens each note may have: max_new_tokens, or fewer where its prompt leaves less room in
    the model's context (max_position_embeddings). Each row stops at its own room.
  batches: indices into the list, longest prompts first (ties in list order), so that rows of
    similar length share a batch and little padding is computed.
  sizes: new-token slots of each batch's program: its largest room rounded up to a multiple of
    `ROOM_MULTIPLE` (at most max_new_tokens), so that batches share compiled programs.
  max_new_tokens: the requested limit.
  """
  prompts: list[list[int]]
  rooms: list[int]
  batches: list[list[int]]
  sizes: list[int]
  max_new_tokens: int


ROOM_MULTIPLE = 64


def plan_notes(loaded: LoadedModel, conversations: Sequence[str], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               batch_size: int = 8, labels: Sequence[str] | None = None,
               log: Callable[[str], None] | None = None) -> NotePlan:
  """Encodes the note prompts of `conversations` and batches them (`plan_prompts`).

  labels: names of the conversations for messages, one each (default "conversation i", from 1).
  Raises ValueError for a checkpoint without tokenizer, a text that is not a conversation, or as
  `plan_prompts` does.
  """
  if loaded.tokenizer_dir is None:
    raise ValueError(f"{loaded.source}: the checkpoint has no tokenizer (tokenizer/tokenizer.model)")
  labels = labels or [f"conversation {i + 1}" for i in range(len(conversations))]
  if len(labels) != len(conversations):
    raise ValueError(f"{len(labels)} labels for {len(conversations)} conversations")
  tokenizer = Tokenizer(loaded.tokenizer_dir)
  prompts = []
  for label, conversation in zip(labels, conversations):
    try:
      prompts.append(tokenizer.encode(note_prompt_text(conversation), add_bos=True))
    except ValueError as e:
      raise ValueError(f"{label}: {e}") from None
  return plan_prompts(prompts, loaded.cfg.max_position_embeddings, max_new_tokens=max_new_tokens,
                      batch_size=batch_size, labels=labels, log=log)


def plan_prompts(prompts: Sequence[Sequence[int]], context: int, *, max_new_tokens: int, batch_size: int,
                 labels: Sequence[str], log: Callable[[str], None] | None = None) -> NotePlan:
  """Batches token-id prompts (see NotePlan) for a model of `context` positions.

  log (default: stderr) gets a warning when some notes have room for fewer than `max_new_tokens`.
  Raises ValueError for max_new_tokens or batch_size < 1 and for prompts that fill the whole context
  (every such prompt is named by its label).
  """
  log = log or _stderr
  if max_new_tokens < 1 or batch_size < 1:
    raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
  prompts = [list(p) for p in prompts]
  full = [f"{labels[i]} ({len(p)} tokens)" for i, p in enumerate(prompts) if len(p) >= context]
  if full:
    raise ValueError(f"{len(full)} prompt(s) fill the model's context of {context} tokens, leaving no room for a "
                     f"note (shorten the conversations): {', '.join(full)}")
  rooms = [min(max_new_tokens, context - len(p)) for p in prompts]
  order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
  batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
  sizes = [min(max_new_tokens, -(-max(rooms[i] for i in batch) // ROOM_MULTIPLE) * ROOM_MULTIPLE)
           for batch in batches]
  short = [room for room in rooms if room < max_new_tokens]
  if short:
    log(f"warning: {len(short)} of {len(prompts)} note(s) have room for fewer than {max_new_tokens} new tokens in "
        f"the model's context of {context} (as few as {min(short)}: the longest prompt has "
        f"{len(prompts[order[0]])} tokens); each stops there")
  return NotePlan(prompts, rooms, batches, sizes, max_new_tokens)


def generate_batches(cfg: ModelConfig, params: Any, tokenizer: Tokenizer, plan: NotePlan, *,
                     sampling: Sampling = Sampling(), seed: int = 0, stop_strings: Sequence[str] = STOP_STRINGS,
                     skip: Container[int] = (), width: int | None = None,
                     programs: dict[Any, decode.GenerateFn] | None = None,
                     batch_sharding: jax.sharding.NamedSharding | None = None, lookahead: int = 0
                     ) -> Iterator[tuple[int, list[tuple[int, Note]]]]:
  """Yields (batch number, [(conversation index, Note), ...]) for each batch of `plan` not in `skip`.

  params: the `Llama(cfg)` tree, host arrays (placed on the default device) or device arrays (used
  where they are: sharded training parameters under the mesh and its logical axis rules).
  width: rows of every program (default: the largest batch); a batch short of it is filled up with
  copies of its first prompt, so that one program serves all batches (under a mesh, a multiple of
  the batch devices). Batch b samples with seed (seed + b) mod 2**32, so a batch's notes depend only
  on the plan, the seed and the model, not on which batches ran before.
  programs: compiled decode programs to reuse and add to (a caller that generates again and again,
  such as the trainer's note eval, keeps them; one tokenizer per dict); None: made for this call.
  batch_sharding: as in `decode.run` (the trainer's note eval passes its mesh's, so that it runs in
    multi-process runs too).
  lookahead: draft tokens per forward pass (`decode.make_generate_fn`; greedy sampling only): the same
    notes in fewer passes where a note repeats its conversation or itself.
  """
  params = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(x), params)
  context = cfg.max_position_embeddings
  width = width or max(len(batch) for batch in plan.batches)
  programs = {} if programs is None else programs
  tail = max((len(s) for s in stop_strings), default=1) - 1  # characters of a prompt a stop string may begin in
  for b, (batch, size) in enumerate(zip(plan.batches, plan.sizes)):
    if b in skip:
      continue
    key = (cfg, size, sampling, lookahead)
    if key not in programs:
      programs[key] = decode.make_generate_fn(cfg, size, sampling, tokenizer.eos_id, vocab_limit=tokenizer.vocab_size,
                                              max_positions=context, lookahead=lookahead)
    rows = [plan.prompts[i] for i in batch]
    rows += [rows[0]] * (width - len(rows))
    new_tokens = decode.run(programs[key], params, rows, seed=(seed + b) % 2**32,
                            eos_id=tokenizer.eos_id, batch_sharding=batch_sharding)
    notes = []
    for i, tokens in zip(batch, new_tokens):  # each cut at EOS and at its room (decode's max_positions)
      text = tokenizer.decode(tokens)
      # A token is at least one character, or a byte of one: 4 tokens a character cover the tail.
      prompt_end = tokenizer.decode(plan.prompts[i][-4 * tail:])[-tail:] if tail > 0 else ""
      stopped = decode.truncate_at_stop(text, stop_strings, prompt_end)
      if stopped != text:
        ended = "stop_string"
      elif len(tokens) < plan.rooms[i]:
        ended = "eos"
      else:
        ended = "limit" if plan.rooms[i] == plan.max_new_tokens else "context"
      notes.append((i, Note(stopped.strip(), len(tokens), ended)))
    yield b, notes


def warn_unfinished(notes: Sequence[Note], log: Callable[[str], None] | None = None) -> None:
  """Logs how many notes are empty, and how many were cut by the token limit or by the model's context
  (none: nothing)."""
  log = log or _stderr
  by_limit = sum(note.ended == "limit" for note in notes)
  by_context = sum(note.ended == "context" for note in notes)
  empty = sum(not note.text for note in notes)
  if empty:
    log(f"warning: {empty} of {len(notes)} note(s) are empty: the model wrote only whitespace before it stopped "
        "or was cut (a model too small or too briefly tuned for these conversations?)")
  if by_limit:
    log(f"warning: {by_limit} of {len(notes)} note(s) reached the limit of new tokens without ending (no EOS or "
        "stop string): they may be cut short; raise --max-new-tokens")
  if by_context:
    log(f"warning: {by_context} of {len(notes)} note(s) filled the model's context without ending: they may be cut "
        "short; shorten their conversations or use a model with a longer context")


def generate_notes(loaded: LoadedModel, conversations: Sequence[str], *,
                   max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, sampling: Sampling = Sampling(),
                   seed: int = 0, batch_size: int = 8,
                   stop_strings: Sequence[str] = STOP_STRINGS,
                   log: Callable[[str], None] | None = None, width: int | None = None,
                   lookahead: int = 0) -> list[str]:
  """One generated note (`Note.text`) per conversation, in order: `plan_notes` then `generate_batches`
  (`width`: its rows per program; `lookahead`: its draft tokens per pass).

  Notes stay within the model's context (`max_position_embeddings`); `log` (default: stderr) names
  the notes that have less room and those that were cut. Raises ValueError as `plan_notes` does.
  """
  if not conversations:
    return []
  plan = plan_notes(loaded, conversations, max_new_tokens=max_new_tokens,
                    batch_size=min(batch_size, len(conversations)), log=log)
  notes: dict[int, Note] = {}
  for _, batch in generate_batches(loaded.cfg, loaded.params, Tokenizer(loaded.tokenizer_dir), plan,
                                   sampling=sampling, seed=seed, stop_strings=stop_strings, width=width,
                                   lookahead=lookahead):
    notes.update(batch)
  warn_unfinished(list(notes.values()), log)
  return [notes[i].text for i in range(len(conversations))]


def _stderr(message: str) -> None:
  print(message, file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="heal-jax generate",
                                   description="Write the SOAP note of a doctor-patient conversation, or of each "
                                               "conversation of a JSONL file.")
  parser.add_argument("--checkpoint", required=True, type=pathlib.Path,
                      help="converted checkpoint or training work directory")
  given = parser.add_mutually_exclusive_group(required=True)
  given.add_argument("--conversation", help="plain-text conversation file, or -; the note goes to stdout")
  given.add_argument("--conversations", type=pathlib.Path,
                     help='JSONL of {"id", "text"} conversations; the notes go to --output')
  parser.add_argument("--output", type=pathlib.Path,
                      help="with --conversations: JSONL of notes, the predictions of `eval notes`")
  parser.add_argument("--batch-size", type=int, help="with --conversations: notes per batch (default 8)")
  parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                      help=f"at most this many tokens a note (default {DEFAULT_MAX_NEW_TOKENS})")
  parser.add_argument("--seed", type=int, default=0, help="sampling seed, 0 <= S < 2**32")
  parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) = greedy")
  parser.add_argument("--top-k", type=int, default=0, help="0 = no limit")
  parser.add_argument("--top-p", type=float, default=1.0, help="1 = no limit")
  parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                      help="cast parameters and compute to this dtype (a work directory keeps float32 master "
                           "weights: bfloat16 halves the memory); default: as stored")
  parser.add_argument("--lookahead", type=int, default=0,
                      help="greedy only: check this many draft tokens, copied from the conversation or the note "
                           "so far, per forward pass (speculative prompt-lookup decoding: the same note in fewer "
                           "passes; see BENCHMARKS.md for when it pays); default 0")
  parser.add_argument("--mesh", help="split the model over this process's devices, e.g. tensor=8 or "
                                     "fsdp=2,tensor=4 (axes data, fsdp, tensor; see infer/placement.py); a batch "
                                     "short of a multiple of data x fsdp rows is filled with copies")
  return parser


def _load(args: argparse.Namespace) -> LoadedModel:
  return placement.load(args.checkpoint, args.mesh, args.dtype,
                        **({"compute_dtype": args.dtype} if args.dtype else {}))


def _error(message: str) -> int:
  print(f"heal-jax generate: error: {message}", file=sys.stderr)
  return 2


def _notes_of_file(args: argparse.Namespace, sampling: Sampling) -> int:
  """`--conversations C --output P`: see `note_file`. SIGTERM and Ctrl-C stop the run at once (exit 143
  / 130); the same command continues from the batches finished before (the one being made is made
  again). The partial file is locked before the model loads: a second run on P stops at once."""
  from heal_jax.eval import output  # pylint: disable=import-outside-toplevel
  from heal_jax.infer import note_file  # pylint: disable=import-outside-toplevel
  partial = note_file.partial_path(args.output)
  try:  # everything that needs no model is checked before the model is loaded
    output.check_writable(args.output, [args.conversations])
    output.check_writable(partial, [args.conversations])
    note_file.check_output(args.output)
    rows = note_file.read_conversations(args.conversations)
    settings = note_file.run_settings(args.conversations, rows, max_new_tokens=args.max_new_tokens,
                                      sampling=sampling, seed=args.seed, batch_size=args.batch_size,
                                      dtype=args.dtype)
    note_file.read_partial(partial, settings, rows)
  except (ValueError, OSError) as e:  # an InputError is a ValueError
    return _error(str(e))
  stop = threading.Event()

  def on_sigterm(signum, frame):
    del signum, frame
    stop.set()  # seen after the batch being made, should the exception below be swallowed (a gc callback)
    raise note_file.Interrupted("SIGTERM")

  try:
    previous, installed = signal.signal(signal.SIGTERM, on_sigterm), True
  except ValueError:  # not the main thread: SIGTERM keeps its handler
    previous, installed = None, False
  try:
    with note_file.open_partial(args.output) as partial_file:
      loaded = _load(args)
      print(f"heal-jax generate: model {loaded.source}; {len(rows)} conversations from {args.conversations}",
            file=sys.stderr)
      loaded = dataclasses.replace(loaded, weights_digest=note_file.weights_digest(loaded))  # stored checksums, or sums
      with placement.placed(loaded, args.mesh) as loaded:
        counts = note_file.write_notes(
            loaded, rows, args.output, conversations=args.conversations, max_new_tokens=args.max_new_tokens,
            sampling=sampling, seed=args.seed, batch_size=args.batch_size, dtype=args.dtype, log=_stderr,
            stop=stop, partial_file=partial_file, lookahead=args.lookahead,
            width=placement.batch_rows(min(args.batch_size, len(rows)), args.mesh))
  except (CheckpointError, ConfigError, ValueError, OSError) as e:
    return _error(str(e))
  except (KeyboardInterrupt, note_file.Interrupted) as e:
    kind = "SIGTERM" if isinstance(e, note_file.Interrupted) else "interrupted"
    print(f"heal-jax generate: {kind}: the finished batches are kept in {partial} (if any); the same command "
          "continues from there", file=sys.stderr)
    return 143 if kind == "SIGTERM" else 130
  finally:
    if installed:  # (None: a handler not set from Python, which cannot be put back; the default then)
      signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
  print(f"heal-jax generate: wrote {counts.written} notes to {args.output} ({counts.read} conversations read; "
        f"{counts.kept} kept from an earlier run, {counts.generated} generated)", file=sys.stderr)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """The `heal-jax generate` command; returns the exit status."""
  try:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
    return int(e.code or 0)
  if args.max_new_tokens < 1:
    return _error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
  if args.lookahead < 0:
    return _error(f"--lookahead must be >= 0, got {args.lookahead}")
  if args.lookahead and args.temperature != 0:
    return _error("--lookahead keeps only greedy tokens: it needs --temperature 0")
  if not 0 <= args.seed < 2**32:  # jax.random.PRNGKey keeps 32 bits: 2**32 would draw as 0 does
    return _error(f"--seed must be in [0, 2**32), got {args.seed}")
  if args.batch_size is not None and args.conversation is not None:
    return _error("--batch-size goes with --conversations: --conversation writes one note")
  args.batch_size = 8 if args.batch_size is None else args.batch_size
  if args.batch_size < 1:
    return _error(f"--batch-size must be >= 1, got {args.batch_size}")
  if (args.output is None) != (args.conversation is not None):
    return _error("--output goes with --conversations (and only with it): --conversation prints the note")
  try:
    placement.batch_rows(1, args.mesh)  # a mesh that does not fit the devices: before the model loads
  except ValueError as e:
    return _error(str(e))
  try:
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
  except ValueError as e:
    return _error(f"--{str(e).replace('_', '-')}")
  if args.conversations is not None:
    return _notes_of_file(args, sampling)
  try:
    text = (sys.stdin.read() if args.conversation == "-" else
            pathlib.Path(args.conversation).read_text(encoding="utf-8"))
    templates.normalize_conversation(text)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    return _error(f"{args.conversation}: {e}")
  try:
    loaded = _load(args)
    print(f"heal-jax generate: model {loaded.source}", file=sys.stderr)
    with placement.placed(loaded, args.mesh) as loaded:
      note = generate_notes(loaded, [text], max_new_tokens=args.max_new_tokens, sampling=sampling,
                            seed=args.seed, width=placement.batch_rows(1, args.mesh), lookahead=args.lookahead)[0]
  except (CheckpointError, ConfigError, ValueError, OSError) as e:
    return _error(str(e))
  print(note)
  return 0


if __name__ == "__main__":
  sys.exit(main())
