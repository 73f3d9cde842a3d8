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

csv.field_size_limit(1 << 24)

ARMS_DIR = REPO / "configs" / "ablations"
DATA_DIR = REPO.parent / "shared" / "data"
ACI_HELDOUT_PPL = ("valid", "clinicalnlp_taskB_test1")  # notes come from clef_taskC_test3: disjoint
ACI_NOTES_SPLIT = "clef_taskC_test3"
MTS_TRAIN = "MTS-Dialog-TrainingSet.csv"
MTS_HELDOUT = "MTS-Dialog-TestSet-1-MEDIQA-Chat-2023.csv"
# metric -> (held-out tier it measures, True when higher is better)
WINNER_METRICS = {
    "nll_general": ("general text (synthetic, seed 1)", False),
    "nll_medical": ("medical literature (PubMedQA test abstracts)", False),
    "nll_clinical": ("clinical conversations + notes (ACI-Bench valid + test1)", False),
    "nll_clinical_mts": ("clinical conversations + notes (MTS-Dialog test-1)", False),
    "pubmedqa_acc": ("PubMedQA accuracy", True),
    "pubmedqa_acc_norm": ("PubMedQA accuracy (length-normalised)", True),
    "rougeL": ("generated notes: ROUGE-L", True),
    "rouge1": ("generated notes: ROUGE-1", True),
    "missed_rate": ("generated notes: missed information", False),
    "incorrect_rate": ("generated notes: incorrect information", False),
    "irrelevant_rate": ("generated notes: irrelevant information", False),
}
MEDICAL_ARMS = ("medical_only", "heal_equal", "no_general")
NON_MEDICAL_ARMS = ("general_only", "clinical_only")

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
  from heal_jax.eval import tasks  # pylint: disable=import-outside-toplevel
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
  from heal_jax.infer import generate  # pylint: disable=import-outside-toplevel
  turns = generate.normalize_conversation(conversation).split("\n")
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


def winners(results: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
  """Per metric: the best arm, its value, the runner-up and the margin."""
  out = {}
  for metric, (tier, higher) in WINNER_METRICS.items():
    vals = {a: r[metric] for a, r in results.items() if metric in r and not math.isnan(r[metric])}
    if not vals:
      continue
    ranked = sorted(vals, key=lambda a: -vals[a] if higher else vals[a])
    best = [a for a in ranked if vals[a] == vals[ranked[0]]]
    runner = next((a for a in ranked if vals[a] != vals[ranked[0]]), None)
    out[metric] = {"tier": tier, "higher_is_better": higher, "best": best, "value": vals[ranked[0]],
                   "runner_up": runner, "margin": abs(vals[ranked[0]] - vals[runner]) if runner else 0.0}
  return out


def table2_pattern(results: dict[str, dict[str, float]]) -> dict[str, Any]:
  """HEAL's Table 2 pattern, checked on the numbers: (a) without general text general perplexity is worse;
  (b) arms trained on medical data have lower medical perplexity than arms without it."""
  out: dict[str, Any] = {}
  if {"heal_equal", "no_general"} <= set(results):
    a, b = results["heal_equal"]["nll_general"], results["no_general"]["nll_general"]
    out["dropping_general_hurts_general"] = {
        "holds": b > a, "heal_equal_nll_general": a, "no_general_nll_general": b, "delta_nll": b - a,
        "ppl_ratio": math.exp(b - a)}
  med = {a: results[a]["nll_medical"] for a in MEDICAL_ARMS if a in results}
  non = {a: results[a]["nll_medical"] for a in NON_MEDICAL_ARMS if a in results}
  if med and non:
    out["medical_data_lowers_medical_ppl"] = {
        "holds": max(med.values()) < min(non.values()),
        "holds_on_means": sum(med.values()) / len(med) < sum(non.values()) / len(non),
        "with_medical": med, "without_medical": non,
        "gap_nll": min(non.values()) - max(med.values())}
  return out


TABLE_METRICS = ("nll_general", "ppl_general", "nll_medical", "ppl_medical", "nll_clinical", "ppl_clinical",
                 "nll_clinical_mts", "ppl_clinical_mts", "pubmedqa_acc", "pubmedqa_acc_norm", "pubmedqa_share_yes",
                 "rouge1", "rouge2", "rougeL", "missed_rate", "incorrect_rate", "irrelevant_rate",
                 "notes_words_mean")


def plot_tiers(results: dict[str, dict[str, float]], out: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  arms = list(results)
  groups = [("nll_general", "general"), ("nll_medical", "medical\n(PubMedQA)"),
            ("nll_clinical", "clinical\n(ACI-Bench)"), ("nll_clinical_mts", "clinical\n(MTS-Dialog)")]
  fig, ax = plt.subplots(figsize=(9, 4))
  width = 0.8 / len(arms)
  for i, arm in enumerate(arms):
    ax.bar([j + i * width for j in range(len(groups))], [results[arm][m] for m, _ in groups], width, label=arm)
  ax.set_xticks([j + width * (len(arms) - 1) / 2 for j in range(len(groups))], [g for _, g in groups])
  ax.set(ylabel="held-out NLL (nats/token, lower is better)", title="Held-out perplexity per tier")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "tiers.png", dpi=110)
  plt.close(fig)
  metrics = [("pubmedqa_acc", "PubMedQA acc"), ("pubmedqa_acc_norm", "PubMedQA acc_norm"), ("rouge1", "ROUGE-1"),
             ("rougeL", "ROUGE-L"), ("missed_rate", "missed"), ("incorrect_rate", "incorrect"),
             ("irrelevant_rate", "irrelevant")]
  fig, ax = plt.subplots(figsize=(10, 4))
  for i, arm in enumerate(arms):
    ax.bar([j + i * width for j in range(len(metrics))], [results[arm].get(m, math.nan) for m, _ in metrics],
           width, label=arm)
  ax.set_xticks([j + width * (len(arms) - 1) / 2 for j in range(len(metrics))], [n for _, n in metrics])
  ax.axhline(0.552, color="grey", linestyle=":", linewidth=0.8)
  ax.set(ylabel="score / rate", title="PubMedQA (dotted: always-yes 0.552) and generated-note metrics")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "tasks.png", dpi=110)
  plt.close(fig)


def _fmt(x: Any) -> str:
  if isinstance(x, float):
    return f"{x:.4f}" if abs(x) < 100 else f"{x:.1f}"
  return str(x)


def write_readme(out: pathlib.Path, summary: dict[str, Any]) -> None:
  results, win, pattern = summary["results"], summary["winners"], summary["table2_pattern"]
  arms = list(results)
  s = summary["settings"]
  lines = [
      "# Mixture ablation at tiny scale (issue 8)", "",
      "Generated by `bench/ablation.py`" + (" (--smoke: a plumbing check, the numbers mean nothing)"
                                            if s["smoke"] else "") + "; every number, verdict and plot below comes "
      "from the code. Full per-run report (training curves, held-out loss per training source): "
      "[report.md](report.md); all numbers: [results.json](results.json).", "",
      "## Setup", "",
      f"- Model: {s['params']:,}-parameter LLaMA (configs/ablations/common.py), context {s['context']}.",
      f"- Base: from scratch on equal thirds, {s['base_steps']} steps x {s['global_batch']} x {s['seq_len']} "
      f"tokens ({s['base_tokens']:,} tokens).",
      f"- Arms: each starts from the base checkpoint and trains {s['arm_steps']} steps x {s['global_batch']} x "
      f"{s['seq_len']} = {s['arm_tokens']:,} tokens; only the mixture weights differ "
      "(configs/ablations/*.py, checked by tests/test_ablation.py):", ""]
  lines += [f"  - `{a}`: `{w}`" for a, w in s["arms"].items()]
  lines += ["", "Trained on:", ""] + [f"- {k}: {v}" for k, v in summary["data"]["trained_on"].items()]
  lines += ["", "Held out (never trained on):", ""] + [f"- {k}: {v}" for k, v in summary["data"]["held_out"].items()]
  lines += ["", f"Evaluation: perplexity = exp(NLL per token) over every text (BOS prepended, windows of "
            f"{s['context']} tokens; a seeded random subset of {s['ppl_limit'] or 'all'} texts per set); PubMedQA zero-shot on "
            f"{results[arms[0]].get('pubmedqa_n', 0):.0f} test questions (acc = argmax log-likelihood, acc_norm "
            "divides by answer length); notes generated greedily (at most "
            f"{s['max_new_tokens']} new tokens) for {results[arms[0]].get('notes', 0):.0f} ACI-Bench "
            f"{ACI_NOTES_SPLIT} conversations, each cut to its first whole turns that fit a "
            f"{s['prompt_budget']}-token prompt (on average "
            f"{100 * results[arms[0]].get('notes_turns_kept_share', 0):.0f}% of the turns), scored with ROUGE "
            "against the full reference note and with the automatic rubric (heal_jax.eval.notes) using the full "
            "conversation as source. The arms are pretraining-only (no instruction tuning); the clinical tier "
            "trains on the note-writing prompt itself, so arms without clinical data have never seen it.", ""]
  lines += ["## Results", "", "Best value per row in bold.", ""]
  lines.append("| metric | " + " | ".join(arms) + " |")
  lines.append("|---|" + "---|" * len(arms))
  for m in TABLE_METRICS:
    if not any(m in results[a] for a in arms):
      continue
    base_metric = m.replace("ppl_", "nll_")
    best = win.get(base_metric, {}).get("best", [])
    cells = [(f"**{_fmt(results[a][m])}**" if a in best else _fmt(results[a][m])) if m in results[a] else ""
             for a in arms]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  lines += ["", "![Held-out NLL per tier](tiers.png)", "", "![PubMedQA and note metrics](tasks.png)", "",
            "## Which arm wins where", ""]
  for m, w in win.items():
    runner = f"; runner-up {w['runner_up']} by {w['margin']:.4f}" if w["runner_up"] else ""
    lines.append(f"- {w['tier']} (`{m}`, {'higher' if w['higher_is_better'] else 'lower'} is better): "
                 f"**{', '.join(w['best'])}** ({w['value']:.4f}{runner})")
  lines += ["", "## Does the Table 2 pattern hold at this scale?", ""]
  d = pattern.get("dropping_general_hurts_general")
  if d:
    lines.append(f"- Dropping general text hurts general perplexity: **{'yes' if d['holds'] else 'no'}** — "
                 f"general NLL {d['no_general_nll_general']:.4f} without general text (no_general) vs "
                 f"{d['heal_equal_nll_general']:.4f} with it (heal_equal); perplexity ratio {d['ppl_ratio']:.3f}.")
  m = pattern.get("medical_data_lowers_medical_ppl")
  if m:
    lines.append(f"- Medical data lowers medical perplexity: **{'yes' if m['holds'] else 'no'}** (every arm "
                 "with medical data below every arm without it; on the group means: "
                 f"{'yes' if m['holds_on_means'] else 'no'}) — PubMedQA-abstract NLL with medical data: " +
                 ", ".join(f"{a} {v:.4f}" for a, v in m["with_medical"].items()) + "; without: " +
                 ", ".join(f"{a} {v:.4f}" for a, v in m["without_medical"].items()) + ".")
  pq = [results[a].get("pubmedqa_acc", math.nan) for a in arms]
  lines += ["", "Caveats: one seed per arm and no error bars; at this size PubMedQA accuracy sits near the "
            f"answer-prior baselines (always-yes 0.552 on the full test set; arms span {min(pq):.3f}-{max(pq):.3f}), "
            "and the generated notes are far from usable, so the note metrics compare degrees of failure. The "
            "general tier is synthetic, templated prose (there is no real general corpus in ../shared/data), so "
            "its perplexity measures how well a template family is memorised, not general language ability.", ""]
  span = summary["wall_span_s"]
  lines += ["## Run", "", f"- Command: `{s['command']}` on {s['machine']}",
            f"- End-to-end wall time over all invocations: {span:.0f} s ({span / 60:.1f} min), from the base "
            "run's first training step (its first metrics row, back-dated by the logged step time) to the last "
            "arm's eval_results.json.",
            f"- This invocation: {summary['wall_s']:.0f} s; stage times (s): " +
            ", ".join(f"{k} {v:.0f}" for k, v in summary["stage_s"].items()) +
            " (a stage found done by an earlier invocation takes seconds here).", ""]
  (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


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
  plot_tiers(results, out)
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
          "command": "bench/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
          "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, jax {jax.__version__}"},
      "data": {k: v for k, v in manifest.items() if k != "files"},
      "results": results, "winners": winners(results), "table2_pattern": table2_pattern(results),
      "stage_s": stage, "wall_s": time.time() - _T0, "wall_span_s": wall_span(root, list(common.ARMS)),
  }
  (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
  write_readme(out, summary)
  log(f"wrote {out / 'README.md'}, report.md, results.json; total {summary['wall_s']:.0f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
