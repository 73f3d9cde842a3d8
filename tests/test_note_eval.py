"""Note quality logged while instruction tuning (`config.eval.note_examples`), against the same notes
written afterwards from the saved checkpoint on one device and scored by `eval notes`'s scorer."""

import json

import jax
import numpy as np
import pytest

from heal_jax.checkpoint import restore
from heal_jax.data import mixture
from heal_jax.eval import notes as notes_lib
from heal_jax.infer import decode
from heal_jax.train import loop, note_eval
from tests import train_helpers

NOTE_TOKENS = 6


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return train_helpers.make_corpus(tmp_path_factory.mktemp("note_eval"))


def _config(data_root, *extra):
  return train_helpers.load(data_root, 1, (
      "--config.mesh.fsdp=2", "--config.eval.holdout_examples=3", "--config.eval.note_examples=3",
      f"--config.eval.note_tokens={NOTE_TOKENS}", "--config.model.max_position_embeddings=4096",
      "--config.phases.pretrain.instruction_tuning=true", "--config.phases.pretrain.weights=clinical=1") + extra)


def test_logged_note_scores_equal_notes_written_from_the_checkpoint(data_root, tmp_path, capsys, monkeypatch):
  config = _config(data_root)
  workdir = tmp_path / "w"
  loop.train(config, workdir, devices=jax.devices()[:2])  # parameters sharded over fsdp=2 while writing
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  (logged,) = [r for r in rows if r["kind"] == "eval" and "notes/count" in r]
  assert logged["notes/count"] == 3  # 3 notes in a batch of 4 rows (a multiple of fsdp=2): one row is padding
  assert "notes/rougeL" in capsys.readouterr().err  # evaluations print

  data = mixture.load(config, workdir, config.eval.holdout_examples)
  examples = note_eval.held_out_notes(data, 3, 4096)
  assert [e.source for e in examples] == ["clinical"] * 3
  for e in examples:  # each prompt ends where the note starts: the template's response marker
    assert data.tokenizer.decode(e.prompt).rstrip().endswith("### Response:") and e.reference
  loaded = restore.load_model(workdir)
  tok = data.tokenizer
  scores, lengths, expected_pairs = [], [], []
  for e in examples:  # one at a time, one device, no plan, no batching
    new = decode.generate(loaded.cfg, jax.device_put(loaded.params), [e.prompt], max_new_tokens=NOTE_TOKENS,
                          eos_id=tok.eos_id, vocab_limit=tok.vocab_size)[0]
    text = decode.truncate_at_stop(tok.decode(new), ("\n### Instruction:", "\n### Response:")).strip()
    scores.append(notes_lib.score_note(text, e.reference))
    lengths.append(len(new))
    expected_pairs.append((text, e.reference))
  for key in note_eval.SCORES:
    assert logged[f"notes/{key}"] == pytest.approx(np.mean([s[key] for s in scores]), abs=1e-9), key
  assert logged["notes/new_tokens"] == pytest.approx(np.mean(lengths))
  # each note is scored against its own reference (means alone would not show a mix-up)
  pairs = []
  real_score = notes_lib.score_note
  monkeypatch.setattr(notes_lib, "score_note", lambda text, ref: pairs.append((text, ref)) or real_score(text, ref))
  note_eval.evaluate(loaded.cfg, loaded.params, data, 3, NOTE_TOKENS, 1, lambda m: None)
  assert pairs == expected_pairs and len({ref for _, ref in pairs}) == 3 and len({text for text, _ in pairs}) > 1


def test_no_held_out_conversation_that_fits_is_named(data_root, tmp_path, capsys):
  config = _config(data_root, "--config.model.max_position_embeddings=256")
  loop.train(config, tmp_path / "w", devices=jax.devices()[:2])
  assert (f"note eval skipped: no held-out conversation's prompt leaves room for {NOTE_TOKENS} new tokens (or "
          "its note's) in the model's 256 positions") in capsys.readouterr().err


def test_held_out_notes_leave_room_for_the_note(data_root, tmp_path):
  """A prompt that fits with room for 1 token but not for note_tokens (nor its whole note) is left out."""
  config = _config(data_root)
  data = mixture.load(config, tmp_path / "w", config.eval.holdout_examples)
  every = note_eval.held_out_notes(data, 3, 4096)
  prompt = len(every[0].prompt)
  note = len(data.tokenizer.encode(every[0].reference, add_bos=False))
  assert note > 4
  tight = note_eval.held_out_notes(data, 3, prompt + 1)  # one position left: enough for room=1
  assert tight and tight[0].prompt == every[0].prompt
  assert every[0].prompt not in [e.prompt for e in note_eval.held_out_notes(data, 3, prompt + 4, room=5)]
  assert every[0].prompt in [e.prompt for e in note_eval.held_out_notes(data, 3, prompt + 5, room=5)]


def test_a_run_without_instruction_tuning_says_note_eval_will_not_run(data_root, tmp_path, capsys):
  loop.train(_config(data_root, "--config.phases.pretrain.instruction_tuning=false"), tmp_path / "w",
             devices=jax.devices()[:2])
  assert "note eval (config.eval.note_examples) will not run" in capsys.readouterr().err
  rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  assert not [r for r in rows if "notes/count" in r]


def test_note_examples_need_held_out_examples(data_root, tmp_path):
  with pytest.raises(ValueError, match="config.eval.note_examples needs config.eval.holdout_examples > 0"):
    loop.train(_config(data_root, "--config.eval.holdout_examples=0"), tmp_path / "w", devices=jax.devices()[:2])
