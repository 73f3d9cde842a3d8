"""Agreement of the rule-based HEAL rubric with people on MTS-Dialog's correlation study.

Data: ../shared/data/mts-dialog/Correlation-Study (Ben Abacha et al., EACL 2023, CC BY 4.0): 200 automatic
summaries of validation dialogues (rows 0-99 system 1, 100-199 system 2) with human FactualPrecision,
FactualRecall, FactualF1, HallucinationRate and OmissionRate per summary, in the same row order.

For each summary we score `heal_jax.eval.notes.score_note(summary, reference section text, dialogue)` and
report
- Spearman of our missed_rate with OmissionRate (higher = more omitted; expected positive) and with
  FactualRecall (expected negative);
- ROC-AUC of incorrect_rate + irrelevant_rate for flagging summaries with FactualPrecision < 1;
next to a plain word-overlap baseline: 1 - ROUGE-1 recall against the reference (omission) and the share of
summary words found in neither the reference nor the dialogue (precision flag). Nothing is fitted on these
rows. Spearman and AUC are computed here with average ranks for ties.

Usage: python bench/rubric_correlation.py [--data DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
import time

import numpy as np
from rouge_score import tokenizers
from scipy import stats

from heal_jax.eval import notes
from heal_jax.eval import rouge

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mts-dialog" / "Correlation-Study"


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman's rho: Pearson correlation of average ranks."""
  rx, ry = stats.rankdata(x), stats.rankdata(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  denom = np.sqrt((rx**2).sum() * (ry**2).sum())
  return float((rx * ry).sum() / denom) if denom else float("nan")


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
  """P(score of a random positive > score of a random negative), ties counting one half (Mann-Whitney U)."""
  label = label.astype(bool)
  n_pos, n_neg = int(label.sum()), int((~label).sum())
  if not n_pos or not n_neg:
    return float("nan")
  ranks = stats.rankdata(score)
  return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def load(data: pathlib.Path) -> tuple[list[dict[str, str]], dict[str, np.ndarray]]:
  with open(data / "MTS-Dialog-Automatic-Summaries-ValidationSet.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  with open(data / "MTS-Dialog-Manual-Scores4CorrelationStudy.csv", encoding="utf-8") as f:
    human = list(csv.DictReader(f))
  assert len(rows) == len(human) == 200, (len(rows), len(human))
  return rows, {k: np.array([float(h[k]) for h in human]) for k in human[0]}


def word_overlap_baseline(summary: str, reference: str, dialogue: str, scorer) -> tuple[float, float]:
  """(1 - unigram recall vs the reference, share of summary words in neither reference nor dialogue)."""
  recall = scorer.score(reference, summary)["rouge1"].recall
  tokenize = tokenizers.DefaultTokenizer(use_stemmer=False).tokenize  # rouge-score's own tokenizer
  words = tokenize(summary)
  known = set(tokenize(reference)) | set(tokenize(dialogue))
  unsupported = sum(w not in known for w in words) / len(words) if words else 0.0
  return 1.0 - recall, unsupported


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
  args = parser.parse_args(argv)
  rows, human = load(args.data)
  scorer = rouge.make_scorer()
  start = time.perf_counter()
  ours = [notes.score_note(r["Automatic Summary"], r["Reference Summary"], r["Dialogue"]) for r in rows]
  seconds = time.perf_counter() - start
  base = [word_overlap_baseline(r["Automatic Summary"], r["Reference Summary"], r["Dialogue"], scorer)
          for r in rows]
  missed = np.array([o["missed_rate"] for o in ours])
  flag = np.array([o["incorrect_rate"] + o["irrelevant_rate"] for o in ours])
  base_missed = np.array([b[0] for b in base])
  base_flag = np.array([b[1] for b in base])
  imprecise = human["FactualPrecision"] < 1

  for x, y in ((missed, human["OmissionRate"]), (base_missed, human["FactualRecall"])):
    assert abs(spearman(x, y) - stats.spearmanr(x, y).statistic) < 1e-9  # our rho matches scipy's
  pairs = [(p > n) + 0.5 * (p == n) for p in flag[imprecise] for n in flag[~imprecise]]
  assert abs(roc_auc(flag, imprecise) - np.mean(pairs)) < 1e-12  # rank formula matches counting pairs

  def block(m, f, sl=slice(None)):
    return {"spearman_omission": spearman(m[sl], human["OmissionRate"][sl]),
            "spearman_recall": spearman(m[sl], human["FactualRecall"][sl]),
            "auc_precision_lt_1": roc_auc(f[sl], imprecise[sl])}

  results = {}
  for name, m, f in (("rubric", missed, flag), ("word_overlap", base_missed, base_flag)):
    for part, sl in (("all", slice(None)), ("system1", slice(0, 100)), ("system2", slice(100, 200))):
      results[f"{name}/{part}"] = block(m, f, sl)

  print(f"MTS-Dialog correlation study: {len(rows)} summaries, {int(imprecise.sum())} with FactualPrecision < 1; "
        f"rubric scored in {seconds:.1f} s")
  print(f"{'metric/rows':<22} {'rho(missed, Omission)':>22} {'rho(missed, Recall)':>20} {'AUC(inc+irr, P<1)':>18}")
  for key, r in results.items():
    print(f"{key:<22} {r['spearman_omission']:>22.3f} {r['spearman_recall']:>20.3f} {r['auc_precision_lt_1']:>18.3f}")
  final = {"spearman_missed_omission": results["rubric/all"]["spearman_omission"],
           "spearman_missed_recall": results["rubric/all"]["spearman_recall"],
           "auc_incorrect_plus_irrelevant": results["rubric/all"]["auc_precision_lt_1"],
           "baseline_spearman_omission": results["word_overlap/all"]["spearman_omission"],
           "baseline_spearman_recall": results["word_overlap/all"]["spearman_recall"],
           "baseline_auc": results["word_overlap/all"]["auc_precision_lt_1"],
           "rows": len(rows), "flagged": int(imprecise.sum()),
           "targets": {"spearman_omission": 0.7, "auc": 0.75}}
  print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in final.items()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
