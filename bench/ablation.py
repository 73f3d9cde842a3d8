"""Mixture ablation (issue 8 section 1): five arms that differ only in mixture weights, evaluated per tier.

  .venv/bin/python bench/ablation.py [--root runs/ablation] [--out docs/ablation] [--smoke]

Steps (each skipped when its output already exists, so an interrupted run resumes):
1. Data (ROOT/data): the bundled synthetic corpus (seed 0), real training files from ../shared/data
   (PubMedQA PQA-L abstracts outside the 500-question test split, ACI-Bench train, MTS-Dialog train),
   held-out evaluation sets (ROOT/data/heldout), and a 1024-piece tokenizer trained on the union of the
   training files (held-out sets never enter it).
2. Base run (ROOT/base, configs/ablations/base.py): from scratch on equal thirds; its newest checkpoint is
   written as a converted checkpoint (ROOT/base_checkpoint), which every arm's `init_from` names.
3. Arms (ROOT/<arm>, configs/ablations/<arm>.py): one phase each, same steps/seq_len/batch (same tokens).
4. Evaluation of each arm, written to ROOT/<arm>/eval_results.json (flat metric -> number):
   nll_/ppl_general   synthetic general prose generated with another seed (1), exact training duplicates removed;
   nll_/ppl_medical   PubMedQA test-split abstracts (CONTEXTS joined by newlines);
   nll_/ppl_clinical  ACI-Bench valid + the three test splits, each conversation with its note rendered as the
                      clinical tier is trained (the note-writing instruction followed by the note);
   nll_/ppl_clinical_mts  MTS-Dialog test-1, rendered the same way;
   pubmedqa_acc, pubmedqa_acc_norm  zero-shot, lm-evaluation-harness prompts (heal_jax.eval.loglik);
   rouge*, missed/incorrect/irrelevant_rate  notes generated greedily for ACI-Bench clef_taskC_test3
                      conversations, each cut to its first turns that fit the prompt budget, scored against
                      the full reference note with the full conversation as the rubric's source.
   Perplexity reads at most the model's 512-token context per window (heal_jax.eval.perplexity).
5. Report (OUT): heal_jax.report.build_report (report.md + plots), tiers.png / tasks.png, results.json and
   README.md, whose tables, winners and Table 2 verdicts are computed here from the numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import random
import re
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ablation_report  # pylint: disable=wrong-import-position  # bench/ is on sys.path as the script's folder

csv.field_size_limit(1 << 24)

ARMS_DIR = REPO / "configs" / "ablations"
DATA_DIR = REPO.parent / "shared" / "data"
ACI_HELDOUT_PPL = ("valid", "clinicalnlp_taskB_test1")  # notes come from clef_taskC_test3: disjoint
ACI_NOTES_SPLIT = "clef_taskC_test3"
MTS_TRAIN = "MTS-Dialog-TrainingSet.csv"
MTS_HELDOUT = "MTS-Dialog-TestSet-1-MEDIQA-Chat-2023.csv"
_T0 = time.time()


def log(message: str) -> None:
  print(f"[ablation {time.time() - _T0:7.1f}s] {message}", flush=True)


def _common():
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("heal_ablation_common", ARMS_DIR / "common.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ---------------------------------------------------------------- data


def _read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


def _write_jsonl(path: pathlib.Path, rows: list[dict[str, Any]]) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return path


_SPEAKER = re.compile(r"^([A-Za-z_]+)\s*:\s*(.*)$")


def _bracket_turns(dialogue: str) -> str:
  """MTS-Dialog's `Doctor: ...` / `Guest_family: ...` lines as ACI-Bench's `[doctor] ...` turns."""
  turns: list[list[str]] = []
  for line in dialogue.splitlines():
    line = line.strip()
    match = _SPEAKER.match(line)
    if match:
      turns.append([match.group(1).lower(), match.group(2).strip()])
    elif line and turns:
      turns[-1][1] = f"{turns[-1][1]} {line}".strip()
    elif line:
      turns.append(["doctor", line])
  return "\n".join(f"[{speaker}] {said}".rstrip() for speaker, said in turns)


def _mts_record(row: dict[str, str]) -> dict[str, str]:
  return {"conversation": _bracket_turns(row["dialogue"]),
          "note": f"{row['section_header'].strip()}\n{row['section_text'].strip()}"}


def _clinical_text(record: dict[str, str]) -> str:
  """A conversation+note as the clinical tier is trained on it (heal_jax.data.examples.texts)."""
  from heal_jax.data import examples  # pylint: disable=import-outside-toplevel
  prompt, target = examples.texts(record, "conversation")
  return prompt + target


def prepare_data(root: pathlib.Path, data_dir: pathlib.Path, smoke: bool) -> dict[str, Any]:
  """Writes ROOT/data (see the module docstring); returns a description of what is trained and held out."""
  from heal_jax.data import synthetic, tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  data = root / "data"
  done = data / "manifest.json"
  if done.is_file():
    return json.loads(done.read_text())
  cut = (lambda rows, n: rows[:n]) if smoke else (lambda rows, n: rows)
  sizes = ({"general": 120, "medical": 60, "clinical": 40, "instructions": 0} if smoke else
           {"general": 2000, "medical": 800, "clinical": 400, "instructions": 0})
  corpus = synthetic.generate_corpus(data / "corpus", seed=0, sizes=sizes)
  questions = json.loads((data_dir / "pubmedqa" / "ori_pqal.json").read_text())
  test = json.loads((data_dir / "pubmedqa" / "test_ground_truth.json").read_text())
  pubmed_train = [{"text": "\n".join(questions[p]["CONTEXTS"])} for p in sorted(questions) if p not in test]
  pubmed_heldout = [{"text": "\n".join(questions[p]["CONTEXTS"])} for p in test]
  aci = data_dir / "aci-bench" / "challenge_data"
  aci_train = [{"conversation": r["dialogue"], "note": r["note"]} for r in _read_csv(aci / "train.csv")]
  mts = data_dir / "mts-dialog" / "Main-Dataset"
  real = {
      "pubmedqa_train": _write_jsonl(data / "real" / "pubmedqa_train.jsonl", cut(pubmed_train, 40)),
      "aci_train": _write_jsonl(data / "real" / "aci_train.jsonl", cut(aci_train, 8)),
      "mts_train": _write_jsonl(data / "real" / "mts_train.jsonl",
                                cut([_mts_record(r) for r in _read_csv(mts / MTS_TRAIN)], 60)),
  }
  # Held out: general prose from another seed (minus exact training duplicates), real test splits.
  held_synth = synthetic.generate_corpus(data / "heldout_synthetic", seed=1,
                                         sizes={"general": 40 if smoke else 300, "medical": 0, "clinical": 0,
                                                "instructions": 0})
  train_general = {json.loads(l)["text"] for l in corpus["general"].read_text().splitlines()}
  general = [json.loads(l) for l in held_synth["general"].read_text().splitlines()]
  general_kept = [r for r in general if r["text"] not in train_general]
  aci_ppl = [{"text": _clinical_text({"conversation": r["dialogue"], "note": r["note"]}), "split": split,
              "encounter_id": r["encounter_id"]}
             for split in ACI_HELDOUT_PPL for r in _read_csv(aci / f"{split}.csv")]
  mts_ppl = [{"text": _clinical_text(_mts_record(r)), "id": r["ID"]} for r in _read_csv(mts / MTS_HELDOUT)]
  notes = [{"id": r["encounter_id"], "conversation": r["dialogue"], "note": r["note"]}
           for r in _read_csv(aci / f"{ACI_NOTES_SPLIT}.csv")]
  heldout = {
      "general": _write_jsonl(data / "heldout" / "general.jsonl", general_kept),
      "medical": _write_jsonl(data / "heldout" / "medical.jsonl", pubmed_heldout),
      "clinical": _write_jsonl(data / "heldout" / "clinical.jsonl", aci_ppl),
      "clinical_mts": _write_jsonl(data / "heldout" / "clinical_mts.jsonl", mts_ppl),
      "notes": _write_jsonl(data / "heldout" / "notes.jsonl", notes),
  }
  train_files = [corpus[t] for t in ("general", "medical", "clinical")] + list(real.values())
  tok = tokenizer_lib.train_tokenizer(train_files, data / "tokenizer", vocab_size=1024)
  manifest = {
      "trained_on": {
          "general": f"synthetic general prose, {sizes['general']} documents (heal_jax.data.synthetic, seed 0)",
          "medical": f"synthetic trial abstracts ({sizes['medical']}) + {len(cut(pubmed_train, 40))} PubMedQA "
                     "PQA-L abstracts whose PMIDs are not in test_ground_truth.json",
          "clinical": f"synthetic conversations+notes ({sizes['clinical']}) + ACI-Bench train "
                      f"({len(cut(aci_train, 8))}) + MTS-Dialog train ({sum(1 for _ in open(real['mts_train']))})",
          "tokenizer": f"{tok.vocab_size}-piece BPE sentencepiece trained on exactly these training files",
      },
      "held_out": {
          "general": f"{len(general_kept)} synthetic general documents generated with seed 1 "
                     f"({len(general) - len(general_kept)} exact duplicates of training documents removed)",
          "medical": f"{len(pubmed_heldout)} PubMedQA test-split abstracts (the 500 PMIDs of "
                     "test_ground_truth.json)",
          "clinical": f"{len(aci_ppl)} ACI-Bench encounters ({', '.join(ACI_HELDOUT_PPL)}), conversation + note",
          "clinical_mts": f"{len(mts_ppl)} MTS-Dialog test-1 conversations + note sections",
          "notes": f"ACI-Bench {ACI_NOTES_SPLIT} conversations ({len(notes)} available)",
          "pubmedqa": "PubMedQA test questions in test_ground_truth.json order (all, or a seeded random subset of --pubmedqa-limit)",
      },
      "files": {"heldout": {k: str(v) for k, v in heldout.items()}, "real": {k: str(v) for k, v in real.items()}},
  }
  done.write_text(json.dumps(manifest, indent=2) + "\n")
  return manifest


# ---------------------------------------------------------------- training


def _load_config(name: str, root: pathlib.Path, overrides: list[str]):
  from heal_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  return config_lib.load_config(f"{ARMS_DIR / name}.py:{root}", overrides)


def _train(config, workdir: pathlib.Path) -> float:
  from heal_jax.train import loop  # pylint: disable=import-outside-toplevel
  t = time.time()
  result = loop.train(config, workdir)
  if result["status"] != "done":
    raise RuntimeError(f"{workdir}: training stopped: {result}")
  return time.time() - t


def export_base(base: pathlib.Path, out: pathlib.Path) -> None:
  """The base run's newest checkpoint as a converted checkpoint (what the arms' init_from names).

  init_from could name the base work directory itself, but heal_jax.train.init.initial_params takes any
  directory holding a config.json for an HF checkpoint, and a work directory holds its run config.json.
  """
  from heal_jax.checkpoint import params_store, restore  # pylint: disable=import-outside-toplevel
  if (out / params_store.MANIFEST).is_file():
    return
  loaded = restore.load_model(base)
  params_store.write_checkpoint(out, loaded.params, loaded.cfg, None, loaded.cfg.param_dtype,
                                loaded.tokenizer_dir, {"source": loaded.source})


# ---------------------------------------------------------------- evaluation


def _truncate_conversation(tokenizer, conversation: str, budget: int) -> tuple[str, int, int]:
  """The longest prefix of whole turns whose note prompt fits `budget` tokens: (text, turns kept, turns)."""
  from heal_jax.data import templates  # pylint: disable=import-outside-toplevel
  from heal_jax.infer import generate  # pylint: disable=import-outside-toplevel
  turns = templates.normalize_conversation(conversation).split("\n")
  lo, hi = 1, len(turns)
  while lo < hi:  # largest k with prompt(turns[:k]) <= budget
    mid = (lo + hi + 1) // 2
    if len(tokenizer.encode(generate.note_prompt_text("\n".join(turns[:mid])), add_bos=True)) <= budget:
      lo = mid
    else:
      hi = mid - 1
  return "\n".join(turns[:lo]), lo, len(turns)


def subset(items: list[Any], n: int | None, seed: int = 0) -> list[Any]:
  """`n` items drawn without replacement with a fixed seed, in their original order (all when n is None
  or >= len). Not the first n: test_ground_truth.json lists its 276 "yes" questions first."""
  if n is None or n >= len(items):
    return list(items)
  return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def evaluate_arm(workdir: pathlib.Path, manifest: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  from heal_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  from heal_jax.eval import loglik, notes as notes_lib, perplexity, tasks  # pylint: disable=import-outside-toplevel
  from heal_jax.infer import generate  # pylint: disable=import-outside-toplevel
  loaded = restore.load_model(workdir)
  cfg, params = loaded.cfg, loaded.params
  tok = Tokenizer(loaded.tokenizer_dir)
  files = manifest["files"]["heldout"]
  out: dict[str, float] = {}
  for tier in ("general", "medical", "clinical", "clinical_mts"):
    t = time.time()
    texts = subset(perplexity.read_texts(files[tier]), args.ppl_limit)
    res = perplexity.perplexity(cfg, params, tok, texts, batch_size=args.batch_size)
    out[f"nll_{tier}"] = res["nll_per_token"]
    out[f"ppl_{tier}"] = math.exp(res["nll_per_token"])
    out[f"tokens_{tier}"] = res["tokens"]
    log(f"  {workdir.name} {tier}: nll {res['nll_per_token']:.4f} over {res['tokens']:,} tokens "
        f"({res['texts']} texts, {time.time() - t:.1f}s)")
  t = time.time()
  examples, _ = tasks.load_task("pubmedqa", args.data_dir / "pubmedqa")
  res = loglik.evaluate("pubmedqa", cfg, params, tok, subset(examples, args.pubmedqa_limit), args.batch_size,
                        add_bos=loaded.add_bos)
  out.update(pubmedqa_acc=res["acc"], pubmedqa_acc_norm=res["acc_norm"], pubmedqa_n=res["n"])
  preds = [r["pred"] for r in res["rows"]]
  out["pubmedqa_share_yes"] = preds.count(0) / max(len(preds), 1)
  log(f"  {workdir.name} pubmedqa: acc {res['acc']:.3f} acc_norm {res['acc_norm']:.3f} (n={res['n']}, "
      f"{time.time() - t:.1f}s)")
  t = time.time()
  rows = [json.loads(l) for l in pathlib.Path(files["notes"]).read_text().splitlines()][:args.notes]
  budget = (cfg.max_position_embeddings - args.max_new_tokens) // 64 * 64  # prompts are padded to 64s
  cut = [_truncate_conversation(tok, r["conversation"], budget) for r in rows]
  predicted = generate.generate_notes(loaded, [c[0] for c in cut], max_new_tokens=args.max_new_tokens,
                                      batch_size=args.batch_size)
  (workdir / "generated_notes.jsonl").write_text(
      "".join(json.dumps({"id": r["id"], "turns_kept": c[1], "turns": c[2], "text": p}) + "\n"
              for r, c, p in zip(rows, cut, predicted)))
  means, _ = notes_lib.evaluate_notes({r["id"]: p for r, p in zip(rows, predicted)},
                                      {r["id"]: r["note"] for r in rows},
                                      {r["id"]: r["conversation"] for r in rows})
  for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "missed_rate", "incorrect_rate", "irrelevant_rate",
              "generated_facts", "reference_facts", "notes"):
    if key in means:
      out[key] = means[key]
  out["notes_turns_kept_share"] = sum(c[1] / c[2] for c in cut) / max(len(cut), 1)
  out["notes_words_mean"] = sum(len(p.split()) for p in predicted) / max(len(predicted), 1)
  log(f"  {workdir.name} notes: rougeL {out['rougeL']:.3f} missed {out['missed_rate']:.3f} incorrect "
      f"{out['incorrect_rate']:.3f} irrelevant {out['irrelevant_rate']:.3f} ({len(rows)} notes, "
      f"{time.time() - t:.1f}s)")
  return out


# ---------------------------------------------------------------- findings and report


def wall_span(root: pathlib.Path, arms: list[str]) -> float:
  """Seconds from the base run's first step to the newest eval_results.json, over every invocation."""
  first = json.loads((root / "base" / "metrics.jsonl").read_text().splitlines()[0])
  start = first["time"] - first["step"] * first.get("step_time_s", 0.0)
  end = max((root / a / "eval_results.json").stat().st_mtime for a in arms)
  return end - start


# ---------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", type=pathlib.Path, default=REPO / "runs" / "ablation", help="work directories and data")
  p.add_argument("--out", type=pathlib.Path, default=REPO / "docs" / "ablation", help="report folder")
  p.add_argument("--data-dir", type=pathlib.Path, default=DATA_DIR)
  p.add_argument("--smoke", action="store_true", help="1 layer, a few steps and examples: checks the plumbing in about a minute")
  p.add_argument("--base-steps", type=int, help="default: configs/ablations/common.py (smoke: 3)")
  p.add_argument("--arm-steps", type=int, help="default: configs/ablations/common.py (smoke: 2)")
  p.add_argument("--ppl-limit", type=int, help="texts per held-out perplexity set, a seeded random subset (default 200; smoke 3)")
  p.add_argument("--pubmedqa-limit", type=int, help="PubMedQA test questions, a seeded random subset (default all 500; smoke 4)")
  p.add_argument("--notes", type=int, help="ACI-Bench conversations to write notes for (default 10; smoke 2)")
  p.add_argument("--max-new-tokens", type=int, help="per generated note (default 128; smoke 8)")
  p.add_argument("--batch-size", type=int, default=16, help="evaluation batch size")
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  smoke = args.smoke
  args.ppl_limit = args.ppl_limit or (3 if smoke else 200)
  args.pubmedqa_limit = args.pubmedqa_limit or (4 if smoke else None)
  args.notes = args.notes or (2 if smoke else 10)
  args.max_new_tokens = args.max_new_tokens or (8 if smoke else 128)
  if smoke:
    args.batch_size = min(args.batch_size, 4)
  root, out = args.root.absolute(), args.out.absolute()
  root.mkdir(parents=True, exist_ok=True)
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", str(root / "jax_cache"))  # arms share their programs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  common = _common()
  overrides = []
  base_steps = args.base_steps or (3 if smoke else common.BASE_STEPS)
  arm_steps = args.arm_steps or (2 if smoke else common.ARM_STEPS)
  overrides_base = [f"--config.phases.base.steps={base_steps}"]
  overrides_arm = [f"--config.phases.ablate.steps={arm_steps}"]
  if smoke:
    overrides = ["--config.metrics.every_steps=1", "--config.eval.every_steps=0", "--config.eval.holdout_examples=4",
                 "--config.eval.batches=1", "--config.model.num_layers=1", "--config.model.max_position_embeddings=256"]
    for phase, spec in (("base", overrides_base), ("ablate", overrides_arm)):
      spec += [f"--config.phases.{phase}.warmup_steps=1", f"--config.phases.{phase}.seq_len=128"]
  stage: dict[str, float] = {}
  t = time.time()
  manifest = prepare_data(root, args.data_dir, smoke)
  stage["data"] = time.time() - t
  log(f"data ready in {root / 'data'}")

  t = time.time()
  base_cfg = _load_config("base", root, overrides + overrides_base)
  log(f"base: {base_steps} steps from scratch")
  _train(base_cfg, root / "base")
  export_base(root / "base", root / "base_checkpoint")
  stage["base"] = time.time() - t
  log(f"base done ({stage['base']:.0f}s)")

  results: dict[str, dict[str, float]] = {}
  for arm in common.ARMS:
    t = time.time()
    cfg = _load_config(arm, root, overrides + overrides_arm)
    log(f"arm {arm}: weights {cfg.phases.ablate.weights}, {arm_steps} steps")
    _train(cfg, root / arm)
    t_train = time.time() - t
    path = root / arm / "eval_results.json"
    if path.is_file():
      results[arm] = json.loads(path.read_text())
    else:
      results[arm] = evaluate_arm(root / arm, manifest, args)
      path.write_text(json.dumps(results[arm], indent=2, sort_keys=True) + "\n")
    stage[arm] = time.time() - t
    log(f"arm {arm} done (train {t_train:.0f}s, eval {stage[arm] - t_train:.0f}s)")

  from heal_jax import report  # pylint: disable=import-outside-toplevel
  from heal_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  out.mkdir(parents=True, exist_ok=True)
  report.build_report(root / "base", out, ablation={a: root / a for a in common.ARMS})
  ablation_report.plot_tiers(results, out)
  model_cfg = config_lib.model_config(base_cfg)
  seq_len, batch = base_cfg.phases.base.seq_len, base_cfg.train.global_batch
  import platform  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  summary = {
      "settings": {
          "smoke": smoke, "arms": dict(common.ARMS), "base_steps": base_steps, "arm_steps": arm_steps,
          "seq_len": seq_len, "global_batch": batch, "base_tokens": base_steps * batch * seq_len,
          "arm_tokens": arm_steps * batch * seq_len, "params": model_cfg.num_params(),
          "context": model_cfg.max_position_embeddings, "ppl_limit": args.ppl_limit,
          "pubmedqa_limit": args.pubmedqa_limit, "notes": args.notes, "max_new_tokens": args.max_new_tokens,
          "prompt_budget": (model_cfg.max_position_embeddings - args.max_new_tokens) // 64 * 64,
          "notes_split": ACI_NOTES_SPLIT,
          "command": "bench/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
          "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, jax {jax.__version__}"},
      "data": {k: v for k, v in manifest.items() if k != "files"},
      "results": results, "winners": ablation_report.winners(results),
      "table2_pattern": ablation_report.table2_pattern(results),
      "stage_s": stage, "wall_s": time.time() - _T0, "wall_span_s": wall_span(root, list(common.ARMS)),
  }
  (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
  ablation_report.write_readme(out, summary)
  log(f"wrote {out / 'README.md'}, report.md, results.json; total {summary['wall_s']:.0f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
