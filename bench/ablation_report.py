"""Mixture ablation, the report half: winners per metric, the Table 2 verdict, plots and README.md.

Everything here is computed from the arms' evaluation results (`bench/ablation.py` writes them and
calls these); nothing is typed in by hand.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

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
            f"{s['notes_split']} conversations, each cut to its first whole turns that fit a "
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
