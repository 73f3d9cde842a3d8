"""data prepare: round trip through ArrayRecord, dedup and counts that reconcile, atomic output, CLI, ACI-Bench."""

import json
import pathlib
import pickle

import grain
import numpy as np
import pytest

from heal_jax import config as config_lib
from heal_jax.data import check, examples, prepare, synthetic, templates
from heal_jax.data import tokenizer as tokenizer_lib

SIZES = {"general": 120, "medical": 40, "clinical": 20, "instructions": 40}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
  """(corpus dir, tokenizer dir): a small synthetic corpus and a tokenizer trained on it."""
  root = tmp_path_factory.mktemp("prepare_corpus")
  files = synthetic.generate_corpus(root / "corpus", seed=0, sizes=SIZES)
  tokenizer_lib.train_tokenizer(list(files.values()), root / "tokenizer", vocab_size=800)
  return root / "corpus", root / "tokenizer"


def _config(tok_dir, **entries):
  config = config_lib.base_config()
  config.data.tokenizer = str(tok_dir)
  for name, args in entries.items():
    config.data.sources[name] = config_lib.source_config(*args)
  return config


def _records(path, kind):
  return [r for _, r, reason in check.iter_records(path, kind) if reason is None]


def _lines(path):
  return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_round_trip_dedup_and_counts(corpus, tmp_path):
  corpus_dir, tok_dir = corpus
  general, inst = _lines(corpus_dir / "general.jsonl"), _lines(corpus_dir / "instructions.jsonl")
  words = json.loads(general[3])["text"].split()
  near = " ".join(words[:-1] + ["differently."])  # the last word changed
  (tmp_path / "docs.jsonl").write_text(
      "".join(general[:30]) + general[5] + json.dumps({"text": near}) + "\n" + "{broken\n", encoding="utf-8")
  # Instructions, plus one whose prompt repeats a document of the other source.
  (tmp_path / "inst.jsonl").write_text("".join(inst[:10]) + general[7].replace('"text"', '"prompt"').replace(
      "}", ', "response": "x"}'), encoding="utf-8")
  config = _config(tok_dir, docs=(str(tmp_path / "docs.jsonl"), "document", 1.0),
                   inst=(str(tmp_path / "inst.jsonl"), "instruction", 2.0))
  config.data.on_error = "skip"
  report = prepare.prepare(config, tmp_path / "out")
  docs, ins = report["sources"]["docs"], report["sources"]["inst"]
  assert {k: docs[k] for k in prepare.COUNT_KEYS[:5]} == {
      "read": 33, "invalid": 1, "duplicates_exact": 1, "duplicates_near": 1, "written": 30}
  # The instruction whose prompt is a kept document of `docs` is a near duplicate across sources.
  assert (ins["read"], ins["duplicates_near"], ins["written"]) == (11, 1, 10)
  assert report["totals"]["read"] == 44
  assert [item["where"] for item in docs["skipped"]] == [f"{tmp_path}/docs.jsonl:33"] and ins["skipped"] == []
  assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
  tok = tokenizer_lib.Tokenizer(tok_dir)
  for name, path, kind in (("docs", corpus_dir / "general.jsonl", "document"),
                           ("inst", tmp_path / "inst.jsonl", "instruction")):
    want = _records(path, kind)[:report["sources"][name]["written"]]
    got = prepare.open_prepared(tmp_path / "out", name)
    assert len(got) == len(want)
    total = 0
    for i, record in enumerate(want):
      tokens, mask = examples.encode(tok, *examples.texts(record, kind))
      assert got[i]["tokens"].dtype == np.int32 and got[i]["loss_mask"].dtype == np.int32
      np.testing.assert_array_equal(got[i]["tokens"], tokens)
      np.testing.assert_array_equal(got[i]["loss_mask"], mask)
      total += len(tokens)
      if kind == "instruction":  # loss on the response (and EOS) only
        prompt_len = len(tok.encode(examples.texts(record, kind)[0]))
        assert not mask[:prompt_len].any() and mask[prompt_len:].all()
    assert report["sources"][name]["tokens_written"] == total
  # Picklable (grain workers) and usable as a Grain source.
  src = pickle.loads(pickle.dumps(prepare.open_prepared(tmp_path / "out", "inst")))
  ds = grain.MapDataset.source(src).shuffle(seed=1)
  assert sorted(len(ds[i]["tokens"]) for i in range(len(ds))) == sorted(
      len(src[i]["tokens"]) for i in range(len(src)))
  with pytest.raises(prepare.DataError, match=r"no prepared source 'nope' \(prepared: docs, inst\)"):
    prepare.open_prepared(tmp_path / "out", "nope")


def test_online_training_reads_the_examples_prepare_writes(corpus, tmp_path):
  """Reading raw files online, a run keeps, normalises (NFC) and encodes exactly what `data prepare`
  writes: the same duplicates dropped (within and across sources) and the same tokens. Online runs
  used to keep every duplicate and the decomposed accents that prepare composes."""
  import unicodedata  # pylint: disable=import-outside-toplevel
  from heal_jax.data import mixture  # pylint: disable=import-outside-toplevel
  corpus_dir, tok_dir = corpus
  general, inst = _lines(corpus_dir / "general.jsonl"), _lines(corpus_dir / "instructions.jsonl")
  decomposed = json.dumps({"text": unicodedata.normalize("NFD", "Caf\u00e9 au lait, na\u00efve patient.")},
                          ensure_ascii=False)
  (tmp_path / "docs.jsonl").write_text("".join(general[:12]) + general[5] + decomposed + "\n" + "{broken\n",
                                       encoding="utf-8")
  (tmp_path / "inst.jsonl").write_text("".join(inst[:6]) + general[7].replace('"text"', '"prompt"').replace(
      "}", ', "response": "x"}'), encoding="utf-8")
  (tmp_path / "blank.jsonl").write_text("\n", encoding="utf-8")  # a file without records: said, not an error
  config = _config(tok_dir, docs=(f"{tmp_path / 'docs.jsonl'},{tmp_path / 'blank.jsonl'}", "document", 1.0),
                   inst=(str(tmp_path / "inst.jsonl"), "instruction", 1.0))
  config.data.on_error = "skip"
  config.model.vocab_size = 800
  logged = []
  report = prepare.prepare(config, tmp_path / "prep", log=logged.append)
  assert f"note: data.sources.docs: no records in {tmp_path / 'blank.jsonl'} (empty" in "\n".join(logged)
  online = mixture.load(config, tmp_path / "w", 2)
  assert online.counts["docs"]["files_without_records"] == str(tmp_path / "blank.jsonl")
  assert "files_without_records" not in online.counts["inst"]
  assert online.counts["docs"]["held_out"] == online.counts["inst"]["held_out"] == 2  # of the examples
  for name, want_written, want_dups in (("docs", 13, (1, 0)), ("inst", 6, (0, 1))):
    counts = report["sources"][name]
    assert counts["written"] == want_written
    assert (counts["duplicates_exact"], counts["duplicates_near"]) == want_dups
    assert {k: online.counts[name][k] for k in ("read", "invalid", "duplicates_exact", "duplicates_near")} == {
        k: counts[k] for k in ("read", "invalid", "duplicates_exact", "duplicates_near")}
    assert online.counts[name]["examples"] == want_written
    prepared = prepare.open_prepared(tmp_path / "prep", name)
    got = [online.train[name][i] for i in range(len(online.train[name]))] + [
        online.heldout[name][i] for i in range(len(online.heldout[name]))]
    assert len(got) == len(prepared) == want_written
    for i, example in enumerate(got):
      np.testing.assert_array_equal(example["tokens"], prepared[i]["tokens"])
      np.testing.assert_array_equal(example["loss_mask"], prepared[i]["loss_mask"])
  config.data.prepared_dir = str(tmp_path / "prep")
  from_prepared = mixture.load(config, tmp_path / "w", 2)
  assert from_prepared.records == online.records  # online <-> prepared resumes
  assert from_prepared.online_seconds is None and online.online_seconds >= 0  # only online reading is timed
  config.data.dedup.threshold = 0.9
  assert mixture.load(config, tmp_path / "w", 2).records == online.records  # prepared: its report's settings
  config.data.prepared_dir = ""
  assert mixture.load(config, tmp_path / "w", 2).records != online.records
  tok = tokenizer_lib.Tokenizer(tok_dir)
  last = online.heldout["docs"][1]["tokens"]  # the decomposed document, composed as prepare writes it
  assert tok.decode([int(t) for t in last[1:]]) == "Caf\u00e9 au lait, na\u00efve patient."


def test_cross_source_exact_duplicate(corpus, tmp_path):
  corpus_dir, tok_dir = corpus
  general = _lines(corpus_dir / "general.jsonl")
  (tmp_path / "a.jsonl").write_text("".join(general[:5]), encoding="utf-8")
  shouted = {"text": "  " + json.loads(general[2])["text"].upper().replace(" ", " \n ")}
  (tmp_path / "b.jsonl").write_text(json.dumps(shouted) + "\n" + general[6], encoding="utf-8")
  config = _config(tok_dir, a=(str(tmp_path / "a.jsonl"), "document", 1.0),
                   b=(str(tmp_path / "b.jsonl"), "document", 1.0))
  report = prepare.prepare(config, tmp_path / "out")
  b = report["sources"]["b"]
  assert (b["read"], b["duplicates_exact"], b["written"]) == (2, 1, 1)
  (tmp_path / "b.jsonl").write_text(general[0] + general[1], encoding="utf-8")  # nothing left to write
  with pytest.raises(prepare.DataError, match=r"^data.sources.b: no records left to write"):
    prepare.prepare(config, tmp_path / "out2")
  assert not (tmp_path / "out2").exists()


def test_failure_leaves_nothing_and_overwrite(corpus, tmp_path):
  corpus_dir, tok_dir = corpus
  (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": ""}\n', encoding="utf-8")
  config = _config(tok_dir, a=(str(corpus_dir / "general.jsonl"), "document", 1.0),
                   z=(str(tmp_path / "bad.jsonl"), "document", 1.0))
  out = tmp_path / "prepared" / "out"
  with pytest.raises(prepare.DataError, match=f"^{tmp_path}/bad.jsonl:2: empty text"):
    prepare.prepare(config, out)
  assert not out.exists() and list((tmp_path / "prepared").iterdir()) == []
  config.data.on_error = "skip"
  first = prepare.prepare(config, out)
  assert first["sources"]["z"]["invalid"] == 1
  assert first["sources"]["z"]["skipped"] == [{"where": f"{tmp_path}/bad.jsonl:2", "reason": "empty text in field text"}]
  with pytest.raises(prepare.DataError, match="--overwrite"):
    prepare.prepare(config, out)
  config.data.sources.z.paths = str(corpus_dir / "medical.jsonl")
  second = prepare.prepare(config, out, overwrite=True)
  assert second["sources"]["z"]["written"] == SIZES["medical"]
  assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == ["out"]
  assert len(prepare.open_prepared(out, "z")) == SIZES["medical"]


def test_a_file_bad_as_a_whole_or_an_empty_source_fails_before_any_source_is_processed(corpus, tmp_path):
  """Sources are processed in name order; a later source's CSV without its column, or one with no
  record at all, used to fail only after the earlier ones had been tokenized and written."""
  corpus_dir, tok_dir = corpus
  (tmp_path / "notes.csv").write_text("id,dialogue\n1,hello\n", encoding="utf-8")
  (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
  for z, message in ((("notes.csv", "conversation"), r"notes.csv:1: CSV missing columns: conversation, note"),
                     (("empty.jsonl", "document"), r"data.sources.z: no records in .*empty.jsonl \(empty files")):
    config = _config(tok_dir, a=(str(corpus_dir / "general.jsonl"), "document", 1.0),
                     z=(str(tmp_path / z[0]), z[1], 1.0))
    logged = []
    with pytest.raises(prepare.DataError, match=message):
      prepare.prepare(config, tmp_path / "out", log=logged.append)
    assert not any(line.startswith("prepared a") for line in logged), logged
    assert not (tmp_path / "out").exists()


def test_cli_with_workdir_and_overrides(corpus, tmp_path, capsys):
  corpus_dir, tok_dir = corpus
  rc = prepare.main(["--config", "configs/tiny.py", "--workdir", str(corpus_dir.parent),
                     f"--config.data.tokenizer={tok_dir}", "--config.data.dedup.near=false",
                     "--out", str(tmp_path / "out")])
  assert rc == 0
  printed = capsys.readouterr()
  report = json.loads(printed.out)
  assert "Generating splits" not in printed.err  # TFDS's progress bars, between our lines
  assert {k: v["written"] for k, v in report["sources"].items()} == SIZES
  assert report["dedup"]["near"] is False
  assert prepare.main(["--config", "configs/tiny.py", "--out", str(tmp_path / "out2")]) == 2
  assert "{workdir}" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_the_tiny_config_prepares_into_an_empty_work_directory(tmp_path, capsys):
  """data.bootstrap writes the bundled corpus and tokenizer first, as `train` does (prepare used to
  fail on the missing corpus files)."""
  tiny = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py")
  assert prepare.main(["--config", tiny, "--workdir", str(tmp_path / "w"),
                       "--config.data.dedup.near=false", "--out", str(tmp_path / "out")]) == 0
  report = json.loads(capsys.readouterr().out)
  assert (tmp_path / "w" / "tokenizer" / "tokenizer.model").is_file()
  written = {k: v["written"] for k, v in report["sources"].items()}
  assert written == {k: v["read"] - v["duplicates_exact"] for k, v in report["sources"].items()}
  assert sum(written.values()) > 0 and set(written) == {"general", "medical", "clinical", "instructions"}


def test_aci_bench_conversations(corpus, shared_data, tmp_path, capsys):
  """ACI-Bench dialogue/note CSV -> note-writing instructions, loss on the note only."""
  _, tok_dir = corpus
  csv_path = shared_data / "aci-bench" / "challenge_data" / "valid.csv"
  if not csv_path.is_file():
    pytest.skip(f"{csv_path} not found")
  config_path = tmp_path / "aci.py"
  config_path.write_text(
      "from heal_jax import config as config_lib\n"
      "def get_config(arg=None):\n"
      "  config = config_lib.base_config()\n"
      f"  config.data.tokenizer = {str(tok_dir)!r}\n"
      f"  config.data.sources.aci = config_lib.source_config({str(csv_path)!r}, 'conversation', 1.0)\n"
      "  return config\n", encoding="utf-8")
  assert prepare.main(["--config", str(config_path), "--out", str(tmp_path / "out"),
                       "--fields", "conversation=dialogue,note=note"]) == 0
  aci = json.loads(capsys.readouterr().out)["sources"]["aci"]
  records = [r for _, r, why in check.iter_records(csv_path, "conversation", fields={"conversation": "dialogue"})
             if why is None]
  assert aci["invalid"] == 0 and aci["read"] == len(records) >= 10
  assert aci["written"] + aci["duplicates_exact"] + aci["duplicates_near"] == aci["read"]
  got = prepare.open_prepared(tmp_path / "out", "aci")
  tok = tokenizer_lib.Tokenizer(tok_dir)
  prompt, note = examples.texts(records[0], "conversation")
  assert prompt.startswith("### Instruction:\nWrite the clinical note") and templates.NOTE_SECTIONS[0] in prompt
  tokens, mask = examples.encode(tok, prompt, note)
  np.testing.assert_array_equal(got[0]["tokens"], tokens)
  np.testing.assert_array_equal(got[0]["loss_mask"], mask)
  assert tok.decode(got[0]["tokens"][got[0]["loss_mask"] == 1]).strip() == note.strip()


def test_training_reads_prepared_data_only_as_it_was_prepared(corpus, tmp_path):
  """mixture.load refuses another tokenizer, other raw files and a truncated shard, each by name; it
  needs no raw file where there is none (prepared data copied to a cluster without the raw data)."""
  import shutil  # pylint: disable=import-outside-toplevel
  from heal_jax.data import mixture  # pylint: disable=import-outside-toplevel
  corpus_dir, tok_dir = corpus
  raw = tmp_path / "raw"
  raw.mkdir()
  shutil.copy(corpus_dir / "medical.jsonl", raw / "medical.jsonl")
  config = _config(tok_dir, medical=(str(raw / "*.jsonl"), "document", 1.0))
  config.model.vocab_size = 800
  prepare.prepare(config, tmp_path / "prep")
  config.data.prepared_dir = str(tmp_path / "prep")
  assert len(mixture.load(config, tmp_path / "w", 0).train["medical"]) == 40
  other_tok = tmp_path / "tok2"  # same corpus, another vocabulary size: other token ids
  tokenizer_lib.train_tokenizer([corpus_dir / "general.jsonl"], other_tok, vocab_size=700)
  config.data.tokenizer = str(other_tok)
  with pytest.raises(prepare.DataError, match=rf"prepared_dir={tmp_path / 'prep'} was tokenized with {tok_dir} "
                     rf"\(800 pieces\), not with config.data.tokenizer {other_tok} \(700 pieces"):
    mixture.load(config, tmp_path / "w", 0)
  with pytest.raises(prepare.DataError, match=r"was tokenized with"):  # also before the trainer locks
    mixture.check_before_writing(config, tmp_path / "w")
  config.data.tokenizer = str(tok_dir)
  (raw / "more.jsonl").write_text((corpus_dir / "general.jsonl").read_text())  # the glob now matches 2 files
  with pytest.raises(prepare.DataError, match=r"source 'medical' was prepared from other files .* now only: "
                     r"\[\('more.jsonl'"):
    mixture.load(config, tmp_path / "w", 0)
  shutil.rmtree(raw)  # no raw data here at all: the prepared data is used as it is
  assert len(mixture.load(config, tmp_path / "w", 0).train["medical"]) == 40
  report_path = tmp_path / "prep" / prepare.REPORT  # prepared before conversations were normalised
  report = json.loads(report_path.read_text())
  report_path.write_text(json.dumps({k: v for k, v in report.items() if k != "text_format"}))
  with pytest.raises(prepare.DataError, match=r"holds examples made as before 2026-11-27, not as 'conversation "
                                              r"turns normalised .*run `heal-jax data prepare` again"):
    mixture.load(config, tmp_path / "w", 0)
  report_path.write_text(json.dumps(report))
  shard = next((tmp_path / "prep" / "medical").rglob("*.array_record-00000-of-00001"))
  shard.write_bytes(shard.read_bytes()[:len(shard.read_bytes()) // 2])
  with pytest.raises(prepare.DataError, match=rf"{shard}: 0 records, dataset_info.json says 40 \(truncated"):
    mixture.load(config, tmp_path / "w", 0)
  with pytest.raises(prepare.DataError, match=rf"{shard}: 0 records"):  # what the trainer checks before it locks
    mixture.check_before_writing(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_an_output_behind_a_symlink_is_written_where_the_link_points(corpus, tmp_path):
  _, tok_dir = corpus
  config = _config(tok_dir, general=(str(corpus[0] / "general.jsonl"), "document", 1.0))
  (tmp_path / "big_storage").mkdir()
  (tmp_path / "link").symlink_to(tmp_path / "big_storage")
  prepare.prepare(config, tmp_path / "link")  # an empty directory behind the link
  assert (tmp_path / "link").is_symlink() and (tmp_path / "big_storage" / prepare.REPORT).is_file()
  prepare.prepare(config, tmp_path / "link", overwrite=True)  # a previous output behind it
  assert (tmp_path / "link").is_symlink() and len(prepare.open_prepared(tmp_path / "link", "general")) > 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["big_storage", "link"]
  (tmp_path / "unmounted").symlink_to(tmp_path / "mnt" / "big" / "prepared")
  with pytest.raises(prepare.DataError, match=r"is a link to .*mnt/big/prepared, whose folder .* does not exist"):
    prepare.prepare(config, tmp_path / "unmounted")
  assert not (tmp_path / "mnt").exists()
  (tmp_path / "loop").symlink_to(tmp_path / "loop")
  with pytest.raises(prepare.DataError, match="loop"):
    prepare.prepare(config, tmp_path / "loop")


def test_an_output_that_is_not_a_prepare_output_is_never_replaced(corpus, tmp_path):
  _, tok_dir = corpus
  config = _config(tok_dir, general=(str(corpus[0] / "general.jsonl"), "document", 1.0))
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  with pytest.raises(prepare.DataError, match=f"{mine} is not empty and not a `data prepare` output"):
    prepare.prepare(config, mine, overwrite=True)
  assert (mine / "notes.txt").read_text() == "keep me"
  (tmp_path / "f").write_text("x")
  with pytest.raises(prepare.DataError, match="is a file, not a directory"):
    prepare.prepare(config, tmp_path / "f", overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "mine"]  # no staging directory left


@pytest.mark.parametrize("jax_imported", [False, True])
def test_sigterm_during_prepare_leaves_no_staging_directory(corpus, tmp_path, jax_imported):
  """Exit 143 and no staging directory, also in a process that imported jax (as `data prepare
  --workdir` does for a bootstrap config): jax's gc callback swallowed the handler's SystemExit when
  the signal came during a collection, so prepare ran on to the end."""
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  corpus_dir, tok_dir = corpus
  big = tmp_path / "big.jsonl"  # enough records that prepare is still running when the signal comes
  big.write_text("".join(json.dumps({"text": f"record {i} " + "word " * 50 + str(i)}) + "\n" for i in range(200000)))
  cfg = tmp_path / "cfg.py"
  cfg.write_text("from heal_jax import config as c\n\ndef get_config():\n  config = c.base_config()\n"
                 f"  config.data.tokenizer = {str(tok_dir)!r}\n"
                 f"  config.data.sources.big = c.source_config({str(big)!r}, 'document', 1.0)\n  return config\n")
  start = (["-c", "import sys; from heal_jax.data import mixture; from heal_jax import cli; sys.exit(cli.main())"]
           if jax_imported else ["-m", "heal_jax.cli"])
  proc = subprocess.Popen([sys.executable, *start, "data", "prepare", "--config", str(cfg),
                           "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 60
  while time.time() < deadline and not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir()):
    time.sleep(0.05)
  assert any(p.name.startswith(".out.partial") for p in tmp_path.iterdir()), "prepare never started writing"
  proc.send_signal(signal.SIGTERM)
  proc.communicate(timeout=60)
  assert proc.returncode == 143
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out") or p.name == "out"]
