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
