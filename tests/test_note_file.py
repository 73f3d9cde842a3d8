"""`heal-jax generate --conversations C.jsonl --output P.jsonl`: order, equality with one-at-a-time notes,
resuming after a kill, settings checks, bad input, and `eval notes` reading the result."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

from heal_jax.checkpoint import restore
from heal_jax.eval import notes as notes_lib, records
from heal_jax.infer import generate, note_file
from heal_jax.infer.sampling import Sampling

TURNS = ["[doctor] what brings you in today ?", "[patient] i have had a cough for two weeks .",
         "[doctor] any fever ?", "[patient] no fever , but my left knee hurts when i walk .",
         "[doctor] are you taking anything for it ?", "[patient] ibuprofen 400 mg twice a day ."]
# Five conversations of different lengths, in no length order; ids of two JSON types.
CONVERSATIONS = [(7, "\n".join(TURNS[:2])), ("b", "\n".join(TURNS)), ("c", "Doctor: hello .\nPatient: hi ."),
                 (11, "\n".join(TURNS[:4])), ("e", "\n".join(TURNS[:3]))]
NEW = 10


class Killed(Exception):
  """Stands in for a SIGKILL after some batches."""


@pytest.fixture(scope="module")
def loaded(note_checkpoint):
  """The model with its embedding sharpened, so that greedy picks are not near-ties that padding to
  another length could flip."""
  model = restore.load_model(note_checkpoint)
  params = jax.tree.map(jnp.asarray, model.params)
  params["embed"]["embedding"] = params["embed"]["embedding"] * 8
  return dataclasses.replace(model, params=params)


def _write_conversations(path, rows=CONVERSATIONS):
  path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))
  return path


def _run(loaded, conversations, out, *, sampling=Sampling(), seed=0, batch_size=2, log=None):
  rows = note_file.read_conversations(conversations)
  settings = {"conversations_sha256": note_file.file_sha256(conversations), "max_new_tokens": NEW,
              "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
              "seed": seed, "batch_size": batch_size}
  messages = []
  counts = note_file.write_notes(loaded, rows, out, settings=settings, max_new_tokens=NEW, sampling=sampling,
                                 seed=seed, batch_size=batch_size, source=conversations,
                                 log=log or messages.append)
  return counts, messages


def _rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_notes_in_file_order_equal_one_at_a_time_notes(loaded, tmp_path):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  out = tmp_path / "p.jsonl"
  counts, messages = _run(loaded, conversations, out)
  assert counts == note_file.Counts(read=5, kept=0, generated=5, written=5)
  rows = _rows(out)
  assert [r["id"] for r in rows] == [i for i, _ in CONVERSATIONS]  # file order, ids as written (7 stays a number)
  singles = [generate.generate_notes(loaded, [text], max_new_tokens=NEW) for _, text in CONVERSATIONS]
  assert [r["text"] for r in rows] == [s[0] for s in singles]
  assert all(r["ended"] in ("eos", "stop_string", "limit") and 0 <= r["new_tokens"] <= NEW for r in rows)
  assert not note_file.partial_path(out).exists()
  assert "batch 3 of 3: 5 of 5 notes" in messages


def test_plan_batches_longest_prompts_first(loaded):
  plan = generate.plan_notes(loaded, [t for _, t in CONVERSATIONS], max_new_tokens=NEW, batch_size=2)
  lengths = [len(p) for p in plan.prompts_N]
  assert sorted(i for b in plan.batches for i in b) == list(range(5))
  order = [i for b in plan.batches for i in b]
  assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
  assert order[0] == 1 and plan.limits == [NEW] * 3


def test_a_killed_run_resumes_to_the_uninterrupted_notes(loaded, tmp_path):
  """Sampled notes: kept batches plus regenerated ones equal one uninterrupted run, also when the
  kill cut a line short or left a batch half written."""
  conversations = _write_conversations(tmp_path / "c.jsonl")
  sampling = Sampling(temperature=1.0)
  whole = tmp_path / "whole.jsonl"
  _run(loaded, conversations, whole, sampling=sampling, seed=3)
  out = tmp_path / "p.jsonl"

  def kill_after_batch_2(message):
    if message.startswith("batch 2 of"):
      raise Killed

  with pytest.raises(Killed):
    _run(loaded, conversations, out, sampling=sampling, seed=3, log=kill_after_batch_2)
  partial = note_file.partial_path(out)
  lines = partial.read_text().splitlines()
  assert json.loads(lines[0])["settings"]["seed"] == 3 and len(lines) == 1 + 4 and not out.exists()
  # batch 2 half written (its last row lost) and a torn line after it
  partial.write_text("\n".join(lines[:-1]) + '\n{"index": 3, "id": 1')
  counts, messages = _run(loaded, conversations, out, sampling=sampling, seed=3)
  assert counts == note_file.Counts(read=5, kept=2, generated=3, written=5)
  assert f"keeping 2 note(s) of an earlier run from {partial}; 3 to generate" in messages
  assert out.read_text() == whole.read_text() and not partial.exists()


def test_a_partial_of_other_settings_or_conversations_is_refused(loaded, tmp_path):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  out = tmp_path / "p.jsonl"

  def kill(message):
    if message.startswith("batch 1 of"):
      raise Killed

  with pytest.raises(Killed):
    _run(loaded, conversations, out, seed=3, log=kill)
  with pytest.raises(records.InputError, match=r"p\.jsonl\.partial holds notes of an earlier run made with seed 3 "
                                               r"\(now 4\): rerun with its settings"):
    _run(loaded, conversations, out, seed=4)
  _write_conversations(conversations, CONVERSATIONS[:4])
  with pytest.raises(records.InputError, match="conversations_sha256"):
    _run(loaded, conversations, out, seed=3)
  assert note_file.partial_path(out).exists()  # nothing lost: the earlier notes are still there


def test_bad_conversations_are_named_before_any_note(loaded, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": 1, "text": "[doctor] hi"}\n\n{"id": 2, "text": "no turns here"}\n')
  with pytest.raises(records.InputError, match=r"bad\.jsonl:3 \(id '2'\): .*not a turn"):
    note_file.read_conversations(bad)
  bad.write_text('{"id": 1, "text": "[doctor] hi"}\n{"id": 1, "text": "[doctor] again"}\n')
  with pytest.raises(records.InputError, match=r"bad\.jsonl:2: duplicate id '1' \(first on line 1\)"):
    note_file.read_conversations(bad)
  bad.write_text('{"id": 1, "text": "[doctor] hi"\n')
  with pytest.raises(records.InputError, match=r"bad\.jsonl:1: malformed JSON"):
    note_file.read_conversations(bad)
  long = "\n".join(["[doctor] tell me more about the cough and the fever ."] * 200)
  conversations = _write_conversations(tmp_path / "c.jsonl", CONVERSATIONS[:2] + [("long", long)])
  out = tmp_path / "p.jsonl"
  with pytest.raises(ValueError, match=r"1 prompt\(s\) fill the model's context of 1024 tokens.*c\.jsonl:3 "
                                       r"\(id 'long'\) \(\d+ tokens\)"):
    _run(loaded, conversations, out)
  assert not out.exists() and not note_file.partial_path(out).exists()


def test_cli_writes_predictions_that_eval_notes_reads(note_checkpoint, tmp_path, capsys):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  out = tmp_path / "out" / "p.jsonl"
  assert generate.main(["--checkpoint", str(note_checkpoint), "--conversations", str(conversations),
                        "--output", str(out), "--max-new-tokens", "4", "--batch-size", "4"]) == 0
  err = capsys.readouterr().err
  assert f"wrote 5 notes to {out} (5 conversations read; 0 kept from an earlier run, 5 generated)" in err
  references = tmp_path / "r.jsonl"
  references.write_text("".join(json.dumps({"id": i, "text": "CHIEF COMPLAINT\n\nCough."}) + "\n"
                                for i, _ in CONVERSATIONS))
  assert notes_lib.main(["--predictions", str(out), "--references", str(references)]) == 0
  assert json.loads(capsys.readouterr().out)["notes"] == 5


def test_cli_refuses_bad_arguments(note_checkpoint, tmp_path, capsys):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  base = ["--checkpoint", str(note_checkpoint)]
  assert generate.main(base + ["--conversations", str(conversations)]) == 2
  assert "--output goes with --conversations" in capsys.readouterr().err
  (tmp_path / "one.txt").write_text("[doctor] hi\n")
  assert generate.main(base + ["--conversation", str(tmp_path / "one.txt"), "--output", str(tmp_path / "x")]) == 2
  assert "--output goes with --conversations" in capsys.readouterr().err
  assert generate.main(base + ["--conversations", str(conversations), "--output", str(conversations)]) == 2
  assert "is also an input" in capsys.readouterr().err
  assert generate.main(base + ["--conversations", str(conversations), "--output", str(tmp_path / "p.jsonl"),
                               "--batch-size", "0"]) == 2
  assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err
  assert generate.main(base + ["--conversations", str(tmp_path / "none.jsonl"),
                               "--output", str(tmp_path / "p.jsonl")]) == 2
  assert "none.jsonl" in capsys.readouterr().err
  assert generate.main(["--checkpoint", str(tmp_path / "nope"), "--conversations", str(conversations),
                        "--output", str(tmp_path / "p.jsonl")]) == 2
  assert "nope" in capsys.readouterr().err and not (tmp_path / "p.jsonl.partial").exists()
