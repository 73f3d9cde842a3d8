"""bench/trace_summary.py: device time per kernel and per category from a hand-made Perfetto trace."""

import gzip
import importlib.util
import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("trace_summary", REPO / "bench" / "trace_summary.py")
trace_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(trace_summary)


def _write_trace(path: pathlib.Path) -> None:
  events = [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
      {"ph": "X", "pid": 1, "tid": 7, "name": "heal_flash_attention_fwd", "ts": 0, "dur": 300},
      {"ph": "X", "pid": 1, "tid": 7, "name": "heal_flash_attention_fwd", "ts": 400, "dur": 100},
      {"ph": "X", "pid": 1, "tid": 7, "name": "sm90_xmma_gemm_bf16", "ts": 600, "dur": 1000},
      {"ph": "X", "pid": 1, "tid": 8, "name": "loop_add_fusion", "ts": 600, "dur": 50},
      {"ph": "X", "pid": 2, "tid": 1, "name": "PjitFunction(step)", "ts": 0, "dur": 5000},
      {"ph": "i", "pid": 1, "tid": 7, "name": "instant", "ts": 10},
  ]
  path.parent.mkdir(parents=True)
  with gzip.open(path, "wt", encoding="utf-8") as f:
    json.dump({"traceEvents": events}, f)


def test_sums_device_events_per_name_and_category(tmp_path, capsys):
  _write_trace(tmp_path / "plugins" / "profile" / "run1" / "host.trace.json.gz")
  events, procs = trace_summary.load_events(tmp_path)
  totals = trace_summary.summarize(events, procs, include_host=False)
  assert totals == {"heal_flash_attention_fwd": [2, 400.0], "sm90_xmma_gemm_bf16": [1, 1000.0],
                    "loop_add_fusion": [1, 50.0]}
  assert trace_summary.summarize(events, procs, include_host=True)["PjitFunction(step)"] == [1, 5000.0]
  trace_summary.main([str(tmp_path), "--steps", "2"])
  out = capsys.readouterr().out
  # 1450 us over 2 steps; categories: matmul 0.5 ms/step, ours 0.2, other 0.025.
  assert "1.4 ms in all (0.7 ms per step)" in out
  assert "matmul 0.5 ms/step (69%), ours: flash attention 0.2 ms/step (28%), other 0.0 ms/step (3%)" in out


def test_names_the_directory_without_a_trace(tmp_path):
  with pytest.raises(SystemExit, match=str(tmp_path)):
    trace_summary.load_events(tmp_path)
