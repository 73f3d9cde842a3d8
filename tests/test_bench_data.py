"""bench/data.py runs end to end (short rounds): its numbers are consistent with each other."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_short_run_prints_consistent_rates(tmp_path):
  proc = subprocess.run([sys.executable, str(REPO / "bench" / "data.py"), "--workdir", str(tmp_path / "w"),
                         "--seconds", "0.3", "--rounds", "1", "--seq-len", "512", "--batch", "4"],
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["pack_defer"] == 16 and result["seq_len"] == 512 and result["batch"] == 4
  for kind in ("online", "prepared"):  # padding counts in positions, not in tokens (fill ~0.9 here)
    assert 0.8 * result[f"{kind}_positions_per_s"] < result[f"{kind}_tokens_per_s"] <= result[f"{kind}_positions_per_s"]
  assert result["online_ratio"] == result["online_tokens_per_s"] / result["raw_encode_tokens_per_s"]
