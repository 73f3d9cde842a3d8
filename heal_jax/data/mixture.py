"""A run's data: the bundled corpus bootstrap, the tokenizer, and one Grain source per config source.

Sources are read either online (raw files tokenized as the pipeline reads them; records normalised
and deduplicated at start exactly as `heal-jax data prepare` does, `sources.kept_records`) or from
`heal-jax data prepare` output (`config.data.prepared_dir`). The last `eval.holdout_examples` of
every source (before shuffling) are held out of training for the periodic held-out loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any, Callable

from heal_jax.checkpoint import params_store
from heal_jax.checkpoint.restore import WORKDIR_TOKENIZER
from heal_jax.data import dedup, pipeline, sources as sources_lib, synthetic, tokenizer as tokenizer_lib


@dataclasses.dataclass
class RunData:
  """train/heldout: source name -> MapDataset of {"tokens", "loss_mask"}; counts: per-source reading counts
  (plus "first_skipped": places and reasons of up to 3 skipped records); kinds: source name -> record
  kind (document, conversation or instruction); records: see `pipeline.PipelineSpec.records`."""
  train: dict[str, pipeline.Source]
  heldout: dict[str, pipeline.Source]
  tokenizer: tokenizer_lib.Tokenizer
  counts: dict[str, dict[str, Any]]
  kinds: dict[str, str]
  records: str  # normalisation and dedup settings the examples were made with (JSON)
  online_seconds: float | None  # time taken to read and deduplicate raw files; None for prepared data


def resolve(path: str, workdir: pathlib.Path, key: str) -> pathlib.Path:
  """The path of config key `key`, "{workdir}" replaced by the run's work directory."""
  return pathlib.Path(sources_lib.with_workdir(path, workdir, key))


def check_before_writing(config: Any, workdir: pathlib.Path) -> None:
  """What `load` would refuse, checked before a run locks or writes anything, as far as it can be:
  config.data.prepared_dir's report, format version and every source's shard files; and, unless the
  bootstrap is still to write them, the tokenizer (present, no larger than the model's vocabulary, the
  one the prepared data was made with) and every source's raw files (when they are read online; with
  the bootstrap, those of the sources it does not write).
  DataError or ValueError naming the key, as `load` raises them."""
  from heal_jax.data import prepare  # pylint: disable=import-outside-toplevel
  prepared = resolve(config.data.prepared_dir, workdir, "data.prepared_dir") if config.data.prepared_dir else None
  if prepared is not None:
    prepare.check_prepared_dir(prepared, sorted(config.data.sources))
  if config.data.bootstrap:
    tok_dir = sources_lib.tokenizer_dir(config, workdir)
    if not tok_dir.exists() and not tok_dir.resolve().is_relative_to(workdir.resolve()):
      # (a mistyped path of an existing tokenizer would get a new one trained there, outside the run)
      raise ValueError(f"config.data.tokenizer: {tok_dir} does not exist; data.bootstrap trains a tokenizer in "
                       f"a new directory only inside the work directory (the default, {{workdir}}/tokenizer: "
                       f"{workdir / 'tokenizer'}), or in an existing empty one: fix the path, or create the "
                       "directory first")
    if not (tok_dir / tokenizer_lib.MODEL_FILE).is_file():
      with _bootstrap_vocab_size(config):
        tokenizer_lib.require_min_vocab(config.model.vocab_size)
    theirs = _not_bootstrapped(config, workdir)
    if prepared is None and theirs:  # the bootstrap will not write their files: they must be there already
      sources_lib.from_config(theirs, workdir=str(workdir))
    return
  tok_dir, tok = _tokenizer(config, workdir)
  srcs = sources_lib.from_config(config.data.sources, workdir=str(workdir), require_files=prepared is None)
  if prepared is not None:
    prepare.check_prepared(prepared, tok_dir, tok.vocab_size, {s.name: _present_files(s) for s in srcs})


def _tokenizer(config: Any, workdir: pathlib.Path) -> tuple[pathlib.Path, tokenizer_lib.Tokenizer]:
  """config.data.tokenizer's directory and tokenizer; ValueError if absent or larger than the model's vocabulary."""
  tok_dir = sources_lib.tokenizer_dir(config, workdir)
  if not (tok_dir / tokenizer_lib.MODEL_FILE).is_file():
    raise ValueError(f"config.data.tokenizer: no {tokenizer_lib.MODEL_FILE} in {tok_dir}")
  tok = tokenizer_lib.Tokenizer(tok_dir)
  if tok.vocab_size > config.model.vocab_size:
    raise ValueError(f"tokenizer {tok_dir} has {tok.vocab_size} pieces, more than config.model.vocab_size="
                     f"{config.model.vocab_size}")
  return tok_dir, tok


def bootstrap(config: Any, workdir: pathlib.Path, log: Callable[[str], None]) -> None:
  """For data.bootstrap == "synthetic": writes the bundled corpus and trains a tokenizer if absent."""
  if not config.data.bootstrap:
    return
  sources_lib.check_config(config, workdir)
  corpus = workdir / "corpus"
  # Written whole or not at all (a run killed while writing leaves no short file under these names).
  if not (corpus / "instructions.jsonl").is_file():
    with params_store.atomic_output_dir(corpus, overwrite=True) as staging:
      files = synthetic.generate_corpus(staging, seed=config.seed)
    log(f"wrote the bundled synthetic corpus: {', '.join(str(p.name) for p in files.values())}")
  tok_dir = sources_lib.tokenizer_dir(config, workdir)
  if not (tok_dir / tokenizer_lib.MODEL_FILE).is_file():
    with params_store.atomic_output_dir(tok_dir, overwrite=True) as staging:
      with _bootstrap_vocab_size(config):
        pieces = tokenizer_lib.train_tokenizer([corpus / f"{t}.jsonl" for t in ("general", "medical", "clinical")],
                                               staging, vocab_size=config.model.vocab_size).vocab_size
    log(f"trained a {pieces}-piece sentencepiece tokenizer in {tok_dir} on the bundled corpus")
  theirs = sorted(_not_bootstrapped(config, workdir))
  if theirs:
    log(f"note: data.bootstrap='synthetic' with sources of your own ({', '.join(theirs)}): the tokenizer in {tok_dir} "
        "is the bundled corpus's; for your data train one with `heal-jax data train-tokenizer` and set "
        "data.bootstrap='' and data.tokenizer")


@contextlib.contextmanager
def _bootstrap_vocab_size(config: Any) -> Iterator[None]:
  """A VocabSizeError inside, as a ValueError naming config.model.vocab_size."""
  try:
    yield
  except tokenizer_lib.VocabSizeError as e:
    raise ValueError(f"config.model.vocab_size (the size of the tokenizer data.bootstrap trains): {e}") from None


def _not_bootstrapped(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """config.data.sources entries (name -> config) of which no file is one the bootstrap writes."""
  bundled = {str(workdir / "corpus" / f"{tier}.jsonl") for tier in synthetic.DEFAULT_SIZES}
  out = {}
  for name, src in config.data.sources.items():
    paths = sources_lib.with_workdir(str(src.paths), workdir, f"data.sources.{name}.paths")
    if not any(p.strip() in bundled for p in paths.split(",")):
      out[name] = src
  return out


def keep_tokenizer(config: Any, workdir: pathlib.Path, trained: bool) -> None:
  """Copies config.data.tokenizer into WORKDIR/tokenizer (what exports and generation read); one process.

  trained: the work directory has checkpoints, which were trained with the copy already there; a
  different tokenizer is then an error (token ids would silently change meaning).
  """
  tok_dir = sources_lib.tokenizer_dir(config, workdir)
  work_tok = workdir / WORKDIR_TOKENIZER
  if work_tok.resolve() == tok_dir.resolve() or not (tok_dir / tokenizer_lib.MODEL_FILE).is_file():
    return  # (a missing tokenizer is reported by `load`, on every process)
  kept = work_tok / tokenizer_lib.MODEL_FILE
  if kept.is_file() and kept.read_bytes() == (tok_dir / tokenizer_lib.MODEL_FILE).read_bytes():
    return
  if trained and kept.is_file():
    raise ValueError(f"config.data.tokenizer {tok_dir} differs from the tokenizer this work directory was"
                     f" trained with ({work_tok}); use a new --workdir for a new tokenizer")
  work_tok.mkdir(parents=True, exist_ok=True)
  params_store.copy_tokenizer(tok_dir, work_tok)


def _present_files(src: sources_lib.Source) -> list[pathlib.Path] | None:
  """The source's raw files, or None where its paths match nothing here (prepared data only)."""
  try:
    return sources_lib.files(src)
  except sources_lib.DataError:
    return None


def load(config: Any, workdir: pathlib.Path, holdout: int) -> RunData:
  """Reads config.data (the single reader of its source, tokenizer and prepared_dir fields)."""
  tok_dir, tok = _tokenizer(config, workdir)
  train, heldout, counts = {}, {}, {}
  t_start = time.time()
  prepared = resolve(config.data.prepared_dir, workdir, "data.prepared_dir") if config.data.prepared_dir else None
  srcs = sources_lib.from_config(config.data.sources, workdir=str(workdir), require_files=prepared is None)
  if prepared is not None:
    from heal_jax.data import prepare  # pylint: disable=import-outside-toplevel
    prepare.check_prepared(prepared, tok_dir, tok.vocab_size, {s.name: _present_files(s) for s in srcs})
  else:  # as `data prepare` would: one deduplicator across the sources, in name order
    try:
      deduplicator = dedup.Deduplicator.from_config(config.data.dedup)
    except ValueError as e:
      raise sources_lib.DataError(str(e)) from None
    empty_files = sources_lib.check_openings(srcs)
  for src in srcs:
    if prepared is not None:
      ds = prepare.open_prepared(prepared, src.name)
      counts[src.name] = {"examples": len(ds)}
    else:
      skipped: list[dict[str, str]] = []
      pairs, read_counts = sources_lib.load_texts(src, config.data.on_error, skipped, deduplicator)
      if not pairs:
        raise sources_lib.DataError(f"data.sources.{src.name}: no records left to train on ({read_counts})")
      ds = pipeline.EncodedTexts(pairs, str(tok_dir))
      counts[src.name] = {**read_counts, "examples": len(pairs)}
      if skipped:  # Places and reasons only: no record text.
        counts[src.name]["first_skipped"] = skipped[:3]
      if src.name in empty_files:
        counts[src.name]["files_without_records"] = sources_lib.name_files(empty_files[src.name])
    if holdout and len(ds) <= 2 * holdout:
      raise ValueError(f"source {src.name!r} has {len(ds)} examples: too few to hold out eval.holdout_examples="
                       f"{holdout} of them")
    train[src.name] = pipeline.Slice(ds, 0, len(ds) - holdout) if holdout else ds
    if holdout:
      heldout[src.name] = pipeline.Slice(ds, len(ds) - holdout, len(ds))
      counts[src.name]["held_out"] = holdout  # of "examples", for the held-out loss: not trained on
  if prepared is not None:
    report = json.loads((prepared / prepare.REPORT).read_text(encoding="utf-8"))
    made = {"normalization": report.get("normalization"),
            "dedup": {k: v for k, v in report.get("dedup", {}).items() if k != "scope"}}
  else:
    made = {"normalization": "NFC", "dedup": config.data.dedup.to_dict()}
  return RunData(train, heldout, tok, counts, {src.name: src.kind for src in srcs}, json.dumps(made, sort_keys=True),
                 None if prepared is not None else time.time() - t_start)


