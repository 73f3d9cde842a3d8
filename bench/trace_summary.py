"""Where a profiled step's device time goes: total time per kernel name in a jax profiler trace.

Reads the Chrome-format trace (`<host>.trace.json.gz`) that `jax.profiler.trace(DIR)` writes under
DIR/plugins/profile/<run>/ (e.g. `bench/train.py --breakdown --trace DIR`), keeps the
complete ("X") events of the device processes (names with "/device:"; `--host` adds the host's), and
prints per event name: calls, total ms, ms per step (total / --steps) and share of the device total,
biggest first, then the totals by category (our Pallas kernels, cuDNN attention, matmuls, the rest).
Overlapping events on different streams are summed, so the total can exceed wall time.

  python bench/trace_summary.py DIR [--steps 2] [--top 25] [--host]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib

# Name fragments -> category, first match wins (kernel names as the CUDA profiler reports them).
CATEGORIES = (
    ("ours: flash attention", ("heal_flash_attention",)),
    ("cuDNN attention", ("cudnn", "fmha", "flash_fprop", "flash_bprop")),
    ("matmul", ("gemm", "cutlass", "xmma", "cublas", "nvjet", "dot")),
)


def category(name: str) -> str:
  low = name.lower()
  for label, fragments in CATEGORIES:
    if any(f in low for f in fragments):
      return label
  return "other"


def load_events(trace_dir: pathlib.Path) -> tuple[list[dict], dict[int, str]]:
  """(complete events, pid -> process name) of the newest trace file under trace_dir."""
  files = sorted(trace_dir.glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not files:
    raise SystemExit(f"trace_summary: no *.trace.json.gz under {trace_dir}")
  with gzip.open(files[-1], "rt", encoding="utf-8") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  procs = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  return [e for e in events if e.get("ph") == "X" and "dur" in e], procs


def summarize(events: list[dict], procs: dict[int, str], include_host: bool) -> dict[str, list[float]]:
  """Event name -> [calls, total microseconds] over the chosen processes."""
  keep = {pid for pid, name in procs.items() if "/device:" in name or (include_host and name)}
  totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
  for e in events:
    if e["pid"] in keep:
      totals[e["name"]][0] += 1
      totals[e["name"]][1] += float(e["dur"])
  return dict(totals)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("trace_dir", type=pathlib.Path)
  p.add_argument("--steps", type=int, default=2, help="steps the trace holds (per-step column)")
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--host", action="store_true", help="include host (CPU) events")
  args = p.parse_args(argv)
  events, procs = load_events(args.trace_dir)
  totals = summarize(events, procs, args.host)
  grand = sum(t for _, t in totals.values()) or 1.0
  print(f"{args.trace_dir}: {len(totals)} event names, {grand / 1e3:.1f} ms in all "
        f"({grand / 1e3 / args.steps:.1f} ms per step); processes: {sorted(set(procs.values()))}")
  print(f"{'ms/step':>9s} {'share':>6s} {'calls':>6s}  name")
  for name, (calls, us) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:args.top]:
    print(f"{us / 1e3 / args.steps:9.2f} {us / grand:6.1%} {calls:6d}  {name[:110]}")
  by_cat: dict[str, float] = collections.defaultdict(float)
  for name, (_, us) in totals.items():
    by_cat[category(name)] += us
  print("by category: " + ", ".join(f"{c} {us / 1e3 / args.steps:.1f} ms/step ({us / grand:.0%})"
                                    for c, us in sorted(by_cat.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
  main()
