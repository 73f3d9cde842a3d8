"""SentencePiece tokenizer: a thin wrapper, and in-process training of a LLaMA-compatible BPE model.

LLaMA's `tokenizer.model` is a BPE sentencepiece model with byte fallback, digits split one by one,
unk=0, bos=1, eos=2 and no pad piece (pad id -1), an identity normalizer that keeps whitespace as it is,
and a dummy "▁" prefix. `train_tokenizer` mirrors that trainer spec, and writes the HF files next to the
model so that `transformers.AutoTokenizer.from_pretrained(out_dir)` loads it as a `LlamaTokenizer` that
adds BOS and gives the same ids as this wrapper, with two exceptions that transformers 5 has for LLaMA's
own tokenizer too: a text that starts with a space gets no dummy prefix from HF's Metaspace (one "▁"
fewer), and HF reads a literal "<s>" or "</s>" in the text as the control token, where sentencepiece
spells it out. Training and data preparation use this wrapper only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
import gzip
import io
import json
import os
import pathlib
import re
from typing import Any
import zlib

import sentencepiece as spm

MODEL_FILE = "tokenizer.model"

# LLaMA 2's trainer spec (from its tokenizer.model), less what depends on its 2T-token corpus.
_LLAMA_TRAINER_SPEC = dict(
    model_type="bpe",
    character_coverage=0.99995,
    split_digits=True,
    split_by_unicode_script=True,
    split_by_number=True,
    split_by_whitespace=True,
    treat_whitespace_as_suffix=False,
    allow_whitespace_only_pieces=True,
    byte_fallback=True,
    max_sentencepiece_length=16,
    vocabulary_output_piece_score=True,
    hard_vocab_limit=True,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>",
    unk_surface=" \u2047 ",
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    shuffle_input_sentence=True,
)
_VOCAB_CAP = re.compile(r"value <= (\d+)")
_TOO_FEW_PIECES = re.compile(r"smaller than required_chars\. (\d+) vs (\d+)")
MIN_VOCAB_SIZE = 260  # with byte fallback: the 3 special and 256 byte pieces, and at least one learnt piece


class VocabSizeError(ValueError):
  """A vocabulary size too small for the corpus (or for byte fallback)."""


class Tokenizer:
  """A sentencepiece model; ids are python ints in [0, vocab_size)."""

  def __init__(self, path: str | os.PathLike):
    """Loads `path`, a `tokenizer.model` file or a directory holding one."""
    path = pathlib.Path(path)
    if path.is_dir():
      path = path / MODEL_FILE
    self.path = path
    self._sp = spm.SentencePieceProcessor(model_file=str(path))
    self._piece_bytes = None
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
    proto = sentencepiece_model_pb2.ModelProto.FromString(self._sp.serialized_model_proto())
    # Pieces account for the input byte for byte only when the model does not normalize the text.
    self._identity_normalizer = proto.normalizer_spec.name == "identity"

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  @property
  def pad_id(self) -> int:
    """-1 for LLaMA models, which have no pad piece: never embed it; mask padding by segment id instead."""
    return self._sp.pad_id()

  def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
    """Token ids of `text`, with BOS (default, like LLaMA's HF config) and/or EOS around them."""
    return self._sp.encode(text, add_bos=add_bos, add_eos=add_eos)

  def piece_bytes(self) -> "np.ndarray":
    """int32 [vocab]: UTF-8 bytes of input text each piece stands for ("▁" = one space, a byte
    piece = 1, control and unknown pieces = 0; unk is -1 because its length is not known)."""
    if self._piece_bytes is None:
      import numpy as np  # pylint: disable=import-outside-toplevel
      table = np.zeros(self.vocab_size, np.int32)
      for i in range(self.vocab_size):
        if self._sp.is_control(i):
          continue
        if self._sp.is_unknown(i):
          table[i] = -1
        elif self._sp.is_byte(i):
          table[i] = 1
        else:
          table[i] = len(self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
      self._piece_bytes = table
    return self._piece_bytes

  def split_point(self, ids: Sequence[int], text: str, prefix: str) -> int | None:
    """Index of the first token of `ids` (the encoding of `text`, which starts with `prefix`) that
    starts at or after the end of `prefix`; None when the tokens do not account for the text byte
    for byte (a normalizing model, an unknown piece), so the caller must find the split another way.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    ids = np.asarray(ids)
    if not self._identity_normalizer or not ids.size:
      return None
    lengths = self.piece_bytes().take(ids)
    if lengths.min() < 0:  # an unknown piece: its length in the text is not known
      return None
    ends = np.cumsum(lengths)
    n_text = len(text) if text.isascii() else len(text.encode("utf-8"))
    dummy = int(ends[-1]) - n_text  # the "▁" sentencepiece puts in front (0 or 1 byte)
    if dummy not in (0, 1):
      return None
    n_prefix = len(prefix) if prefix.isascii() else len(prefix.encode("utf-8"))
    return int(np.searchsorted(ends - lengths - dummy, n_prefix, side="left"))

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; BOS/EOS/unk control pieces decode to nothing, unk to " \u2047 "."""
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))


def _chunk(line: str, max_bytes: int) -> Iterator[str]:
  """Splits a line at spaces into pieces of at most `max_bytes` UTF-8 bytes (a longer word is dropped)."""
  if len(line.encode("utf-8")) <= max_bytes:
    yield line
    return
  words, size = [], 0
  for word in line.split(" "):
    n = len(word.encode("utf-8")) + 1
    if words and size + n > max_bytes:
      yield " ".join(words)
      words, size = [], 0
    if n <= max_bytes:
      words.append(word)
      size += n
  if words:
    yield " ".join(words)


def _strings(value: Any) -> Iterator[str]:
  """The string values inside a JSON value (not its keys), depth first."""
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for v in value.values():
      yield from _strings(v)
  elif isinstance(value, list):
    for v in value:
      yield from _strings(v)


def _file_texts(path: pathlib.Path) -> Iterator[str]:
  """A training file's texts, line by line as `data check` reads lines (UTF-8, a byte-order mark
  allowed, .gz/.zst decompressed): of a .jsonl file the string values of each line's JSON value (so
  JSON syntax and escapes such as \\n are not learnt as pieces); of any other file the lines.
  ValueError naming FILE:LINE for a line that is not UTF-8, or not JSON in a .jsonl file."""
  from heal_jax.data import check  # pylint: disable=import-outside-toplevel
  jsonl = path.name.lower().endswith((".jsonl", ".jsonl.gz", ".jsonl.zst"))
  try:
    for n, line, problem in check.numbered_lines(path):
      if problem:
        raise ValueError(f"{path}:{n}: {problem}")
      if not jsonl:
        yield line
        continue
      value, reason = check.parse_json(line)
      if reason is not None:
        raise ValueError(f"{path}:{n}: {reason} (a .jsonl file holds one JSON value a line)")
      yield from _strings(value)
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise ValueError(f"{path}: damaged compressed file ({type(e).__name__}: {e})") from None


def _training_lines(texts_or_files: Iterable[str | os.PathLike], max_bytes: int) -> list[str]:
  lines = []
  for item in texts_or_files:
    texts = _file_texts(pathlib.Path(item)) if isinstance(item, os.PathLike) else (item,)
    for text in texts:
      for line in text.splitlines():
        if line.strip():
          lines.extend(_chunk(line, max_bytes))
  return lines


def _write_hf_files(out_dir: pathlib.Path) -> None:
  """tokenizer_config.json and special_tokens_map.json as in meta-llama/Llama-2-7b-hf."""
  special = {name: {"content": piece, "lstrip": False, "normalized": False, "rstrip": False,
                    "single_word": False}
             for name, piece in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
  config = {
      "tokenizer_class": "LlamaTokenizer",
      "add_bos_token": True,
      "add_eos_token": False,
      "legacy": False,
      "clean_up_tokenization_spaces": False,
      "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,
      "pad_token": None,
      "padding_side": "right",
      "sp_model_kwargs": {},
      **special,
  }
  (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
  (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n",
                                                   encoding="utf-8")


def require_min_vocab(vocab_size: int) -> None:
  """VocabSizeError for a vocabulary too small for any corpus of `train_tokenizer` (byte fallback on)."""
  if vocab_size < MIN_VOCAB_SIZE:
    raise VocabSizeError(f"vocab_size {vocab_size}: at least {MIN_VOCAB_SIZE} (3 special pieces, 256 byte "
                         "pieces and the corpus's characters)")


def train_tokenizer(texts_or_files: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                    vocab_size: int = 32000, *, max_sentence_length: int = 4192,
                    num_threads: int | None = None, **overrides) -> Tokenizer:
  """Trains a LLaMA-style BPE sentencepiece model in-process and writes it with its HF config files.

  Args:
    texts_or_files: `str` items are texts; `os.PathLike` items are UTF-8 files, of text or, named
      *.jsonl, of JSON lines whose string values are the texts. Either way each
      non-blank line is one training sentence (newlines are never inside pieces; they encode through
      byte fallback as <0x0A>, as in LLaMA). Lines over `max_sentence_length` bytes are cut at spaces.
    out_dir: created if needed; receives `tokenizer.model`, `tokenizer_config.json` (LlamaTokenizer,
      add_bos_token true, add_eos_token false, legacy false) and `special_tokens_map.json`.
    vocab_size: the requested size, counting the 3 special and 256 byte pieces. A small corpus cannot
      fill a large vocabulary; then training is rerun once with the largest size sentencepiece reports
      as possible, so `Tokenizer.vocab_size` may come out smaller than asked.
    max_sentence_length: in bytes, as LLaMA's 4192.
    num_threads: training threads, default all CPUs.
    **overrides: any other sentencepiece trainer option, replacing LLaMA's.

  Returns:
    The trained `Tokenizer`, loaded from `out_dir/tokenizer.model`. Same input -> same file bytes.
  """
  options = {**_LLAMA_TRAINER_SPEC, "max_sentence_length": max_sentence_length,
             "num_threads": num_threads or os.cpu_count() or 1, "minloglevel": 2, **overrides}
  if options.get("byte_fallback"):
    require_min_vocab(vocab_size)
  lines = _training_lines(texts_or_files, max_sentence_length)
  if not lines:
    raise ValueError("no training text: every input was empty or blank")

  def run(size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                   vocab_size=size, **options)
    return model.getvalue()

  try:
    model_bytes = run(vocab_size)
  except RuntimeError as e:
    chars = _TOO_FEW_PIECES.search(str(e))
    if chars is not None:  # the corpus has more distinct characters than the vocabulary has room for
      raise VocabSizeError(f"vocab_size {vocab_size} is too small for this corpus: sentencepiece needs at least "
                           f"{chars.group(2)} pieces (its distinct characters with the special and byte "
                           "pieces)") from None
    cap = _VOCAB_CAP.search(str(e))
    if cap is None or int(cap.group(1)) >= vocab_size:
      raise
    model_bytes = run(int(cap.group(1)))
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / MODEL_FILE).write_bytes(model_bytes)
  _write_hf_files(out_dir)
  return Tokenizer(out_dir / MODEL_FILE)
