"""PubMedQA / MedQA loaders: harness prompts byte for byte, split sizes, few-shot contexts, bad data."""

import dataclasses
import json
import pathlib
import re

import pytest

from heal_jax.eval import tasks

PROMPTS_FILE = "pubmedqa-medqa-harness-prompts.txt"


def _golden(shared_data: pathlib.Path) -> dict[str, dict]:
  """Sections of the golden file: '## TASK  key=value ...  choices=[...]' then the prompt, then a blank line."""
  text = (shared_data / PROMPTS_FILE).read_text(encoding="utf-8")
  out = {}
  for block in re.split(r"^## ", text, flags=re.M)[1:]:
    header, body = block.split("\n", 1)
    prompt = body[:-1] if body.endswith("\n") else body  # the prompt's own last line ends with "\n"
    prompt = prompt[:-1] if prompt.endswith("\n") else prompt  # the blank separator line
    fields = dict(re.findall(r"(\w+)=(\S+)", header))
    choices = re.search(r"choices=\[(.*)\]", header).group(1)
    out[header.split()[0]] = {"prompt": prompt, "gold": fields["gold"], "pmid": fields.get("pmid"),
                              "choices": [c.strip("'") for c in choices.split(",")]}
  return out


def test_prompts_equal_harness_rendering(shared_data):
  golden = _golden(shared_data)
  pub = tasks.load_pubmedqa(shared_data / "pubmedqa")[0]
  assert pub.id == golden["pubmedqa"]["pmid"]
  assert pub.query == golden["pubmedqa"]["prompt"]
  assert pub.continuations == golden["pubmedqa"]["choices"]
  assert pub.choices[pub.gold] == golden["pubmedqa"]["gold"]
  med = tasks.load_medqa(shared_data / "medqa" / "US_4_options_phrases_no_exclude_test.jsonl")[0]
  assert med.query == golden["medqa_4options"]["prompt"]
  assert med.continuations == golden["medqa_4options"]["choices"]
  assert med.choices[med.gold] == golden["medqa_4options"]["gold"]


def test_split_sizes_and_gold_counts(shared_data):
  pub = tasks.load_pubmedqa(shared_data / "pubmedqa")
  assert len(pub) == 500
  assert [sum(ex.gold == i for ex in pub) for i in range(3)] == [276, 169, 55]
  order = list(json.loads((shared_data / "pubmedqa" / "test_ground_truth.json").read_text()))
  assert [ex.id for ex in pub] == order
  med = tasks.load_medqa(shared_data / "medqa" / "US_4_options_phrases_no_exclude_test.jsonl")
  assert len(med) == 1273
  assert [sum(ex.gold == i for ex in med) for i in range(4)] == [353, 309, 346, 265]
  pool = tasks.load_pubmedqa_fewshot_pool(shared_data / "pubmedqa")
  assert len(pool) == 500 and not {ex.id for ex in pool} & {ex.id for ex in pub}


def test_fewshot_contexts_are_deterministic_and_harness_shaped(shared_data):
  examples, pool = tasks.load_task("medqa", shared_data / "medqa" / "US_4_options_phrases_no_exclude_test.jsonl")
  first = tasks.fewshot_contexts(examples[:3], pool, 2, seed=7)
  assert first == tasks.fewshot_contexts(examples[:3], pool, 2, seed=7)
  assert first[1] == tasks.fewshot_contexts(examples[1:2], pool, 2, seed=7)[0]  # independent of --limit
  assert first != tasks.fewshot_contexts(examples[:3], pool, 2, seed=8)
  assert tasks.fewshot_contexts(examples[:3], pool, 0) == [ex.query for ex in examples[:3]]
  for ex, ctx in zip(examples[:3], first):
    shots = ctx.split("\n\n")
    assert len(shots) == 3 and shots[-1] == ex.query
    for shot in shots[:2]:
      assert re.fullmatch(r"Question: .*\nAnswer: [ABCD]", shot, flags=re.S), shot
      assert not shot.startswith(ex.query)  # the question itself is never a shot
  pub, pub_pool = tasks.load_task("pubmedqa", shared_data / "pubmedqa")
  ctx = tasks.fewshot_contexts(pub[:1], pub_pool, 1)[0]
  assert re.fullmatch(r"Abstract: .*\nAnswer: (yes|no|maybe)\n\n" + re.escape(pub[0].query), ctx, flags=re.S)
  with pytest.raises(ValueError, match="few-shot pool has"):
    tasks.fewshot_contexts(pub[:1], pub_pool[:1], 2)
  # A pool holding the test questions at other rows (a reversed copy of the file): no question is its
  # own shot; it used to be kept out only when its row number matched too.
  reversed_pool = [dataclasses.replace(ex, id=len(examples) - 1 - i) for i, ex in enumerate(examples[:2])][::-1]
  for ex, ctx in zip(examples[:2], tasks.fewshot_contexts(examples[:2], reversed_pool, 1)):
    assert ctx.split("\n\n")[0] != ex.query + tasks.TARGET_DELIMITER + ex.choices[ex.gold]
  with pytest.raises(ValueError, match="few-shot pool has 1 questions"):
    tasks.fewshot_contexts(examples[:2], reversed_pool, 2)


def test_bad_data_names_the_file(tmp_path, shared_data):
  with pytest.raises(tasks.DataError, match=f"{tmp_path / 'none.jsonl'}: file not found"):
    tasks.load_medqa(tmp_path / "none.jsonl")
  rows = (shared_data / "medqa" / "US_4_options_phrases_no_exclude_test.jsonl").read_text().splitlines()[:3]
  bad = tmp_path / "bad.jsonl"
  bad.write_text("\n".join(rows[:2] + ["{not json"]) + "\n")
  with pytest.raises(tasks.DataError, match=f"{bad}:3: not valid JSON"):
    tasks.load_medqa(bad)
  row = json.loads(rows[0])
  wrong = next(c for c in "ABCD" if c != row["answer_idx"])
  bad.write_text(rows[1] + "\n" + json.dumps({**row, "answer_idx": wrong}) + "\n")  # answer text says otherwise
  with pytest.raises(tasks.DataError, match=f"{bad}:2: 'answer' .* is not the text of option {wrong}"):
    tasks.load_medqa(bad)
  row["answer_idx"] = "E"
  bad.write_text(json.dumps(row) + "\n")
  with pytest.raises(tasks.DataError, match=f"{bad}:1: 'answer_idx' must be one of"):
    tasks.load_medqa(bad)
  del row["options"]["D"]
  bad.write_text(json.dumps(row) + "\n")
  with pytest.raises(tasks.DataError, match=f"{bad}:1: 'options' must map exactly A, B, C, D"):
    tasks.load_medqa(bad)
  pub = tmp_path / "pub"
  pub.mkdir()
  with pytest.raises(tasks.DataError, match=f"{pub / 'ori_pqal.json'}: file not found"):
    tasks.load_pubmedqa(pub)
  (pub / "ori_pqal.json").write_text(json.dumps({"1": {"QUESTION": "q?", "CONTEXTS": ["c"]}}))
  (pub / "test_ground_truth.json").write_text(json.dumps({"2": "yes"}))
  with pytest.raises(tasks.DataError, match="test_ground_truth.json: PMID 2 is not in .*ori_pqal.json"):
    tasks.load_pubmedqa(pub)
  (pub / "test_ground_truth.json").write_text(json.dumps({"1": "perhaps"}))
  with pytest.raises(tasks.DataError, match="test_ground_truth.json: entry 1 has label 'perhaps'"):
    tasks.load_pubmedqa(pub)
  (pub / "test_ground_truth.json").write_text("{}")
  with pytest.raises(tasks.DataError, match="test_ground_truth.json: no questions"):
    tasks.load_pubmedqa(pub)
  (pub / "test_ground_truth.json").write_text("[1, 2]")
  with pytest.raises(tasks.DataError, match="test_ground_truth.json: expected a JSON object"):
    tasks.load_pubmedqa(pub)
  (pub / "test_ground_truth.json").write_text('{"1": "yes", "1": "no"}')  # json alone keeps the last
  with pytest.raises(tasks.DataError, match="test_ground_truth.json: key 1 appears twice"):
    tasks.load_pubmedqa(pub)


def test_jsonl_lines_end_at_newlines_only_and_may_start_with_a_bom(tmp_path):
  """A U+2028 or U+0085 inside a JSON string is not a line end (str.splitlines would split there);
  a byte-order mark before the first line is dropped; a line that is not UTF-8 is named."""
  rows = [{"text": "a\u2028b"}, {"text": "c\u0085d"}]
  path = tmp_path / "rows.jsonl"
  path.write_text("\ufeff" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
  assert list(tasks.iter_jsonl(path)) == [(f"{path}:1", rows[0]), (f"{path}:2", rows[1])]
  path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
  with pytest.raises(tasks.DataError, match=f"{path}:2: invalid UTF-8"):
    list(tasks.iter_jsonl(path))


def test_a_lone_surrogate_escape_or_a_repeated_key_is_named(tmp_path):
  """JSON's \\ud800 escape makes a string that UTF-8 cannot hold; sentencepiece used to fail on it with a
  traceback naming no file, after the model had loaded. A pair (an emoji) is text and stays. A key
  given twice in one object was read as its last value."""
  path = tmp_path / "rows.jsonl"
  path.write_text('{"text": "ok \\ud83d\\ude00"}\n{"text": "x \\ud800"}\n')
  with pytest.raises(tasks.DataError, match=f"{path}:2: a .* escape without its pair"):
    list(tasks.iter_jsonl(path))
  assert next(tasks.iter_jsonl(path)) == (f"{path}:1", {"text": "ok \U0001f600"})
  deep = '{"text": "a", "meta": ' + "[" * 900 + "]" * 900 + "}"  # deeper than a recursive walk could go
  path.write_text(deep + "\n")
  assert next(tasks.iter_jsonl(path))[1]["text"] == "a"
  path.write_text('{"text": "a", "meta": {"k": 1}}\n{"question": "q", "meta": {"k": 1, "k": 2}}\n')
  with pytest.raises(tasks.DataError, match=f"{path}:2: key 'k' appears twice in one object"):
    list(tasks.iter_jsonl(path))
  pub = tmp_path / "pub"
  pub.mkdir()
  (pub / "ori_pqal.json").write_text('{"1": {"QUESTION": "q \\udc00?", "CONTEXTS": ["c"], "final_decision": "yes"}}')
  (pub / "test_ground_truth.json").write_text('{"1": "yes"}')
  with pytest.raises(tasks.DataError, match="ori_pqal.json: a .* escape without its pair"):
    tasks.load_pubmedqa(pub)


def test_subset_is_seeded_random_in_file_order(shared_data):
  """PubMedQA's test split lists its 276 "yes" questions first: the first 20 are all "yes". `subset`
  (eval --sample, the trainer's eval.task_limit) takes a seeded random subset, in file order, the same
  every time."""
  pub = tasks.load_task("pubmedqa", shared_data / "pubmedqa")[0]
  assert {e.gold for e in pub[:20]} == {0}
  picked = tasks.subset(pub, 20)
  index = {e.id: i for i, e in enumerate(pub)}
  positions = [index[e.id] for e in picked]
  assert len(set(positions)) == 20 and positions == sorted(positions)
  assert len({e.gold for e in picked}) > 1
  assert [e.id for e in tasks.subset(pub, 20)] == [e.id for e in picked]
  assert [e.id for e in tasks.subset(pub, 20, seed=1)] != [e.id for e in picked]
  assert tasks.subset(pub, None) == pub and tasks.subset(pub, 10**6) == pub
