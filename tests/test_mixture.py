"""mixture: the synthetic bootstrap and the run's tokenizer setting."""

import pathlib

import pytest

from heal_jax import config as config_lib
from heal_jax.data import mixture

TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py")


def test_an_empty_tokenizer_setting_is_named(tmp_path):
  config = config_lib.load_config(TINY, ["--config.data.tokenizer=", "--config.data.bootstrap="])
  with pytest.raises(ValueError, match=r"^config.data.tokenizer is empty: give the directory holding "
                                       r"tokenizer.model"):
    mixture.load(config, tmp_path, 0)


def test_the_bootstrap_says_its_tokenizer_is_the_bundled_corpus_s_when_sources_are_your_own(tmp_path):
  """Own files with data.bootstrap still 'synthetic' trained the tokenizer on the bundled corpus silently."""
  own = tmp_path / "own.jsonl"
  own.write_text('{"text": "a clinic document"}\n', encoding="utf-8")
  config = config_lib.load_config(TINY, [f"--config.data.sources.general.paths={own}",
                                         "--config.model.vocab_size=600"])
  lines = []
  mixture.bootstrap(config, tmp_path / "w", lines.append)
  assert lines[-1].startswith("note: data.bootstrap='synthetic' with sources of your own (general): the tokenizer in "
                              f"{tmp_path / 'w' / 'tokenizer'} is the bundled corpus's")
  lines.clear()
  mixture.bootstrap(config_lib.load_config(TINY, ["--config.model.vocab_size=600"]), tmp_path / "w", lines.append)
  assert not any(line.startswith("note:") for line in lines)


def test_a_bootstrap_killed_while_writing_leaves_no_partial_corpus_or_tokenizer(tmp_path, monkeypatch):
  """The corpus and tokenizer appear under their names only once complete (a kill while writing used
  to leave a shorter instructions.jsonl, or a tokenizer without its HF files, that the next run took as
  done); a rerun writes them in full and clears the staging folder."""
  from heal_jax.data import synthetic, tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(TINY, ["--config.model.vocab_size=600"])
  work = tmp_path / "w"
  real = tokenizer_lib.train_tokenizer

  def killed(files, out_dir, **kwargs):
    real(files, out_dir, **kwargs)
    raise KeyboardInterrupt  # after every file is written, before the bootstrap returns

  real_corpus = synthetic.generate_corpus

  def killed_corpus(out_dir, **kwargs):
    real_corpus(out_dir, **kwargs)
    (out_dir / "instructions.jsonl").write_text('{"prompt": "cut short"', encoding="utf-8")
    raise KeyboardInterrupt

  monkeypatch.setattr(synthetic, "generate_corpus", killed_corpus)
  with pytest.raises(KeyboardInterrupt):
    mixture.bootstrap(config, work, lambda line: None)
  assert not (work / "corpus").exists()
  monkeypatch.setattr(synthetic, "generate_corpus", real_corpus)
  monkeypatch.setattr(tokenizer_lib, "train_tokenizer", killed)
  with pytest.raises(KeyboardInterrupt):
    mixture.bootstrap(config, work, lambda line: None)
  assert not (work / "tokenizer").exists() and sorted(p.name for p in work.iterdir()) == ["corpus"]
  monkeypatch.setattr(tokenizer_lib, "train_tokenizer", real)
  mixture.bootstrap(config, work, lambda line: None)
  assert sorted(p.name for p in (work / "tokenizer").iterdir()) == [
      "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
  expected = synthetic.generate_corpus(tmp_path / "expected", seed=config.seed)
  for tier, path in expected.items():
    assert (work / "corpus" / f"{tier}.jsonl").read_bytes() == path.read_bytes()
  assert sorted(p.name for p in work.iterdir()) == ["corpus", "tokenizer"]


def test_a_source_left_without_records_after_deduplication_is_named(tmp_path):
  """Online dedup runs across sources in name order: a source repeating an earlier one keeps nothing,
  which is an error naming it and its counts (it crashed the closing sample note after training)."""
  from heal_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  docs = "".join('{"text": "record number %d about a patient with a cough and fever"}\n' % i for i in range(3))
  (tmp_path / "a.jsonl").write_text(docs, encoding="utf-8")
  (tmp_path / "b.jsonl").write_text(docs, encoding="utf-8")
  tokenizer_lib.train_tokenizer([tmp_path / "a.jsonl"], tmp_path / "tok", vocab_size=300)
  config = config_lib.base_config()
  config.data.tokenizer = str(tmp_path / "tok")
  for name in ("a", "b"):
    config.data.sources[name] = config_lib.source_config(str(tmp_path / f"{name}.jsonl"), "document", 1.0)
  with pytest.raises(ValueError, match=r"^data.sources.b: no records left to train on \(\{'read': 3, 'invalid': 0, "
                                       r"'duplicates_exact': 3, 'duplicates_near': 0\}\)"):
    mixture.load(config, tmp_path, 0)
  config.data.dedup.exact = config.data.dedup.near = False
  assert len(mixture.load(config, tmp_path, 0).train["b"]) == 3
