"""One trainer per work directory: the lock is exclusive, names its holder, and dies with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from heal_jax.train import workdir_lock


def test_second_holder_is_refused_with_the_holders_pid(tmp_path):
  first = workdir_lock.acquire(tmp_path / "w", print)
  assert first.held
  with pytest.raises(workdir_lock.WorkdirInUse, match=rf"in use by another heal-jax train \(pid {os.getpid()} on"):
    workdir_lock.acquire(tmp_path / "w", print)
  first.release()
  again = workdir_lock.acquire(tmp_path / "w", print)  # released: free again
  again.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  code = ("import sys, time; from heal_jax.train import workdir_lock; "
          f"workdir_lock.acquire({str(tmp_path / 'w')!r}, print); print('locked', flush=True); time.sleep(60)")
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lock.WorkdirInUse, match=f"pid {proc.pid} on"):
      workdir_lock.acquire(tmp_path / "w", print)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  workdir_lock.acquire(tmp_path / "w", print).release()
