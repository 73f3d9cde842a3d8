"""atomic_dir.staged: whole-or-nothing directory outputs, and leftovers of killed writers cleared."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from heal_jax import atomic_dir


def _siblings(dst: pathlib.Path) -> list[str]:
  return sorted(p.name for p in dst.parent.iterdir() if p.name != dst.name)


def test_success_replaces_the_old_output_and_leaves_nothing_beside_it(tmp_path):
  dst = tmp_path / "out"
  dst.mkdir()
  (dst / "old.txt").write_text("old")
  with atomic_dir.staged(dst) as staging:
    assert staging.parent == tmp_path and staging.name.startswith(".out.partial-") and not any(staging.iterdir())
    (staging / "new.txt").write_text("new")
    assert (dst / "old.txt").read_text() == "old"  # untouched until the block succeeds
  assert sorted(p.name for p in dst.iterdir()) == ["new.txt"]
  assert _siblings(dst) == []


def test_a_failing_block_keeps_the_old_output_and_removes_the_staging(tmp_path):
  dst = tmp_path / "out"
  dst.mkdir()
  (dst / "old.txt").write_text("old")
  with pytest.raises(KeyboardInterrupt):
    with atomic_dir.staged(dst) as staging:
      (staging / "new.txt").write_text("half")
      raise KeyboardInterrupt
  assert sorted(p.name for p in dst.iterdir()) == ["old.txt"]
  assert _siblings(dst) == []


def test_a_link_is_followed_and_kept(tmp_path):
  storage = tmp_path / "storage"
  storage.mkdir()
  link = tmp_path / "work" / "out"
  link.parent.mkdir()
  link.symlink_to(storage / "out", target_is_directory=True)
  with atomic_dir.staged(link) as staging:
    assert staging.parent == storage
    (staging / "a").write_text("1")
  assert link.is_symlink() and (storage / "out" / "a").read_text() == "1"


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_one(tmp_path):
  """A writer killed with SIGKILL cannot clean up; the next output of the same name on this host does,
  and only for dead owners: a live process's staging and another host's are kept."""
  dst = tmp_path / "out"
  script = ("import pathlib, sys, time\nfrom heal_jax import atomic_dir\n"
            "with atomic_dir.staged(pathlib.Path(sys.argv[1])) as s:\n"
            "  (s / 'big.bin').write_bytes(b'x' * 1000)\n  print('writing', flush=True)\n  time.sleep(60)\n")
  proc = subprocess.Popen([sys.executable, "-c", script, str(dst)], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "writing"
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  left = f".out.partial-{socket.gethostname()}-{proc.pid}"
  assert _siblings(dst) == [left]

  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    kept = [f".out.partial-{socket.gethostname()}-{live.pid}", ".out.partial-otherhost-1", ".out.old-otherhost-2",
            f".out.scratch-{socket.gethostname()}-{live.pid}"]
    for name in kept:
      (tmp_path / name).mkdir()
    dead_old = tmp_path / f".out.old-{socket.gethostname()}-{proc.pid}"  # set aside by the killed writer
    dead_old.mkdir()
    dead_scratch = tmp_path / f".out.scratch-{socket.gethostname()}-{proc.pid}"  # an intermediate it built
    dead_scratch.mkdir()
    assert atomic_dir.stale(dst) == sorted([dead_old, dead_scratch, tmp_path / left])
    with atomic_dir.staged(dst) as staging:
      (staging / "a").write_text("1")
    assert _siblings(dst) == sorted(kept)
    assert (dst / "a").read_text() == "1"
  finally:
    live.kill()
    live.wait()


def test_sigterm_while_writing_leaves_no_staging(tmp_path):
  """SIGTERM (as the CLI turns it into SystemExit) during the block removes the staging directory."""
  dst = tmp_path / "out"
  script = ("import pathlib, signal, sys, time\nfrom heal_jax import atomic_dir\n"
            "signal.signal(signal.SIGTERM, lambda n, f: sys.exit(128 + n))\n"
            "with atomic_dir.staged(pathlib.Path(sys.argv[1])) as s:\n"
            "  (s / 'part').write_text('x')\n  print('writing', flush=True)\n  time.sleep(60)\n")
  proc = subprocess.Popen([sys.executable, "-c", script, str(dst)], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "writing"
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 128 + signal.SIGTERM
  deadline = time.time() + 5
  while time.time() < deadline and os.listdir(tmp_path):
    time.sleep(0.05)
  assert os.listdir(tmp_path) == []


def test_an_output_set_aside_by_a_killed_writer_is_put_back(tmp_path):
  """Killed between its two renames, a writer leaves no NAME and the previous output as `.NAME.old-...`:
  the next write restores it first, so a failure of that write too still leaves the previous output."""
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  dst = tmp_path / "run[1]"  # glob characters in the name: its leftovers are still found
  old = tmp_path / f".run[1].old-{socket.gethostname()}-{dead.pid}"
  old.mkdir()
  (old / "weights.bin").write_text("previous")
  with pytest.raises(RuntimeError):
    with atomic_dir.staged(dst) as staging:
      (staging / "weights.bin").write_text("half")
      raise RuntimeError("the new write fails too")
  assert (dst / "weights.bin").read_text() == "previous" and _siblings(dst) == []


def test_scratch_is_private_and_removed_however_the_block_ends(tmp_path):
  dst = tmp_path / "out"
  with atomic_dir.scratch(dst) as work:
    assert work.name == f".out.scratch-{socket.gethostname()}-{os.getpid()}" and work.is_dir()
    (work / "x").write_text("1")
    assert atomic_dir.stale(dst) == []  # this process is alive: not a leftover
  assert not work.exists()
  with pytest.raises(RuntimeError):
    with atomic_dir.scratch(dst) as work:
      raise RuntimeError
  assert not work.exists() and list(tmp_path.iterdir()) == []
