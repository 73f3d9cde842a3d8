"""A Markdown report of a training work directory, with PNG plots; optionally an ablation comparison.

`heal-jax report --workdir DIR [--out DIR/report] [--ablation DIR1,DIR2,... --names a,b,...]`

It reads only numbers: WORKDIR/metrics.jsonl (train and eval rows, see heal_jax/train/metrics.py),
WORKDIR/config.json (the run's phases, read by the trainer's own reader, heal_jax.train.phases)
and, for ablation arms, WORKDIR/eval_results.json. No training or evaluation text is ever read or written.
The output directory holds report.md and its plots (loss.png, loss_per_source.png, mixture.png,
throughput.png, eval_loss.png, ablation.png), linked by relative paths: copy the folder as a whole. A
plot of these names that this report does not draw (no eval rows now, no arms) is removed, so the
folder never shows an older report's plot.

eval_results.json (optional, one per arm): a flat JSON object of metric name -> number, e.g.
  {"pubmedqa/acc": 0.552, "medqa/acc_norm": 0.311, "notes/missed_rate": 0.42}
Whatever writes it (a script gathering `heal-jax eval ...` outputs) picks the names; the ablation table
shows every metric found in any arm, a blank where an arm lacks it. Values that are not numbers are skipped.

Conventions: a train row at step s covers steps up to s and belongs to the phase with start < s <= end.
When a run restarted from a checkpoint, the rows an earlier attempt wrote after that checkpoint
(a train row whose step is not above the one before it marks the restart) are dropped: the trainer
drops them from metrics.jsonl itself since 2026-11-28, logs written before may still hold them. Token slots
seen = steps run x global batch x seq_len per phase (packed positions, padding included). Training time = sum of step_time_s
over the steps run (compilation included, time lost to restarts not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import math
import pathlib
import re
import statistics
import sys
from typing import Any, Mapping, Sequence


class ReportError(ValueError):
  """A missing or malformed input file."""


PLOT_FILES = ("loss.png", "loss_per_source.png", "mixture.png", "throughput.png", "eval_loss.png", "ablation.png")


@dataclasses.dataclass(frozen=True)
class PhaseSpan:
  """One phase: global steps (start, end], rows per step and row length."""
  name: str
  start: int
  end: int
  seq_len: int
  global_batch: int


@dataclasses.dataclass
class RunData:
  """The numbers of one work directory."""
  workdir: pathlib.Path
  train: list[dict[str, float]]
  eval: list[dict[str, float]]
  phases: list[PhaseSpan]
  eval_results: dict[str, float]

  def sources(self, prefix: str, rows: Sequence[Mapping[str, float]] | None = None) -> list[str]:
    """Source names with a `prefix/<source>` entry in `rows` (default: train and eval rows)."""
    rows = self.train + self.eval if rows is None else rows
    return sorted({k[len(prefix) + 1:] for r in rows for k in r if k.startswith(prefix + "/")})


def read_metrics(path: pathlib.Path) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
  """(train rows, eval rows), each sorted by step with one row per step: at a restart (see the module
  docstring) the rows of the attempt it replaced are dropped."""
  if not path.is_file():
    raise ReportError(f"{path} not found: is this a heal-jax work directory?")
  lines = _text(path).splitlines()
  last_line = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
  by_kind: dict[str, dict[int, dict[str, float]]] = {"train": {}, "eval": {}}
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      step, kind = int(row["step"]), row.get("kind", "train")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError) as e:
      if n == last_line:  # a write cut short by a crash
        print(f"heal-jax report: skipping the truncated last line of {path}", file=sys.stderr)
        continue
      raise ReportError(f"{path}:{n}: malformed metrics row ({e})") from e
    if kind == "train" and by_kind["train"] and step <= max(by_kind["train"]):
      for rows in by_kind.values():  # a restart from an earlier checkpoint: the rows of the attempt it replaced
        for old in [s for s in rows if s >= step]:
          del rows[old]
    if kind in by_kind:
      by_kind[kind][step] = {k: float(v) for k, v in row.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  return tuple([rows[s] for s in sorted(rows)] for rows in (by_kind["train"], by_kind["eval"]))


def _text(path: pathlib.Path) -> str:
  """The file's UTF-8 text; ReportError naming the file and line of a byte that is not UTF-8."""
  data = path.read_bytes()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise ReportError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x})") from None


def read_phases(path: pathlib.Path, last_step: int) -> list[PhaseSpan]:
  """Phase spans from config.json; without it, one phase "run" covering every logged step, its row
  length and batch unknown (0)."""
  if not path.is_file():
    return [PhaseSpan("run", 0, last_step, 0, 0)]
  import ml_collections  # pylint: disable=import-outside-toplevel
  from heal_jax.train import phases as phases_lib  # pylint: disable=import-outside-toplevel  # (imports jax)
  text = _text(path)
  try:  # the trainer's own reader of the phases, on the config the run saved (as a resume reads it)
    phases = phases_lib.from_config(ml_collections.ConfigDict(json.loads(text)))
  except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
    raise ReportError(f"{path}: cannot read the phases ({type(e).__name__}: {e})") from e
  return [PhaseSpan(p.name, p.start, p.end, p.seq_len, p.global_batch) for p in phases]


def read_eval_results(path: pathlib.Path) -> dict[str, float]:
  """WORKDIR/eval_results.json (see the module docstring); {} when absent."""
  if not path.is_file():
    return {}
  try:
    data = json.loads(_text(path))
  except json.JSONDecodeError as e:
    raise ReportError(f"{path}: malformed JSON: {e}") from e
  if not isinstance(data, dict):
    raise ReportError(f"{path}: expected a flat JSON object of metric -> number")
  return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def load_run(workdir: pathlib.Path) -> RunData:
  workdir = pathlib.Path(workdir)
  train, evals = read_metrics(workdir / "metrics.jsonl")
  last = int(max([r["step"] for r in train + evals], default=0))
  phases = read_phases(workdir / "config.json", last)
  return RunData(workdir, train, evals, phases, read_eval_results(workdir / "eval_results.json"))


def phase_of(phases: Sequence[PhaseSpan], step: float) -> PhaseSpan | None:
  return next((p for p in phases if p.start < step <= p.end), None)


def _last(rows: Sequence[Mapping[str, float]], key: str) -> float | None:
  return next((r[key] for r in reversed(rows) if key in r), None)


def _fmt(x: float | None, digits: int = 4) -> str:
  if x is None:
    return ""
  if math.isnan(x) or math.isinf(x):
    return str(x)
  return f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return out + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def phase_stats(run: RunData, phase: PhaseSpan) -> dict[str, float | None]:
  """Steps run, token slots seen (padding included), training time, median tokens/s and MFU, the
  batches' fill (share of slots holding a token, weighted by the steps each row covers; None for logs
  that predate it), final train and held-out losses."""
  train = [r for r in run.train if phase.start < r["step"] <= phase.end]
  evals = [r for r in run.eval if phase.start < r["step"] <= phase.end]
  last_step = int(train[-1]["step"]) if train else phase.start
  seconds, prev, filled, counted = 0.0, phase.start, 0.0, 0
  for r in train:
    seconds += r.get("step_time_s", 0.0) * (r["step"] - prev)
    if r.get("fill") is not None:
      filled += r["fill"] * (r["step"] - prev)
      counted += r["step"] - prev
    prev = r["step"]
  out: dict[str, float | None] = {
      "steps": float(last_step - phase.start), "tokens": float((last_step - phase.start) * phase.global_batch
                                                                * phase.seq_len),
      "time_s": seconds, "loss": _last(train, "loss"),
      "tokens_per_s": _median([r["tokens_per_s"] for r in train if "tokens_per_s" in r]),
      "mfu": _median([r["mfu"] for r in train if "mfu" in r]), "fill": filled / counted if counted else None}
  for s in run.sources("loss"):
    out[f"train/{s}"] = _last(train, f"loss/{s}")
    out[f"heldout/{s}"] = _last(evals, f"loss/{s}")
  return out


def _median(xs: Sequence[float]) -> float | None:
  """The median (robust to the logged intervals that include compilation or an evaluation)."""
  return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- plots


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _mark_phases(ax, phases: Sequence[PhaseSpan]) -> None:
  """Dashed lines at the boundaries between phases, each phase named at the top; x spans every phase."""
  if phases and phases[-1].end > phases[0].start:
    ax.set_xlim(phases[0].start, phases[-1].end)
  for i, p in enumerate(phases):
    if i:
      ax.axvline(p.start, color="grey", linestyle="--", linewidth=0.8)
    ax.text((p.start + p.end) / 2, 1.0, p.name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
            fontsize=8, color="grey")


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  _pyplot().close(fig)
  return path


def _series(rows: Sequence[Mapping[str, float]], key: str) -> tuple[list[float], list[float]]:
  pts = [(r["step"], r[key]) for r in rows if key in r]
  return [p[0] for p in pts], [p[1] for p in pts]


def plot_loss(run: RunData, path: pathlib.Path) -> pathlib.Path:
  """Train loss over steps, one colour per phase, boundaries marked."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 4))
  for p in run.phases:
    xs, ys = _series([r for r in run.train if p.start < r["step"] <= p.end], "loss")
    if xs:
      ax.plot(xs, ys, label=p.name)
  _mark_phases(ax, run.phases)
  ax.set(xlabel="step", ylabel="train loss (nats/token)")
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_lines(run: RunData, rows: Sequence[Mapping[str, float]], prefix: str, ylabel: str, path: pathlib.Path,
               marker: str = "") -> pathlib.Path:
  """One line per source of `prefix/<source>` over steps, phase boundaries marked."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 4))
  for s in run.sources(prefix, rows):
    ax.plot(*_series(rows, f"{prefix}/{s}"), label=s, marker=marker)
  _mark_phases(ax, run.phases)
  ax.set(xlabel="step", ylabel=ylabel)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_mixture(run: RunData, path: pathlib.Path) -> pathlib.Path:
  """Realised share of target tokens per source (stacked; a source absent from a step counts 0)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 4))
  sources = run.sources("share", run.train)
  steps = [r["step"] for r in run.train]
  ax.stackplot(steps, *[[r.get(f"share/{s}", 0.0) for r in run.train] for s in sources], labels=sources,
               step="pre")
  _mark_phases(ax, run.phases)
  ax.set(xlabel="step", ylabel="share of target tokens", ylim=(0, 1))
  ax.legend(fontsize=8, loc="lower right")
  return _save(fig, path)


def plot_throughput(run: RunData, path: pathlib.Path) -> pathlib.Path:
  """tokens/s over steps, and MFU below it when the rows have it (GPU)."""
  plt = _pyplot()
  has_mfu = any("mfu" in r for r in run.train)
  fig, axes = plt.subplots(2 if has_mfu else 1, 1, figsize=(8, 6 if has_mfu else 3.5), squeeze=False)
  ax = axes[0][0]
  ax.plot(*_series(run.train, "tokens_per_s"))
  _mark_phases(ax, run.phases)
  ax.set(xlabel="step", ylabel="tokens/s")
  if has_mfu:
    xs, ys = _series(run.train, "mfu")
    axes[1][0].plot(xs, [100 * y for y in ys])
    _mark_phases(axes[1][0], run.phases)
    axes[1][0].set(xlabel="step", ylabel="MFU (%)")
  return _save(fig, path)


def plot_ablation(arms: Mapping[str, RunData], path: pathlib.Path) -> pathlib.Path:
  """Grouped bars: final held-out loss per source, one bar per arm."""
  plt = _pyplot()
  sources = sorted({s for run in arms.values() for s in run.sources("loss", run.eval)})
  fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(sources) + 2), 4))
  width = 0.8 / max(len(arms), 1)
  for i, (name, run) in enumerate(arms.items()):
    ys = [_last(run.eval, f"loss/{s}") for s in sources]
    ax.bar([j + i * width for j in range(len(sources))], [math.nan if y is None else y for y in ys], width,
           label=name)
  ax.set_xticks([j + width * (len(arms) - 1) / 2 for j in range(len(sources))], sources)
  ax.set(ylabel="final held-out loss (nats/token)")
  ax.legend(fontsize=8)
  return _save(fig, path)


# ---------------------------------------------------------------- Markdown


def run_section(run: RunData, out_dir: pathlib.Path) -> list[str]:
  """The single-run part of the report; writes its plots into out_dir."""
  stats = [phase_stats(run, p) for p in run.phases]
  planned = run.phases[-1].end if run.phases else 0
  done = int(run.train[-1]["step"]) if run.train else 0
  tokens = sum(s["tokens"] for s in stats)
  seconds = sum(s["time_s"] for s in stats)
  lines = ["## Summary", ""]
  known = all(p.seq_len for p in run.phases)  # False without config.json
  summary = [("steps run", f"{done} of {planned}" if known else f"{done} (planned: unknown, no config.json)"),
             ("token slots seen (rows x seq_len, padding included)",
              f"{tokens:,.0f}" if known else "unknown (no config.json)"),
             ("training time (s)", _fmt(seconds, 1)), ("final train loss", _fmt(_last(run.train, "loss")))]
  skipped = _last(run.train, "skipped_steps")
  if skipped:
    summary.append(("skipped steps (non-finite loss or gradient, or no target token)", f"{skipped:.0f}"))
  if run.train and len(run.train) > 1:
    summary.append(("wall-clock span of the log (s)", _fmt(run.train[-1]["time"] - run.train[0]["time"], 1)))
  lines += _table(["", "value"], summary)
  lines += ["## Phases", ""]
  lines += _table(["phase", "steps", "seq_len", "batch", "token slots", "time (s)", "median tokens/s", "median MFU",
                   "fill", "final train loss"],
                  [[p.name, f"{p.start}..{p.end}", str(p.seq_len or "?"), str(p.global_batch or "?"),
                    f"{s['tokens']:,.0f}" if p.seq_len else "?",
                    _fmt(s["time_s"], 1), _fmt(s["tokens_per_s"], 0),
                    "" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%",
                    "" if s["fill"] is None else f"{100 * s['fill']:.1f}%", _fmt(s["loss"])]
                   for p, s in zip(run.phases, stats)])
  sources = run.sources("loss")
  lines += ["## Final losses per source", "", "At the end of each phase (for a phase still running, at its newest "
            "logged step): train = the last logged training batch, "
            "held-out = the last evaluation on held-out examples (mean nats per target token).", ""]
  header = ["source"] + [f"{p.name} {kind}" for p in run.phases for kind in ("train", "held-out")]
  lines += _table(header, [[src] + [_fmt(s[f"{kind}/{src}"]) for s in stats for kind in ("train", "heldout")]
                           for src in sources])
  other = sorted({k for r in run.eval for k in r if "/" in k and not k.startswith("loss/")})
  if other:
    lines += ["## Other evaluations", "", "At the last evaluation of each phase: task accuracy (config.eval.tasks) "
              "and note quality (config.eval.note_examples; instruction-tuning phases only).", ""]
    in_phase = [[r for r in run.eval if p.start < r["step"] <= p.end] for p in run.phases]
    lines += _table(["metric"] + [p.name for p in run.phases],
                    [[k] + [_fmt(_last(rows, k)) for rows in in_phase] for k in other])
  lines += ["## Plots", ""]
  plots = []
  if run.train:
    plots += [("Training loss per phase", plot_loss(run, out_dir / "loss.png"))]
    if run.sources("loss", run.train):  # (none in rows whose steps were all skipped, or in older logs)
      plots += [("Training loss per source", plot_lines(run, run.train, "loss", "train loss (nats/token)",
                                                        out_dir / "loss_per_source.png"))]
    if run.sources("share", run.train):
      plots += [("Realised mixture proportions (share of target tokens)",
                 plot_mixture(run, out_dir / "mixture.png"))]
    plots += [("Throughput" + (" and MFU" if any("mfu" in r for r in run.train) else ""),
               plot_throughput(run, out_dir / "throughput.png"))]
  if run.eval:
    plots.append(("Held-out loss per source", plot_lines(run, run.eval, "loss", "held-out loss (nats/token)",
                                                          out_dir / "eval_loss.png", marker="o")))
  for title, path in plots:
    lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
  if not run.eval:
    lines += ["No held-out evaluation rows yet (written at phase ends, and every config.eval.every_steps, "
              "when config.eval.holdout_examples > 0).", ""]
  return lines


def ablation_section(arms: Mapping[str, RunData], out_dir: pathlib.Path) -> list[str]:
  """Arms side by side: final held-out loss per source, then every eval_results.json metric."""
  sources = sorted({s for run in arms.values() for s in run.sources("loss", run.eval)})
  extra = sorted({k for run in arms.values() for k in run.eval_results})
  rows = [["steps run"] + [str(int(r.train[-1]["step"])) if r.train else "0" for r in arms.values()],
          ["final train loss"] + [_fmt(_last(r.train, "loss")) for r in arms.values()]]
  rows += [[f"held-out loss/{s}"] + [_fmt(_last(r.eval, f"loss/{s}")) for r in arms.values()] for s in sources]
  rows += [[k] + [_fmt(r.eval_results.get(k)) for r in arms.values()] for k in extra]
  lines = ["## Ablation", "", "Final values per arm (held-out loss: the last evaluation; other rows: each "
           "arm's eval_results.json).", ""]
  lines += _table(["metric"] + list(arms), rows)
  for name, run in arms.items():
    lines.append(f"- {name}: `{_shown(run.workdir, out_dir)}`")
  lines.append("")
  if sources:
    path = plot_ablation(arms, out_dir / "ablation.png")
    lines += ["![Final held-out loss per source and arm](" + path.name + ")", ""]
  return lines


def _shown(path: Any, out_dir: Any) -> str:
  """A path as the report shows it: relative to the report's folder (no machine-specific prefix)."""
  return os.path.relpath(pathlib.Path(path).absolute(), pathlib.Path(out_dir).absolute())


def build_report(workdir: pathlib.Path | None, out_dir: pathlib.Path,
                 ablation: Mapping[str, pathlib.Path] | None = None) -> pathlib.Path:
  """Writes out_dir/report.md and its PNGs for `workdir` (and/or the ablation arms); returns report.md."""
  if workdir is None and not ablation:
    raise ReportError("give a work directory, ablation arms, or both")
  out_dir = pathlib.Path(out_dir)
  run = load_run(workdir) if workdir is not None else None  # read everything before writing anything
  arms = {name: load_run(path) for name, path in ablation.items()} if ablation else None
  out_dir.mkdir(parents=True, exist_ok=True)
  lines = ["# heal-jax training report", ""]
  if run is not None:
    lines += [f"Work directory: `{pathlib.Path(workdir).resolve().name}` (`{_shown(workdir, out_dir)}` from this "
              "folder)", ""]
    lines += run_section(run, out_dir)
  if arms:
    lines += ablation_section(arms, out_dir)
  lines += ["Numbers only: this report holds no training or evaluation text.", ""]
  path = out_dir / "report.md"
  path.write_text("\n".join(lines), encoding="utf-8")
  for stale in set(PLOT_FILES) - set(plots_of(path)):
    (out_dir / stale).unlink(missing_ok=True)
  return path


def plots_of(report_md: pathlib.Path) -> list[str]:
  """File names of the images report.md shows, in order."""
  return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report_md.read_text(encoding="utf-8"))


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="heal-jax report", description="Markdown + PNG report of a work "
                                   "directory's metrics, and optionally an ablation across work directories.")
  parser.add_argument("--workdir", type=pathlib.Path, help="the run to report on")
  parser.add_argument("--out", type=pathlib.Path, help="output folder (default: WORKDIR/report)")
  parser.add_argument("--ablation", help="comma-separated work directories to compare side by side")
  parser.add_argument("--names", help="comma-separated arm names for --ablation (default: folder names)")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns the exit status."""
  parser = _parser()
  args = parser.parse_args(argv)
  if args.workdir is None and not args.ablation:
    parser.error("give --workdir, --ablation, or both")
  if args.out is None and args.workdir is None:
    parser.error("--out is required without --workdir")
  if args.names and not args.ablation:
    parser.error("--names needs --ablation")
  arms = None
  if args.ablation:
    dirs = [pathlib.Path(d.strip()) for d in args.ablation.split(",") if d.strip()]
    names = [n.strip() for n in args.names.split(",")] if args.names else [d.resolve().name for d in dirs]
    if any(not n or "|" in n for n in names):
      parser.error(f"arm names must be non-empty and hold no '|' (a Markdown table column): {names}")
    if len(names) != len(dirs):
      parser.error(f"--names has {len(names)} names for {len(dirs)} --ablation directories")
    if len(set(names)) != len(names):
      parser.error(f"arm names must differ: {names} (pass --names)")
    arms = dict(zip(names, dirs))
  out = args.out or args.workdir / "report"
  try:
    if out.exists() and not out.is_dir():
      raise ReportError(f"--out {out}: a file, not a directory")
    path = build_report(args.workdir, out, arms)
  except (OSError, ReportError) as e:  # exit 2 on bad input, as the other commands
    print(f"heal-jax report: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"report": str(path), "plots": plots_of(path)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
