"""PubMedQA and MedQA-USMLE (4 options) as lm-evaluation-harness renders them.

Each question becomes an `Example`: the zero-shot prompt (`query`, the harness's `doc_to_text`), the answer
choices as the harness's `doc_to_choice` lists them (no leading space), and the gold index. The scored
continuation of choice c is `TARGET_DELIMITER + c` (" yes", " A"); acc_norm divides by `len(c)`, as the
harness does.

- PubMedQA (`pubmedqa`, bigbio/pubmed_qa labeled_fold0_source, split test): `DIR/ori_pqal.json` (the 1000
  expert-labelled PQA-L questions) joined with `DIR/test_ground_truth.json` (the official 500-question test
  split, whose labels are the gold answers), in the order of test_ground_truth.json. Prompt:
  "Abstract: " + "\\n".join(CONTEXTS) + "\\nQuestion: " + QUESTION + "\\nAnswer:", choices yes/no/maybe.
- MedQA (`medqa_4options`, GBaker/MedQA-USMLE-4-options-hf, split test): the jsonl of the jind11/MedQA
  release (`US_4_options_phrases_no_exclude_test.jsonl`, 1273 rows) in file order; id = 0-based row index.
  Prompt: "Question: {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:", choices A..D.

Few-shot (`fewshot_contexts`): like the harness, each shot is `query + " " + gold choice`, shots are joined
by "\\n\\n" and followed by "\\n\\n" and the question's own query. Where shots come from:
- PubMedQA: the 500 PQA-L questions that are not in the test split (sorted by PMID; the harness samples
  from fold0's train split, a 450-question subset of these, so prompts are not identical to the harness's).
- MedQA: a pool file given by the caller (e.g. the release's `US_4_options_phrases_no_exclude_train.jsonl`);
  without one, the test file itself with the question being asked left out, which is what the harness does
  when a task's few-shot split is its test split. That is only a formatting aid, never a held-out protocol.
Shots for a question are `random.Random(f"{seed}:{id}").sample(pool without the question, k)`: deterministic,
independent of --limit and of the order questions are scored in (the harness draws from one shared RNG).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import random
import zlib
from typing import Any, Iterator
from collections.abc import Mapping, Sequence

import numpy as np

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
PUBMEDQA_CHOICES = ("yes", "no", "maybe")
MEDQA_CHOICES = ("A", "B", "C", "D")
PUBMEDQA_QUESTIONS = "ori_pqal.json"
PUBMEDQA_TEST = "test_ground_truth.json"
TASKS = ("pubmedqa", "medqa")


class DataError(ValueError):
  """Missing or malformed evaluation data; the message names the file (and line or key)."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One multiple-choice question.

  id: PubMedQA PMID (str) or MedQA row index (int).
  query: the zero-shot prompt, ending in "Answer:".
  choices: answer texts without the target delimiter ("yes", "A").
  gold: index into choices.
  """
  id: Any
  query: str
  choices: tuple[str, ...]
  gold: int

  @property
  def continuations(self) -> list[str]:
    """The scored continuations: " " + choice."""
    return [TARGET_DELIMITER + c for c in self.choices]


def pubmedqa_prompt(question: str, contexts: Sequence[str]) -> str:
  return "Abstract: " + "\n".join(contexts) + "\nQuestion: " + question + "\nAnswer:"


def medqa_prompt(question: str, options: Mapping[str, str]) -> str:
  answers = "".join(f"{k}. {options[k]}\n" for k in MEDQA_CHOICES)
  return f"Question: {question}\n{answers}Answer:"


def _read_json(path: pathlib.Path) -> Any:
  """The JSON value of a file; DataError for an unreadable file, malformed JSON or a key given twice
  in one object (a PMID twice: json would keep the last one, a silently changed question or label)."""
  from heal_jax.data import check  # pylint: disable=import-outside-toplevel
  try:
    value = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=check.unique_object)
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except check.RepeatedKey as e:
    raise DataError(f"{path}: key {e.key} appears twice in one object; which one is meant?") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not valid JSON ({e})") from None
  if check.has_lone_surrogate(value):
    raise DataError(f"{path}: {check.LONE_SURROGATE}")
  return value


def _pubmedqa_example(pmid: str, doc: Any, label: str, where: str, label_where: str | None = None) -> Example:
  """`where` names the file of the question, `label_where` that of the label (default: `where`)."""
  if not isinstance(doc, Mapping):
    raise DataError(f"{where}: entry {pmid} is not an object")
  question, contexts = doc.get("QUESTION"), doc.get("CONTEXTS")
  if not isinstance(question, str):
    raise DataError(f"{where}: entry {pmid} has no string QUESTION")
  if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
    raise DataError(f"{where}: entry {pmid} has no CONTEXTS list of strings")
  if label not in PUBMEDQA_CHOICES:
    raise DataError(f"{label_where or where}: entry {pmid} has label {label!r}, not one of {PUBMEDQA_CHOICES}")
  return Example(pmid, pubmedqa_prompt(question, contexts), PUBMEDQA_CHOICES, PUBMEDQA_CHOICES.index(label))


def _pubmedqa_files(data_dir: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any], pathlib.Path]:
  data_dir = pathlib.Path(data_dir)
  if not data_dir.is_dir():
    raise DataError(f"{data_dir}: not a directory (PubMedQA --data is the directory holding "
                    f"{PUBMEDQA_QUESTIONS} and {PUBMEDQA_TEST})")
  questions = _read_json(data_dir / PUBMEDQA_QUESTIONS)
  test = _read_json(data_dir / PUBMEDQA_TEST)
  for path, obj in ((data_dir / PUBMEDQA_QUESTIONS, questions), (data_dir / PUBMEDQA_TEST, test)):
    if not isinstance(obj, dict):
      raise DataError(f"{path}: expected a JSON object keyed by PMID")
  return questions, test, data_dir


def load_pubmedqa(data_dir: str | pathlib.Path) -> list[Example]:
  """The test questions in the order of test_ground_truth.json (500 for the official split)."""
  questions, test, data_dir = _pubmedqa_files(data_dir)
  out = []
  for pmid, label in test.items():
    if pmid not in questions:
      raise DataError(f"{data_dir / PUBMEDQA_TEST}: PMID {pmid} is not in {data_dir / PUBMEDQA_QUESTIONS}")
    out.append(_pubmedqa_example(pmid, questions[pmid], label, str(data_dir / PUBMEDQA_QUESTIONS),
                                 str(data_dir / PUBMEDQA_TEST)))
  if not out:
    raise DataError(f"{data_dir / PUBMEDQA_TEST}: no questions")
  return out


def load_pubmedqa_fewshot_pool(data_dir: str | pathlib.Path) -> list[Example]:
  """PQA-L questions outside the test split, sorted by PMID, gold = their final_decision."""
  questions, test, data_dir = _pubmedqa_files(data_dir)
  where = str(data_dir / PUBMEDQA_QUESTIONS)
  return [_pubmedqa_example(pmid, questions[pmid], questions[pmid].get("final_decision"), where)
          for pmid in sorted(questions) if pmid not in test]


def iter_jsonl(path: str | pathlib.Path) -> Iterator[tuple[str, Any]]:
  """("FILE:LINE", parsed JSON value) of each non-blank line (lines as `data check` reads them: a
  byte-order mark allowed, .gz/.zst decompressed); DataError naming file:line otherwise."""
  from heal_jax.data import check  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  try:
    for lineno, line, problem in check.numbered_lines(path):
      if problem:
        raise DataError(f"{path}:{lineno}: {problem}")
      value, reason = check.parse_json(line, unique_keys=True)
      if reason is not None and reason.startswith("malformed JSON: "):
        reason = f"not valid JSON ({reason.removeprefix('malformed JSON: ')})"
      if reason is not None:
        raise DataError(f"{path}:{lineno}: {reason}")
      if check.has_lone_surrogate(value):
        raise DataError(f"{path}:{lineno}: {check.LONE_SURROGATE}")
      yield f"{path}:{lineno}", value
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except (ImportError, EOFError, OSError, zlib.error) as e:  # a directory, a damaged .gz/.zst, ...
    raise DataError(f"{path}: cannot be read ({e})") from None


def load_medqa(path: str | pathlib.Path) -> list[Example]:
  """MedQA 4-option questions of a jsonl file in file order (1273 in the US test file)."""
  out = []
  for where, row in iter_jsonl(path):
    if not isinstance(row, dict) or not isinstance(row.get("question"), str):
      raise DataError(f"{where}: expected an object with a string 'question'")
    options = row.get("options")
    if (not isinstance(options, dict) or sorted(options) != list(MEDQA_CHOICES)
        or not all(isinstance(v, str) for v in options.values())):
      raise DataError(f"{where}: 'options' must map exactly A, B, C, D to strings")
    if row.get("answer_idx") not in MEDQA_CHOICES:
      raise DataError(f"{where}: 'answer_idx' must be one of A, B, C, D, got {row.get('answer_idx')!r}")
    answer = row.get("answer")  # optional; where given, it must be the text of option answer_idx
    if answer is not None and (not isinstance(answer, str) or answer.strip() != options[row["answer_idx"]].strip()):
      raise DataError(f"{where}: 'answer' {str(answer)[:80]!r} is not the text of option {row['answer_idx']} "
                      f"({options[row['answer_idx']][:80]!r}); which one is gold?")
    out.append(Example(len(out), medqa_prompt(row["question"], options), MEDQA_CHOICES,
                       MEDQA_CHOICES.index(row["answer_idx"])))
  if not out:
    raise DataError(f"{pathlib.Path(path)}: no questions")
  return out


def load_task(task: str, data: str | pathlib.Path,
              fewshot_data: str | pathlib.Path | None = None) -> tuple[list[Example], list[Example]]:
  """(test examples, few-shot pool) of a task; see the module docstring for where shots come from."""
  if task == "pubmedqa":
    if fewshot_data:
      raise DataError("a few-shot pool file applies to medqa only; PubMedQA shots are the PQA-L questions "
                      f"of {pathlib.Path(data) / PUBMEDQA_QUESTIONS} outside the test split")
    return load_pubmedqa(data), load_pubmedqa_fewshot_pool(data)
  if task == "medqa":
    examples = load_medqa(data)
    return examples, (load_medqa(fewshot_data) if fewshot_data else examples)
  raise DataError(f"unknown task {task!r}; expected one of {TASKS}")


def subset(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
  """A seeded random `limit` of `examples`, kept in file order (all of them for None or >= len).

  Random, not the first N: PubMedQA's test split lists its 276 "yes" questions first, so any first
  N <= 276 holds one class only and measures nothing. The same (limit, seed) gives the same subset.
  """
  if limit is None or limit >= len(examples):
    return list(examples)
  keep = np.sort(np.random.default_rng(seed).choice(len(examples), limit, replace=False))
  return [examples[i] for i in keep]


def fewshot_contexts(examples: Sequence[Example], pool: Sequence[Example], num_fewshot: int,
                     seed: int = 1234) -> list[str]:
  """The prompt of each example with `num_fewshot` solved shots from `pool` in front (0: the query).
  A pool question whose prompt is the example's own is never its shot, whatever its id or line: a
  shot would give away the answer."""
  if num_fewshot < 0:
    raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
  if num_fewshot == 0:
    return [ex.query for ex in examples]
  out = []
  for ex in examples:
    candidates = [p for p in pool if p.query != ex.query]
    if len(candidates) < num_fewshot:
      raise ValueError(f"{num_fewshot} shots asked but the few-shot pool has {len(candidates)} questions")
    shots = random.Random(f"{seed}:{ex.id}").sample(candidates, num_fewshot)
    solved = [s.query + TARGET_DELIMITER + s.choices[s.gold] for s in shots]
    out.append(FEWSHOT_DELIMITER.join(solved) + FEWSHOT_DELIMITER + ex.query)
  return out
