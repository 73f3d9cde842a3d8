"""The `heal-jax` command line: the Quickstart demo end to end, and error reporting."""

import json
import sys
import pathlib

import jax
import numpy as np

from heal_jax import cli

TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py")


def test_demo_round_trip(tmp_path, capsys):
  assert cli.main(["demo", "--config", TINY, "--workdir", str(tmp_path),
                   "--config.model.num_layers=2"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["round_trip_bitwise"] is True
  assert result["max_abs_logit_diff_vs_transformers"] < 1e-4
  assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "tokenizer.model").is_file()


def test_unknown_config_key_is_reported(tmp_path, capsys):
  assert cli.main(["init", "--config", TINY, "--out", str(tmp_path / "x"),
                   "--config.model.num_layerz=2"]) == 2
  assert "unknown config key: model.num_layerz" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_init_refuses_a_tokenizer_directory_without_a_model_and_an_unwritable_out(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  for tok in (tmp_path / "missing", tmp_path / "empty"):
    assert cli.main(["init", "--config", TINY, "--out", str(tmp_path / "x"), "--tokenizer", str(tok)]) == 2
    assert f"tokenizer directory {tok}: no tokenizer.model there" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
  (tmp_path / "a_file").write_text("")
  assert cli.main(["init", "--config", TINY, "--out", str(tmp_path / "a_file" / "out")]) == 2
  assert f"cannot create output directory {tmp_path / 'a_file' / 'out'}: File exists" in capsys.readouterr().err


def test_passthrough_data_check(tmp_path, capsys):
  f = tmp_path / "d.jsonl"
  f.write_text('{"text": "fine"}\n{"text": ""}\n')
  assert cli.main(["data", "check", str(f), "--kind", "document"]) == 1
  report = json.loads(capsys.readouterr().out)
  assert (report["read"], report["valid"], report["invalid"]) == (2, 1, 1)


def test_help_lists_every_subcommand(capsys):
  parser = cli.build_parser()
  groups = {(): parser}
  for words in [("data",), ("eval",)]:
    groups[words] = next(a for a in parser._subparsers._group_actions).choices[words[0]]  # pylint: disable=protected-access
  for words in cli._PASSTHROUGH:  # pylint: disable=protected-access
    groups[words[:-1]].print_help()
    assert words[-1] in capsys.readouterr().out, words


def test_overrides_to_a_command_without_a_config_are_refused(tmp_path, capsys):
  assert cli.main(["data", "synth", "--out", str(tmp_path / "c"), "--config.bogus=1"]) == 2
  assert "this command reads no config; --config.bogus=1 has nothing to override" in capsys.readouterr().err
  assert not (tmp_path / "c").exists()


def test_data_synth_replaces_corpus_files_only_when_told(tmp_path, capsys):
  out = tmp_path / "c"
  out.mkdir()
  (out / "medical.jsonl").write_text("mine\n")
  assert cli.main(["data", "synth", "--out", str(out)]) == 2
  assert f"--out {out} already holds medical.jsonl; pass --overwrite" in capsys.readouterr().err
  assert (out / "medical.jsonl").read_text() == "mine\n" and not (out / "general.jsonl").exists()
  assert cli.main(["data", "synth", "--out", str(out / "medical.jsonl")]) == 2
  assert "a file, not a directory" in capsys.readouterr().err
  assert cli.main(["data", "synth", "--out", str(out), "--overwrite"]) == 0
  assert (out / "medical.jsonl").read_text() != "mine\n"


def test_overrides_may_come_before_a_passthrough_subcommand(capsys):
  assert cli.main(["--config.plan.mfu=2", "plan", "--config", TINY]) == 2
  assert capsys.readouterr().err == "heal-jax plan: error: config.plan.mfu=2.0 is a fraction: in (0, 1]\n"


def test_closed_event_loop_noise_is_dropped_and_nothing_else(tmp_path, monkeypatch):
  """orbax's reads in flight after a failed restore call into its closed asyncio loop; the tracebacks
  they print as unraisable exceptions are dropped; any other unraisable exception still reaches the
  hook that was there before."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
  assert cli.main(["data", "check", str(tmp_path / "missing.jsonl"), "--kind", "document"]) == 2
  cli.main(["data", "check", str(tmp_path / "missing.jsonl"), "--kind", "document"])  # installs once

  class Raises:
    def __init__(self, message):
      self.message = message

    def __del__(self):
      raise RuntimeError(self.message)

  Raises("Event loop is closed")  # pylint: disable=expression-not-assigned
  Raises("something else")  # pylint: disable=expression-not-assigned
  assert seen == ["something else"]


def test_train_tokenizer_then_init_a_checkpoint_that_carries_it(tmp_path, capsys):
  """`data train-tokenizer` on a text file and a JSONL file, then `init --tokenizer`: read back with
  sentencepiece itself and the checkpoint reader."""
  import sentencepiece  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  from heal_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  files = synthetic.generate_corpus(tmp_path / "corpus", seed=0, sizes={"general": 40, "medical": 20,
                                                                       "clinical": 0, "instructions": 0})
  text = tmp_path / "plain.txt"
  text.write_text("The patient takes lisinopril 20 mg daily.\nNo chest pain or shortness of breath.\n")
  assert cli.main(["data", "train-tokenizer", str(files["general"]), str(files["medical"]), str(text),
                   "--out", str(tmp_path / "tok"), "--vocab-size", "400"]) == 0
  assert json.loads(capsys.readouterr().out) == {"out": str(tmp_path / "tok"), "vocab_size": 400}
  sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
  assert (sp.vocab_size(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (400, 0, 1, 2)  # LLaMA's special ids
  sample = "No chest pain. Takes lisinopril 20 mg daily."
  assert sp.decode(sp.encode(sample)) == sample
  # an existing tokenizer is replaced only with --overwrite (it used to be replaced silently)
  before = (tmp_path / "tok" / "tokenizer.model").read_bytes()
  again = ["data", "train-tokenizer", str(text), "--out", str(tmp_path / "tok"), "--vocab-size", "300"]
  assert cli.main(again) == 2
  assert (f"--out {tmp_path / 'tok'} already holds tokenizer.model, tokenizer_config.json, special_tokens_map.json; "
          "pass --overwrite") in capsys.readouterr().err
  assert (tmp_path / "tok" / "tokenizer.model").read_bytes() == before
  assert cli.main(["data", "train-tokenizer", str(text), "--out", str(text)]) == 2
  assert "a file, not a directory" in capsys.readouterr().err

  overrides = ["--config.model.vocab_size=400", "--config.model.num_layers=1", "--config.seed=5"]
  for out in ("a", "b"):
    assert cli.main(["init", "--config", TINY, "--out", str(tmp_path / out), "--tokenizer", str(tmp_path / "tok"),
                     *overrides]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  loaded = [restore.load_model(tmp_path / out) for out in ("a", "b")]
  cfg = loaded[0].cfg
  assert (cfg.vocab_size, cfg.num_layers, summary["dtype"]) == (400, 1, "float32")
  assert summary["params"] == cfg.num_params()
  assert (tmp_path / "b" / "tokenizer" / "tokenizer.model").read_bytes() == \
      (tmp_path / "tok" / "tokenizer.model").read_bytes()
  a, b = loaded[0].params, loaded[1].params
  assert a["embed"]["embedding"].shape == (400, cfg.hidden_size)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # the config's seed decides
  assert cli.main(["init", "--config", TINY, "--out", str(tmp_path / "c"), *overrides[:2], "--config.seed=6"]) == 0
  c = restore.load_model(tmp_path / "c").params
  assert not np.array_equal(a["embed"]["embedding"], c["embed"]["embedding"])
