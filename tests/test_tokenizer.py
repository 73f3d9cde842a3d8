"""Tokenizer: LLaMA's special ids and trainer options, the vocabulary cap, and parity with transformers."""

import json
import pathlib

import pytest
import sentencepiece.sentencepiece_model_pb2 as sp_pb2
import transformers

from heal_jax.data import synthetic
from heal_jax.data import tokenizer as tok_lib

HAND_TEXTS = (
    "Hello world",
    "The patient reports chest pain for 3 days.  Denies fever.\nBlood pressure 128/82 mmHg.",
    "[doctor] hi , martha . how are you ?\n[patient] i'm doing okay .",
    "lisinopril 20 mg daily, metformin 1000 mg twice daily",
    "Temperature 101.4 F; SpO2 97%\ttab",
    "a\n\nb",
    "trailing spaces   ",
    "Ünïcödé café — naïve 😀 医学",
    "",
)


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> list[str]:
  sizes = {"general": 200, "medical": 100, "clinical": 80, "instructions": 0}
  paths = synthetic.generate_corpus(tmp_path_factory.mktemp("corpus"), seed=0, sizes=sizes)
  rows = [json.loads(line) for tier in ("general", "medical", "clinical")
          for line in paths[tier].read_text(encoding="utf-8").splitlines()]
  return [value for row in rows for value in row.values()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, texts) -> tuple[tok_lib.Tokenizer, pathlib.Path]:
  out_dir = tmp_path_factory.mktemp("tok")
  return tok_lib.train_tokenizer(texts, out_dir, vocab_size=1500), out_dir


def test_llama_special_ids_and_byte_pieces(trained):
  tok, out_dir = trained
  assert tok.vocab_size == 1500
  assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)
  assert [tok.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<0x00>", "<0x01>"]
  assert tok.id_to_piece(258) == "<0xFF>"
  proto = sp_pb2.ModelProto()
  proto.ParseFromString((out_dir / "tokenizer.model").read_bytes())
  spec, norm = proto.trainer_spec, proto.normalizer_spec
  assert spec.model_type == sp_pb2.TrainerSpec.BPE
  assert (spec.byte_fallback, spec.split_digits, spec.allow_whitespace_only_pieces) == (True, True, True)
  assert (norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces) == ("identity", True, False)


def test_encode_splits_digits_falls_back_to_bytes_and_round_trips(trained):
  tok, _ = trained
  pieces = [tok.id_to_piece(i) for i in tok.encode("12345", add_bos=False)]
  assert pieces == ["▁", "1", "2", "3", "4", "5"]
  assert tok.encode("😀", add_bos=False)[-4:] == [3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80]
  assert tok.encode("x", add_bos=True, add_eos=True)[0::2] == [1, 2]
  for text in HAND_TEXTS + ("  two leading spaces", " one"):
    assert tok.decode(tok.encode(text)) == text


def test_hand_computed_merges(tmp_path):
  """Only "▁hello" is ever seen, so BPE merges it whole; unseen letters fall back to their bytes."""
  tok = tok_lib.train_tokenizer(["hello hello hello"] * 100, tmp_path, vocab_size=1000)
  pieces = [tok.id_to_piece(i) for i in tok.encode("hello world", add_bos=False)]
  assert pieces == ["▁hello", "▁", "<0x77>", "o", "<0x72>", "l", "<0x64>"]


def test_small_corpus_caps_the_vocabulary(tmp_path):
  texts = ["the knee hurts", "the back hurts", "the chest hurts"] * 20
  tok = tok_lib.train_tokenizer(texts, tmp_path / "capped", vocab_size=5000)
  assert 259 < tok.vocab_size < 5000
  exact = tok_lib.train_tokenizer(texts, tmp_path / "exact", vocab_size=tok.vocab_size)
  assert (tmp_path / "capped" / "tokenizer.model").read_bytes() == (
      tmp_path / "exact" / "tokenizer.model").read_bytes()
  with pytest.raises(ValueError, match="no training text"):
    tok_lib.train_tokenizer(["", "  \n"], tmp_path / "empty", vocab_size=300)


def test_training_is_deterministic_and_accepts_files(tmp_path, texts, trained):
  _, out_dir = trained
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(texts), encoding="utf-8")
  again = tok_lib.train_tokenizer([corpus], tmp_path / "again", vocab_size=1500)
  assert (again.path).read_bytes() == (out_dir / "tokenizer.model").read_bytes()
  assert tok_lib.Tokenizer(tmp_path / "again").vocab_size == 1500  # a directory loads its model


def test_a_jsonl_file_trains_on_its_string_values_not_its_syntax(tmp_path, texts, trained):
  """The same texts as JSON lines give the same model as the plain texts (JSON syntax and escaped
  newlines used to be learnt as pieces such as '{"' and '."}'); a line that is not JSON is named."""
  _, out_dir = trained
  rows = tmp_path / "rows.jsonl"
  rows.write_text("".join(json.dumps({"text": t, "meta": {"tags": []}}) + "\n" for t in texts), encoding="utf-8")
  got = tok_lib.train_tokenizer([rows], tmp_path / "from_jsonl", vocab_size=1500)
  assert got.path.read_bytes() == (out_dir / "tokenizer.model").read_bytes()
  pieces = {got.id_to_piece(i) for i in range(got.vocab_size)}
  assert not any('"' in p or "{" in p for p in pieces)
  (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON"):
    tok_lib.train_tokenizer([tmp_path / "bad.jsonl"], tmp_path / "bad", vocab_size=300)


def test_transformers_loads_it_as_llama_with_the_same_ids(trained, texts):
  """Texts that start with a space are left out: HF's Metaspace adds no dummy prefix before one."""
  tok, out_dir = trained
  hf = transformers.AutoTokenizer.from_pretrained(out_dir)
  assert type(hf).__name__ == "LlamaTokenizer" and hf.add_bos_token and not hf.add_eos_token
  assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id, hf.pad_token_id) == (1, 2, 0, None)
  assert len(hf) == tok.vocab_size
  for text in HAND_TEXTS + tuple(texts[::7]):
    assert hf(text)["input_ids"] == tok.encode(text), text
    ids = tok.encode(text, add_bos=False)
    assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
    assert hf.decode(ids) == tok.decode(ids) == text


def test_compressed_bom_and_line_separator_files_train_as_their_lines(tmp_path, texts, trained):
  """A .jsonl.gz file, a byte-order mark and a U+2028 inside a JSON string read as `data check` reads
  them (the same model as the plain texts, whose line the U+2028 only splits within); a line that is
  not UTF-8 is named by file and line."""
  import gzip  # pylint: disable=import-outside-toplevel
  _, out_dir = trained
  body = "".join(json.dumps({"text": t}) + "\n" for t in texts)
  with gzip.open(tmp_path / "rows.jsonl.gz", "wt", encoding="utf-8") as f:
    f.write("\ufeff" + body)
  got = tok_lib.train_tokenizer([tmp_path / "rows.jsonl.gz"], tmp_path / "gz", vocab_size=1500)
  assert got.path.read_bytes() == (out_dir / "tokenizer.model").read_bytes()
  sep = tmp_path / "sep.jsonl"
  sep.write_text(json.dumps({"text": "left\u2028right"}, ensure_ascii=False) + "\n" + json.dumps({"text": "x"}) + "\n",
                 encoding="utf-8")
  assert list(tok_lib._file_texts(sep)) == ["left\u2028right", "x"]  # pylint: disable=protected-access
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"fine line\nbad \xff byte\n")
  with pytest.raises(ValueError, match=r"bad.txt:2: invalid UTF-8 \(byte 0xff"):
    tok_lib.train_tokenizer([bad], tmp_path / "bad", vocab_size=300)


@pytest.mark.parametrize("size,message", [(0, "vocab_size 0: at least 260"),
                                          (261, "vocab_size 261 is too small for this corpus: sentencepiece needs at least")])
def test_a_vocabulary_too_small_is_named_and_writes_nothing(tmp_path, texts, size, message):
  with pytest.raises(ValueError, match=message):
    tok_lib.train_tokenizer(texts + ["\u00e9\u00e8\u00ea\u00eb\u0101\u0113\u012b\u014d\u016b"], tmp_path / "tok", vocab_size=size)
  assert not (tmp_path / "tok").exists()
