"""`heal-jax generate --conversations C.jsonl --output P.jsonl`: order, equality with one-at-a-time notes,
each note's own room in the context, resuming after a kill (a real SIGTERM too), what the partial file
must agree with (the model by its weights, not its path), locking, bad input, and `eval notes` reading
the result."""

import dataclasses
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import pytest

from heal_jax.checkpoint import restore
from heal_jax.data import tokenizer as tokenizer_lib
from heal_jax.eval import notes as notes_lib, records
from heal_jax.infer import decode, generate, note_file
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
  return dataclasses.replace(model, params=params, weights_digest=None)  # changed weights: no stored digest


def _write_conversations(path, rows=CONVERSATIONS):
  path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))
  return path


def _run(loaded, conversations, out, *, sampling=Sampling(), seed=0, batch_size=2, log=None, stop=None):
  messages = []
  counts = note_file.write_notes(loaded, note_file.read_conversations(conversations), out,
                                 conversations=conversations, max_new_tokens=NEW, sampling=sampling, seed=seed,
                                 batch_size=batch_size, dtype=None, log=log or messages.append, stop=stop)
  return counts, messages


def _kill_after(batch):
  def log(message):
    if message.startswith(f"batch {batch} of"):
      raise Killed
  return log


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
  progress = [m for m in messages if m.startswith("batch ")]
  assert [m.split(",")[0] for m in progress] == ["batch 1 of 3: 2 of 5 notes", "batch 2 of 3: 4 of 5 notes",
                                                 "batch 3 of 3: 5 of 5 notes"]
  assert re.fullmatch(r"batch 3 of 3: 5 of 5 notes, \d+:\d\d:\d\d elapsed, about 0:00:00 left", progress[-1])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "p.jsonl"]  # no partial, no temporary


def test_each_note_has_its_own_room_in_the_context(loaded, tmp_path):
  """A context that leaves the longest prompt 3 new tokens: it stops there ("context"), and the short
  prompts batched with it still get their NEW tokens, as when each is generated alone."""
  texts = [t for _, t in CONVERSATIONS]
  lengths = [len(p) for p in generate.plan_notes(loaded, texts, max_new_tokens=NEW).prompts]
  small = dataclasses.replace(loaded, cfg=loaded.cfg.replace(max_position_embeddings=max(lengths) + 3))
  messages = []
  plan = generate.plan_notes(small, texts, max_new_tokens=NEW, batch_size=5, log=messages.append)
  assert plan.rooms == [min(NEW, max(lengths) + 3 - n) for n in lengths] and plan.rooms[1] == 3
  assert plan.batches == [[1, 3, 4, 0, 2]] and plan.sizes == [NEW]
  short = sum(r < NEW for r in plan.rooms)
  assert messages == [f"warning: {short} of 5 note(s) have room for fewer than {NEW} new tokens in the model's "
                      f"context of {max(lengths) + 3} (as few as 3: the longest prompt has {max(lengths)} tokens); "
                      "each stops there"]
  tok = tokenizer_lib.Tokenizer(small.tokenizer_dir)
  (_, notes), = generate.generate_batches(small.cfg, small.params, tok, plan, stop_strings=())
  notes = dict(notes)
  for i, prompt in enumerate(plan.prompts):  # each alone, by the decoder with no plan, room or batch
    alone = decode.generate(small.cfg, jax.device_put(small.params), [prompt], max_new_tokens=plan.rooms[i],
                            eos_id=tok.eos_id, vocab_limit=tok.vocab_size)[0]
    assert notes[i].text == tok.decode(alone).strip() and notes[i].new_tokens == len(alone)
    cut = len(alone) == plan.rooms[i]
    assert notes[i].ended == ("eos" if not cut else "context" if plan.rooms[i] < NEW else "limit")
  assert notes[1].ended == "context"  # this model makes no EOS in 3 tokens: the context cut the note
  assert max(n.new_tokens for n in notes.values()) > 3  # the short prompts were not cut to the long one's room


def test_a_killed_run_resumes_to_the_uninterrupted_notes(loaded, tmp_path):
  """Sampled notes: kept batches plus regenerated ones equal one uninterrupted run, also when the
  kill cut a line short or left a batch half written."""
  conversations = _write_conversations(tmp_path / "c.jsonl")
  sampling = Sampling(temperature=1.0)
  whole = tmp_path / "whole.jsonl"
  _run(loaded, conversations, whole, sampling=sampling, seed=3)
  out = tmp_path / "p.jsonl"
  with pytest.raises(Killed):
    _run(loaded, conversations, out, sampling=sampling, seed=3, log=_kill_after(2))
  partial = note_file.partial_path(out)
  lines = partial.read_text().splitlines()
  assert json.loads(lines[0])["settings"]["seed"] == 3 and len(lines) == 1 + 4 and not out.exists()
  # batch 2 half written (its last row lost) and a torn line after it
  partial.write_text("\n".join(lines[:-1]) + '\n{"index": 3, "id": 1')
  counts, messages = _run(loaded, conversations, out, sampling=sampling, seed=3)
  assert counts == note_file.Counts(read=5, kept=2, generated=3, written=5)
  assert f"keeping 2 note(s) of an earlier run from {partial}; 3 to generate" in messages
  assert out.read_text() == whole.read_text() and not partial.exists()


def test_a_stop_request_ends_after_the_batch_and_the_rerun_continues(loaded, tmp_path):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  out = tmp_path / "p.jsonl"
  stop = threading.Event()
  stop.set()
  with pytest.raises(note_file.Interrupted, match=r"2 of 5 notes are kept in .*p\.jsonl\.partial"):
    _run(loaded, conversations, out, stop=stop)
  assert _run(loaded, conversations, out)[0] == note_file.Counts(read=5, kept=2, generated=3, written=5)


def test_the_partial_must_agree_on_the_model_and_settings(loaded, note_checkpoint, tmp_path):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  out = tmp_path / "p.jsonl"
  sampling = Sampling(temperature=1.0)
  with pytest.raises(Killed):
    _run(loaded, conversations, out, sampling=sampling, seed=3, log=_kill_after(1))
  partial = note_file.partial_path(out)
  with pytest.raises(records.InputError, match=r"p\.jsonl\.partial holds notes of an earlier run \(model .*\) made "
                                               r"with seed 3 \(now 4\): rerun with its settings"):
    _run(loaded, conversations, out, sampling=sampling, seed=4)
  other = restore.load_model(note_checkpoint)  # the same path, other weights (not sharpened)
  with pytest.raises(records.InputError, match="model_fingerprint"):
    _run(other, conversations, out, sampling=sampling, seed=3)
  moved = dataclasses.replace(loaded, source="/elsewhere/same-weights")  # the same weights by another path
  with pytest.raises(Killed):  # accepted: it runs on to batch 2
    _run(moved, conversations, out, sampling=sampling, seed=3, log=_kill_after(2))
  _write_conversations(conversations, CONVERSATIONS[:4])
  with pytest.raises(records.InputError, match="conversations_sha256"):
    _run(loaded, conversations, out, sampling=sampling, seed=3)
  assert partial.exists()  # nothing lost: the earlier notes are still there


def test_greedy_runs_do_not_record_sampling_settings(loaded, tmp_path):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  out = tmp_path / "p.jsonl"
  with pytest.raises(Killed):
    _run(loaded, conversations, out, seed=3, batch_size=2, log=_kill_after(1))
  head = json.loads(note_file.partial_path(out).read_text().splitlines()[0])["settings"]
  assert (head["seed"], head["top_k"], head["top_p"]) == (None, None, None)
  assert _run(loaded, conversations, out, seed=4)[0].kept == 2  # greedy: another seed changes nothing


def test_damaged_partial_files_are_named(loaded, tmp_path):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  out = tmp_path / "p.jsonl"
  partial = note_file.partial_path(out)
  for bad in ('{"settings": 1}\n', "null\n", "[1, 2]\n"):
    partial.write_text(bad)
    with pytest.raises(records.InputError, match=r"p\.jsonl\.partial:1: not the settings line"):
      _run(loaded, conversations, out)
  partial.unlink()
  with pytest.raises(Killed):
    _run(loaded, conversations, out, log=_kill_after(1))
  lines = partial.read_text().splitlines()
  for field, value in (("text", 12345), ("ended", "bogus"), ("new_tokens", "x"), ("new_tokens", True),
                       ("index", True)):
    row = json.loads(lines[1])
    row[field] = value
    partial.write_text("\n".join([lines[0], json.dumps(row)] + lines[2:]) + "\n")
    with pytest.raises(records.InputError, match=r"p\.jsonl\.partial:2: not a note row"):
      _run(loaded, conversations, out)


def test_an_output_that_is_not_a_notes_file_is_refused(loaded, tmp_path):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  manifest = tmp_path / "heal_checkpoint.json"
  manifest.write_text('{"format": "heal-jax checkpoint"}\n')
  with pytest.raises(records.InputError, match="exists and is not a notes file"):
    _run(loaded, conversations, manifest)
  assert manifest.read_text() == '{"format": "heal-jax checkpoint"}\n'
  with pytest.raises(records.InputError, match=r"not ending in \.partial"):
    _run(loaded, conversations, tmp_path / "x.jsonl.partial")
  out = tmp_path / "p.jsonl"
  _run(loaded, conversations, out)
  assert _run(loaded, conversations, out)[0].generated == 5  # a finished notes file is replaced by a rerun


def test_a_second_run_on_the_same_output_stops_at_once(loaded, tmp_path, capsys):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  out = tmp_path / "p.jsonl"
  with open(note_file.partial_path(out), "ab") as held:
    fcntl.flock(held.fileno(), fcntl.LOCK_EX)
    with pytest.raises(records.InputError, match="another heal-jax generate is writing this output"):
      _run(loaded, conversations, out)
    # the command takes the lock before loading the model: a checkpoint that is not there is not reached
    assert generate.main(["--checkpoint", str(tmp_path / "nope"), "--conversations", str(conversations),
                          "--output", str(out)]) == 2
    assert "another heal-jax generate is writing this output" in capsys.readouterr().err


def test_the_model_is_named_by_its_stored_checksums_not_its_path(note_checkpoint, tmp_path):
  """A converted checkpoint's CRC-32s (checked when it loads) identify its weights: the same model by
  a symlink has the same fingerprint; other weights (or a dtype cast in the settings) do not."""
  link = tmp_path / "link"
  link.symlink_to(note_checkpoint)
  by_path, by_link = restore.load_model(note_checkpoint), restore.load_model(link)
  assert by_path.weights_digest and by_path.source != by_link.source
  assert note_file.model_fingerprint(by_path) == note_file.model_fingerprint(by_link)
  hashed = dataclasses.replace(by_path, weights_digest=None)  # no stored checksums: the weights are summed
  changed = dataclasses.replace(hashed, params=jax.tree.map(lambda x: x + 1, by_path.params))
  assert note_file.model_fingerprint(hashed) != note_file.model_fingerprint(changed)


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
  conversations = _write_conversations(tmp_path / "c.jsonl", CONVERSATIONS[:2] + [("long", long), ("l2", long)])
  out = tmp_path / "p.jsonl"
  with pytest.raises(ValueError, match=r"2 prompt\(s\) fill the model's context of 1024 tokens.*c\.jsonl:3 "
                                       r"\(id 'long'\) \(\d+ tokens\), .*c\.jsonl:4 \(id 'l2'\) \(\d+ tokens\)$"):
    _run(loaded, conversations, out)
  assert not out.exists() and not note_file.partial_path(out).exists()


def test_cli_writes_predictions_that_eval_notes_reads(note_checkpoint, tmp_path, capsys):
  conversations = _write_conversations(tmp_path / "c.jsonl")
  out = tmp_path / "out" / "p.jsonl"
  assert generate.main(["--checkpoint", str(note_checkpoint), "--conversations", str(conversations),
                        "--output", str(out), "--max-new-tokens", "4", "--batch-size", "4"]) == 0
  err = capsys.readouterr().err
  assert f"wrote 5 notes to {out} (5 conversations read; 0 kept from an earlier run, 5 generated)" in err
  drafted = tmp_path / "drafted.jsonl"  # speculative decoding writes the same file
  assert generate.main(["--checkpoint", str(note_checkpoint), "--conversations", str(conversations),
                        "--output", str(drafted), "--max-new-tokens", "4", "--batch-size", "4", "--lookahead", "3"]) == 0
  assert drafted.read_text() == out.read_text()
  capsys.readouterr()
  references = tmp_path / "r.jsonl"
  references.write_text("".join(json.dumps({"id": i, "text": "CHIEF COMPLAINT\n\nCough."}) + "\n"
                                for i, _ in CONVERSATIONS))
  assert notes_lib.main(["--predictions", str(out), "--references", str(references)]) == 0
  assert json.loads(capsys.readouterr().out)["notes"] == 5


def test_cli_sigterm_keeps_the_finished_batches_and_the_rerun_equals_one_run(note_checkpoint, tmp_path):
  """A real SIGTERM to the command: exit 143 with a message; the same command then finishes, and its
  file equals one uninterrupted run's."""
  many = [(f"n{k}", "\n".join(TURNS[:2 + k % 5])) for k in range(24)]
  conversations = _write_conversations(tmp_path / "c.jsonl", many)
  command = [sys.executable, "-m", "heal_jax.cli", "generate", "--checkpoint", str(note_checkpoint),
             "--conversations", str(conversations), "--max-new-tokens", "24", "--batch-size", "2"]
  # Without the tests' shared XLA program cache: each run compiles its prompt shapes as it reaches them,
  # which keeps the interrupted run going long enough for the signal to find it mid-file.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  whole = tmp_path / "whole.jsonl"
  subprocess.run(command + ["--output", str(whole)], check=True, capture_output=True, timeout=300, env=env)
  out = tmp_path / "p.jsonl"
  proc = subprocess.Popen(command + ["--output", str(out)], stderr=subprocess.PIPE, text=True, env=env)
  partial = note_file.partial_path(out)
  deadline = time.time() + 120
  while time.time() < deadline and not (partial.exists() and partial.read_text().count("\n") >= 3):
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode != 0, "the run finished before SIGTERM arrived: give it more conversations"
  assert proc.returncode == 143 and "SIGTERM: the finished batches are kept in" in err and not out.exists()
  rerun = subprocess.run(command + ["--output", str(out)], capture_output=True, text=True, timeout=300, env=env)
  assert rerun.returncode == 0 and "kept from an earlier run" in rerun.stderr
  assert out.read_text() == whole.read_text()


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
  assert generate.main(base + ["--conversation", str(tmp_path / "one.txt"), "--batch-size", "4"]) == 2
  assert "--batch-size goes with --conversations" in capsys.readouterr().err
  assert generate.main(base + ["--conversations", str(tmp_path / "none.jsonl"),
                               "--output", str(tmp_path / "p.jsonl")]) == 2
  assert "none.jsonl" in capsys.readouterr().err
  assert generate.main(["--checkpoint", str(tmp_path / "nope"), "--conversations", str(conversations),
                        "--output", str(tmp_path / "p.jsonl")]) == 2
  assert "nope" in capsys.readouterr().err and not (tmp_path / "p.jsonl.partial").exists()


def test_notes_on_a_mesh_equal_notes_on_one_device(loaded, tmp_path):
  """The model split over 8 devices (data 2 x tensor 4: batches of 2 rows, padded up to 2 per data
  shard) writes the same notes as on one device."""
  from heal_jax.infer import placement  # pylint: disable=import-outside-toplevel
  conversations = _write_conversations(tmp_path / "c.jsonl")
  one = tmp_path / "one.jsonl"
  _run(loaded, conversations, one, batch_size=3)
  split = tmp_path / "split.jsonl"
  with placement.placed(loaded, "data=2,tensor=-1") as on_mesh:
    layer = on_mesh.params["layers_0"]["mlp"]["w_gate"]["kernel"]
    assert len(layer.sharding.device_set) == 8 and layer.sharding.spec[1] == "tensor"
    note_file.write_notes(on_mesh, note_file.read_conversations(conversations), split, conversations=conversations,
                          max_new_tokens=NEW, sampling=Sampling(), seed=0, batch_size=3, dtype=None,
                          log=lambda m: None, width=placement.batch_rows(3, "data=2,tensor=-1"))
  assert placement.batch_rows(3, "data=2,tensor=-1") == 4
  assert split.read_text() == one.read_text()


def test_mesh_specs_are_checked():
  from heal_jax.infer import placement  # pylint: disable=import-outside-toplevel
  assert placement.parse_mesh("tensor=4, fsdp=2") == {"data": 1, "fsdp": 2, "tensor": 4}
  with pytest.raises(ValueError, match="unknown axis 'model'"):
    placement.parse_mesh("model=8")
  with pytest.raises(ValueError, match="'tensor=x' is not AXIS=INTEGER"):
    placement.parse_mesh("tensor=x")
  with pytest.raises(ValueError, match="uses 2 devices, 8 are present"):
    placement.batch_rows(1, "tensor=2")
  with pytest.raises(ValueError, match="axis 'tensor' is given twice"):
    placement.parse_mesh("tensor=2,tensor=4")


def test_a_mesh_that_would_copy_a_large_parameter_to_every_device_is_refused(loaded, monkeypatch):
  """4 heads on tensor=8 cannot split the attention weights: each device would hold them whole. The
  limit is lowered to this tiny model's size; a data-only mesh copies the model on purpose."""
  from heal_jax.infer import placement  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(placement, "_REPLICATED_LIMIT", 100)
  with pytest.raises(ValueError, match=r"--mesh tensor=-1: parameter layers_0/attention/\w+/kernel .* would be "
                                       r"replicated .*: choose fsdp and tensor sizes that divide"):
    with placement.placed(loaded, "tensor=-1"):
      pass
  with placement.placed(loaded, "data=-1") as copied:
    assert copied.params["embed"]["embedding"].sharding.is_fully_replicated
