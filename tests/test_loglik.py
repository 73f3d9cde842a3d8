"""Log-likelihood scoring against a plain transformers + torch implementation of the harness rules.

A tiny random model (tokenizer trained on PubMedQA/MedQA text, hidden 64, 2 layers) is written as a heal-jax
checkpoint and exported to HF; the reference reads the HF export with AutoTokenizer and LlamaForCausalLM.
"""

import json

import jax
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from heal_jax.checkpoint import hf_convert, random_init
from heal_jax.checkpoint.restore import load_model
from heal_jax.data.tokenizer import Tokenizer, train_tokenizer
from heal_jax.eval import loglik, output, perplexity, run, tasks
from heal_jax.model.config import ModelConfig

MEDQA_FILE = "medqa/US_4_options_phrases_no_exclude_test.jsonl"
N_QUESTIONS = 50


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
  """(loaded heal-jax model, our Tokenizer, HF tokenizer, torch model, checkpoint dir)."""
  tmp = tmp_path_factory.mktemp("loglik")
  questions = json.loads((shared_data / "pubmedqa" / "ori_pqal.json").read_text())
  texts = [" ".join(q["CONTEXTS"]) + " " + q["QUESTION"] for q in list(questions.values())[:300]]
  for line in (shared_data / MEDQA_FILE).read_text().splitlines()[:300]:
    row = json.loads(line)
    texts.append(row["question"] + " " + " ".join(row["options"].values()))
  tok = train_tokenizer(texts, tmp / "tok", vocab_size=2000, num_threads=2)
  cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_layers=2,
                    num_heads=4, num_kv_heads=2, max_position_embeddings=1024)
  random_init.write_random_checkpoint(cfg, tmp / "ck", seed=3, tokenizer_dir=tmp / "tok")
  hf_convert.orbax_to_hf(tmp / "ck", tmp / "hf")
  model = load_model(tmp / "ck", "float32")
  hf_tok = AutoTokenizer.from_pretrained(tmp / "hf")
  torch_model = LlamaForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32).eval()
  return model, Tokenizer(model.tokenizer_dir), hf_tok, torch_model, tmp / "ck"


# --- the reference: lm-evaluation-harness's HFLM rules, written out plainly ---------------------

def _ref_encode_pair(hf_tok, context, continuation, add_bos):
  n_spaces = len(context) - len(context.rstrip())
  if n_spaces > 0:
    continuation = context[-n_spaces:] + continuation
    context = context[:-n_spaces]
  whole = hf_tok(context + continuation, add_special_tokens=add_bos)["input_ids"]
  context_enc = hf_tok(context, add_special_tokens=add_bos)["input_ids"]
  return context_enc, whole[len(context_enc):]


def _ref_loglikelihood(torch_model, context_enc, continuation_enc, max_length):
  inp = torch.tensor((context_enc + continuation_enc)[-(max_length + 1):][:-1])[None]
  with torch.no_grad():
    logprobs = torch.log_softmax(torch_model(inp).logits.double(), dim=-1)[0]
  contlen = len(continuation_enc)
  logprobs = logprobs[inp.shape[1] - contlen:]
  cont = torch.tensor(continuation_enc)
  greedy = bool((logprobs.argmax(-1) == cont).all())
  return float(logprobs.gather(1, cont[:, None]).sum()), greedy


def _ref_rows(torch_model, hf_tok, examples, add_bos=True, max_length=1024):
  rows = []
  for ex in examples:
    res = [_ref_loglikelihood(torch_model, *_ref_encode_pair(hf_tok, ex.query, cont, add_bos), max_length)
           for cont in ex.continuations]
    lls = np.array([r[0] for r in res])
    rows.append({"loglikelihoods": lls, "is_greedy": [r[1] for r in res], "pred": int(np.argmax(lls)),
                 "pred_norm": int(np.argmax(lls / np.array([len(c) for c in ex.choices])))})
  return rows


def _check_rows(ours, ref):
  assert len(ours) == len(ref)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a["loglikelihoods"], b["loglikelihoods"], atol=1e-4, rtol=0, err_msg=str(a["id"]))
    assert (a["pred"], a["pred_norm"], a["is_greedy"]) == (b["pred"], b["pred_norm"], b["is_greedy"]), a["id"]


def test_harness_tokenization_rules():
  class Chars:  # one token per character, BOS = 1
    bos_id = 1

    def encode(self, text, add_bos=True, add_eos=False):
      del add_eos
      return ([1] if add_bos else []) + [ord(c) for c in text]

  assert loglik.split_trailing_space("Answer: \n", "yes") == ("Answer:", " \nyes")
  assert loglik.encode_pair(Chars(), "ab ", "c") == ([1, 97, 98], [32, 99])
  assert loglik.encode_pair(Chars(), "ab", " c", add_bos=False) == ([97, 98], [32, 99])
  assert loglik.encode_pair(Chars(), "", "c") == ([1], [99])

  class Merging(Chars):  # "es" is one token (500) wherever it occurs: "ye" + "sx" splits inside it
    def encode(self, text, add_bos=True, add_eos=False):
      ids = super().encode(text.replace("es", "\x00"), add_bos, add_eos)
      return [500 if i == 0 else i for i in ids]

  # the harness reads the context encoded alone, then the whole encoding past its length
  assert loglik.encode_pair(Merging(), "ye", "sx") == ([1, 121, 101], [120])
  w = loglik.harness_window([1, 2, 3, 4, 5], [6, 7], max_length=4)
  assert (w.inputs, w.targets, w.n_scored) == ((3, 4, 5, 6), (4, 5, 6, 7), 2)
  assert loglik.default_buckets(4096) == (128, 256, 512, 1024, 2048, 4096)
  assert loglik.default_buckets(100) == (100,)


@pytest.mark.parametrize("task", ["pubmedqa", "medqa"])
def test_choices_match_transformers(setup, shared_data, task):
  model, tok, hf_tok, torch_model, _ = setup
  data = shared_data / ("pubmedqa" if task == "pubmedqa" else MEDQA_FILE)
  examples = tasks.load_task(task, data)[0][:N_QUESTIONS]
  ours = loglik.evaluate(task, model.cfg, model.params, tok, examples, batch_size=8, add_bos=model.add_bos)
  assert model.add_bos
  _check_rows(ours["rows"], _ref_rows(torch_model, hf_tok, examples))
  assert ours["n"] == N_QUESTIONS
  assert ours["acc"] == np.mean([r["pred"] == r["gold"] for r in ours["rows"]])


def test_truncation_and_no_bos_match_transformers(setup, shared_data):
  model, tok, hf_tok, torch_model, _ = setup
  examples = tasks.load_pubmedqa(shared_data / "pubmedqa")[:4]
  ours = loglik.evaluate("pubmedqa", model.cfg, model.params, tok, examples, batch_size=4, add_bos=False,
                         max_length=100)
  _check_rows(ours["rows"], _ref_rows(torch_model, hf_tok, examples, add_bos=False, max_length=100))


def test_perplexity_matches_transformers(setup, shared_data, tmp_path, capsys):
  model, tok, hf_tok, torch_model, ckpt = setup
  rows = [json.loads(line) for line in (shared_data / MEDQA_FILE).read_text().splitlines()[:6]]
  texts = [r["question"] for r in rows] + ["Short.", ""]
  data = tmp_path / "texts.jsonl"
  # Rows name each text's line (a blank line after the first) and its id, where it has one.
  data.write_text("".join(json.dumps({"text": t, **({"id": f"note-{i}"} if i < 2 else {})}) + "\n" +
                          ("\n" if i == 0 else "") for i, t in enumerate(texts)))
  total, count, per_text = 0.0, 0, []
  for t in texts:
    ids = hf_tok(t)["input_ids"]  # BOS + text
    if len(ids) < 2:
      per_text.append((0.0, 0))
      continue
    with torch.no_grad():
      logprobs = torch.log_softmax(torch_model(torch.tensor(ids[:-1])[None]).logits.double(), -1)[0]
    per_text.append((-float(logprobs.gather(1, torch.tensor(ids[1:])[:, None]).sum()), len(ids) - 1))
    total -= per_text[-1][0]
    count += len(ids) - 1
  ours = perplexity.perplexity(model.cfg, model.params, tok, perplexity.read_texts(data), batch_size=4)
  assert ours["tokens"] == count and ours["texts"] == len(texts)
  np.testing.assert_allclose(ours["nll_per_token"], -total / count, atol=1e-4, rtol=0)
  assert [r["index"] for r in ours["rows"]] == list(range(len(texts)))
  assert [r["tokens"] for r in ours["rows"]] == [n for _, n in per_text]
  np.testing.assert_allclose([r["nll"] for r in ours["rows"]], [nll for nll, _ in per_text], atol=1e-3, rtol=0)
  assert ours["rows"][-1]["nll_per_token"] is None  # the empty text
  # Windows shorter than the texts predict every token once, each from a full-length context.
  short = perplexity.perplexity(model.cfg, model.params, tok, texts, batch_size=4, max_length=32)
  assert short["tokens"] == count and short["nll_per_token"] != ours["nll_per_token"]
  out = tmp_path / "ppl_rows.jsonl"
  assert run.main(["perplexity", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(out)]) == 0
  written = [json.loads(line) for line in out.read_text().splitlines()]  # strict JSON: null, never NaN
  assert [r["tokens"] for r in written] == [n for _, n in per_text] and written[-1]["nll_per_token"] is None
  assert [r["line"] for r in written] == [1] + list(range(3, len(texts) + 2))
  assert [r.get("id") for r in written[:3]] == ["note-0", "note-1", None]
  capsys.readouterr()
  # The model split over the 8 devices (fsdp 2 x tensor 4; 3 rows a batch round up to 4): the same NLL.
  assert run.main(["perplexity", "--checkpoint", str(ckpt), "--data", str(data), "--mesh", "fsdp=2,tensor=-1",
                   "--batch-size", "3"]) == 0
  np.testing.assert_allclose(json.loads(capsys.readouterr().out)["nll_per_token"], -total / count, atol=1e-4, rtol=0)
  (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": ""}\n')
  with pytest.raises(ValueError, match="no tokens to score: all 2 texts are empty"):  # was NaN in the JSON
    perplexity.perplexity(model.cfg, model.params, tok, perplexity.read_texts(tmp_path / "blank.jsonl"))


def test_rolling_windows_cover_each_token_once():
  ids = list(range(10, 33))
  for max_length in (1, 4, 7, 23, 50):
    windows = perplexity.rolling_windows(ids, 1, max_length)
    predicted = [t for w in windows for t in w.targets[len(w.targets) - w.n_scored:]]
    assert predicted == ids
    stream = [1] + ids
    for w in windows:
      assert len(w.inputs) <= max_length and len(w.inputs) == len(w.targets)
      start = stream.index(w.inputs[0]) if w.inputs[0] != 1 else 0
      assert list(w.inputs) == stream[start:start + len(w.inputs)]
      assert list(w.targets) == stream[start + 1:start + 1 + len(w.targets)]
  assert not perplexity.rolling_windows([], 1, 8)
  for bad in (0, -5):  # -5 used to loop forever, growing the window list until memory ran out
    with pytest.raises(ValueError, match="max_length must be >= 1"):
      perplexity.rolling_windows(ids, 1, bad)


def test_an_unwritable_output_is_refused_before_loading(tmp_path, capsys):
  """A directory (or an input) as --output used to fail only after every question was scored."""
  texts = tmp_path / "t.jsonl"
  texts.write_text('{"text": "a"}\n')
  for task, out in (("perplexity", tmp_path), ("medqa", texts)):
    assert run.main([task, "--checkpoint", str(tmp_path / "none"), "--data", str(texts), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: cannot write a file there" in err or f"{out} is also an input" in err
    assert "none" not in err  # the checkpoint was never opened


def test_max_length_below_one_is_refused_before_loading(tmp_path, capsys):
  texts = tmp_path / "t.jsonl"
  texts.write_text('{"text": "a"}\n')
  for task in ("perplexity", "pubmedqa"):
    assert run.main([task, "--checkpoint", str(tmp_path / "none"), "--data", str(texts), "--max-length", "0"]) == 2
    assert "--max-length must be >= 1, got 0" in capsys.readouterr().err


def test_run_main_writes_rows(setup, shared_data, tmp_path, capsys):
  _, _, _, _, ckpt = setup
  out = tmp_path / "rows.jsonl"
  argv = ["medqa", "--checkpoint", str(ckpt), "--data", str(shared_data / MEDQA_FILE), "--limit", "5",
          "--output", str(out), "--batch-size", "4"]
  assert run.main(argv) == 0
  captured = capsys.readouterr()
  summary = json.loads(captured.out)
  assert f"scoring {ckpt}\n" in captured.err  # which model was scored
  assert set(summary) == {"task", "n", "acc", "acc_norm"} and summary["task"] == "medqa" and summary["n"] == 5
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  medqa = tasks.load_task("medqa", shared_data / MEDQA_FILE)[0]
  assert [r["id"] for r in rows] == [0, 1, 2, 3, 4] == [e.id for e in medqa[:5]]  # --limit: the first N, as the harness
  assert all(r["choices"] == ["A", "B", "C", "D"] and len(r["loglikelihoods"]) == 4 for r in rows)
  assert rows[0]["gold"] == medqa[rows[0]["id"]].gold and rows[0]["pred"] == int(np.argmax(rows[0]["loglikelihoods"]))
  assert summary["acc"] == np.mean([r["pred"] == r["gold"] for r in rows])
  pubmedqa = tasks.load_task("pubmedqa", shared_data / "pubmedqa")[0]
  truth = json.loads((shared_data / "pubmedqa" / "test_ground_truth.json").read_text())
  for flag, ids in [("--limit", list(truth)[:2]), ("--sample", [e.id for e in tasks.subset(pubmedqa, 2)])]:
    assert run.main(["pubmedqa", "--checkpoint", str(ckpt), "--data", str(shared_data / "pubmedqa"),
                     flag, "2", "--num-fewshot", "1", "--output", str(out)]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ids
    err = capsys.readouterr().err  # the first questions of PubMedQA's file are all "yes"
    assert ("note: the first 2 questions all have the answer 'yes'" in err) == (flag == "--limit")
  assert set(ids) != set(list(truth)[:2])  # the seeded sample is not the first two
  texts = tmp_path / "texts.jsonl"
  texts.write_text('{"text": "fever and cough"}\n{"text": "no rash"}\n')
  assert run.main(["perplexity", "--checkpoint", str(ckpt), "--data", str(texts), "--limit", "5"]) == 0
  scored = capsys.readouterr()
  assert json.loads(scored.out)["texts"] == 2
  assert f"note: --limit 5 is more than the 2 texts in {texts}; scoring all 2" in scored.err
  for bad, message in [(["--limit", "1", "--sample", "1"], "--limit (the first N) and --sample (a random N) are "
                                                            "alternatives"),
                        (["--sample", "0"], "--sample must be >= 1, got 0")]:
    assert run.main(["pubmedqa", "--checkpoint", str(ckpt), "--data", str(shared_data / "pubmedqa")] + bad) == 2
    assert message in capsys.readouterr().err
  assert run.main(["perplexity", "--checkpoint", str(ckpt), "--data", str(texts), "--sample", "1"]) == 2
  assert "perplexity takes --limit N" in capsys.readouterr().err
  assert run.main(["pubmedqa", "--checkpoint", str(ckpt), "--data", str(tmp_path)]) == 2
  assert f"{tmp_path / 'ori_pqal.json'}: file not found" in capsys.readouterr().err
  assert run.main(["medqa", "--checkpoint", str(tmp_path), "--data", str(shared_data / MEDQA_FILE)]) == 2
  assert str(tmp_path) in capsys.readouterr().err
  assert "left-truncated" not in captured.err  # the 5 questions fit the model's context
  assert run.main([*argv[:7], "--max-length", "32"]) == 0
  assert "5 of 5 questions' prompts were longer than 32 tokens and were left-truncated" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (("--num-fewshot", "1"), "apply to pubmedqa and medqa, not perplexity"),
    (("--fewshot-data", "x.jsonl"), "apply to pubmedqa and medqa, not perplexity"),
    (("--seed", "-5"), "--seed must be >= 0, got -5"),
])
def test_options_that_would_be_ignored_are_refused(tmp_path, capsys, extra, message):
  texts = tmp_path / "t.jsonl"
  texts.write_text('{"text": "a"}\n')
  assert run.main(["perplexity", "--checkpoint", str(tmp_path / "none"), "--data", str(texts), *extra]) == 2
  assert message in capsys.readouterr().err
  assert run.main(["medqa", "--checkpoint", str(tmp_path / "none"), "--data", str(texts), "--fewshot-data",
                   str(texts)]) == 2
  assert "--fewshot-data is a pool of shots: give --num-fewshot N" in capsys.readouterr().err


def test_greedy_flag_and_padding_do_not_leak(setup):
  model, tok, _, torch_model, _ = setup
  ids = tok.encode("Question: Which drug lowers blood pressure?\nAnswer:")
  with torch.no_grad():
    logits = torch_model(torch.tensor(ids)[None]).logits[0, -1]
  best, other = int(logits.argmax()), int(logits.argmin())
  windows = [loglik.Window(tuple(ids), tuple(ids[1:]) + (t,), 1) for t in (best, other)]
  windows.append(loglik.Window(tuple(ids[:3]), tuple(ids[1:4]), 2))  # a short row padded next to long ones
  alone = loglik.score_windows(model.cfg, model.params, windows[2:], batch_size=1, buckets=(8,))
  together = loglik.score_windows(model.cfg, model.params, windows, batch_size=3, buckets=(16, 32))
  assert [g for _, g in together[:2]] == [True, False]
  np.testing.assert_allclose(together[0][0], float(torch.log_softmax(logits.double(), -1)[best]), atol=1e-4)
  np.testing.assert_allclose(together[2][0], alone[0][0], atol=1e-5)


def test_perplexity_of_no_texts_is_an_error(tmp_path):
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(tasks.DataError, match=f"{tmp_path / 'empty.jsonl'}: no texts"):
    perplexity.read_texts(tmp_path / "empty.jsonl")


def test_rows_placed_over_a_mesh_score_as_on_one_device(setup):
  """batch_sharding (the trainer's hook passes its mesh's): each row of a batch goes to the device the
  mesh puts it on and its result comes back to its own index, equal to the unplaced scoring."""
  from heal_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  model, tok, _, _, _ = setup
  texts = [f"Question: is dose {i} mg of drug {chr(65 + i)} safe for patient {i * 7}?" for i in range(11)]
  windows = [loglik.harness_window(tok.encode(t)[:-2 - i % 3], tok.encode(t)[-2 - i % 3:], 64)
             for i, t in enumerate(texts)]
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, jax.devices())
  params = jax.device_put(model.params, mesh_lib.replicated(mesh))
  placed = loglik.score_windows(model.cfg, params, windows, batch_size=8, buckets=(64,),
                                batch_sharding=mesh_lib.batch_sharding(mesh))
  plain = loglik.score_windows(model.cfg, model.params, windows, batch_size=8, buckets=(64,))
  np.testing.assert_allclose([r[0] for r in placed], [r[0] for r in plain], rtol=1e-5)
  assert [r[1] for r in placed] == [r[1] for r in plain]
  assert len({round(r[0], 3) for r in plain}) == len(windows)  # distinct rows: a mix-up would show


def test_an_output_that_is_not_a_rows_file_of_the_command_is_refused_before_loading(tmp_path, capsys):
  """--output used to replace any file: a checkpoint's manifest, PubMedQA's labels inside --data, a
  run's metrics.jsonl. Now only a missing or empty file, or rows of the same command, are replaced."""
  texts = tmp_path / "t.jsonl"
  texts.write_text('{"text": "a"}\n')
  manifest = tmp_path / "heal_checkpoint.json"
  manifest.write_text('{\n  "format": "heal-jax"\n}\n')
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text('{"step": 1, "loss": 2.0}\n')
  medqa_rows = tmp_path / "medqa_rows.jsonl"
  medqa_rows.write_text('{"id": 0, "choices": ["a", "b"], "loglikelihoods": [-1, -2], "pred": 0, "gold": 0}\n')
  for task, out in (("perplexity", manifest), ("medqa", metrics), ("perplexity", medqa_rows)):
    before = out.read_bytes()
    assert run.main([task, "--checkpoint", str(tmp_path / "none"), "--data", str(texts), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} exists and is not a rows file of this command" in err and "none" not in err, err
    assert out.read_bytes() == before
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  for task, out in (("medqa", medqa_rows), ("perplexity", empty), ("perplexity", tmp_path / "new.jsonl")):
    assert run.main([task, "--checkpoint", str(tmp_path / "none"), "--data", str(texts), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    # it went on: to the medqa data (not questions) or to the checkpoint, which is absent
    assert "not a rows file" not in err and ("none" in err or f"{texts}:1:" in err), err


def test_rows_are_written_whole_or_not_at_all(tmp_path):
  path = tmp_path / "rows.jsonl"
  path.write_text('{"index": 0}\n')
  output.write_rows(path, [{"index": 0, "nll": float("nan")}, {"index": 1, "nll": 1.5}])
  assert path.read_text() == '{"index": 0, "nll": null}\n{"index": 1, "nll": 1.5}\n'
  with pytest.raises(TypeError):
    output.write_rows(path, [{"index": 0}, {"index": object()}])
  assert path.read_text() == '{"index": 0, "nll": null}\n{"index": 1, "nll": 1.5}\n'
  assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]
  # a link is followed: the file it points to gets the rows, the link stays
  (tmp_path / "big").mkdir()
  (tmp_path / "big" / "rows.jsonl").write_text('{"index": 9}\n')
  (tmp_path / "link.jsonl").symlink_to(tmp_path / "big" / "rows.jsonl")
  output.write_rows(tmp_path / "link.jsonl", [{"index": 1}])
  assert (tmp_path / "link.jsonl").is_symlink() and (tmp_path / "big" / "rows.jsonl").read_text() == '{"index": 1}\n'


def test_an_existing_output_whose_first_line_json_cannot_read_is_not_a_rows_file(tmp_path):
  """A 5,000-digit integer or 200,000 open brackets: json raised past the reader (no file named, or a
  RecursionError traceback); such a file is simply not ours to replace."""
  for name, first in (("big.jsonl", "1" * 5000), ("deep.jsonl", "[" * 200000), ("bytes.jsonl", "\udcff")):
    path = tmp_path / name
    path.write_bytes(first.encode("utf-8", "surrogateescape") + b"\n")
    assert not output.is_rows_file(path, perplexity.ROW_KEYS)
    with pytest.raises(OSError, match=f"{path} exists and is not a rows file"):
      output.check_writable(path, (), perplexity.ROW_KEYS)
