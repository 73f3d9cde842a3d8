"""A directory output that appears whole or not at all.

Everything is written to a hidden staging sibling, `.NAME.partial-HOST-PID`, renamed to NAME when the
block succeeds and removed when it raises. An existing NAME is first renamed aside
(`.NAME.old-HOST-PID`) and removed only after the new one is in place, with SIGTERM and SIGINT held
back across the two renames, so a signal never leaves neither. A process killed outright (SIGKILL,
out of memory) cannot clean up: its staging directory stays, and the next `staged(NAME)` on the same
host removes it once that process is gone; a previous output it had set aside but not yet replaced
(killed between the two renames) is put back as NAME first. Staging directories of other hosts (a
shared filesystem) are left alone: their owner may still be writing. Hosts are told apart by
hostname: containers that share one hostname but not their process ids should not write the same
output at the same time.

An output built in two steps (a work directory exported to HF goes through a converted checkpoint)
keeps its intermediate in `scratch(NAME)`, `.NAME.scratch-HOST-PID`: private to the process, removed
when the block ends, and cleared like a staging directory when its writer was killed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
import signal
import socket
from typing import Iterator

_KINDS = ("partial", "old", "scratch")


def _suffix() -> str:
  """"HOST-PID" of this process: whose staging directory it is."""
  return f"{socket.gethostname()}-{os.getpid()}"


def _alive(pid: int) -> bool:
  """Whether process `pid` of this host exists (another user's counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def stale(dst: pathlib.Path) -> list[pathlib.Path]:
  """The staging and set-aside siblings of `dst` left by dead processes of this host."""
  host = socket.gethostname()
  found = []
  for kind in _KINDS:
    for path in dst.parent.glob(f"{glob.escape(f'.{dst.name}.{kind}-')}*"):
      owner, _, pid = path.name[len(f".{dst.name}.{kind}-"):].rpartition("-")
      if owner == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
        found.append(path)
  return sorted(found)


@contextlib.contextmanager
def staged(dst: pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields a fresh, empty staging directory that replaces `dst` if the block succeeds.

  A symbolic link `dst` is followed (the output replaces its target). `dst`'s parent is created if
  missing. Raises OSError if the staging directory cannot be made (a
  file in the way, a read-only place); whatever the block raises is raised after the staging
  directory is removed.
  """
  dst = pathlib.Path(dst)
  if dst.is_symlink():  # a link to big storage: write there, keep the link
    dst = dst.resolve()
  dst.parent.mkdir(parents=True, exist_ok=True)
  for leftover in stale(dst):
    if leftover.name.startswith(f".{dst.name}.old-") and not dst.exists():
      leftover.rename(dst)  # the previous output, set aside by a writer killed before its replacement
    else:
      shutil.rmtree(leftover, ignore_errors=True)
  staging = dst.parent / f".{dst.name}.partial-{_suffix()}"
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir()
  try:
    yield staging
    blocked = {signal.SIGTERM, signal.SIGINT}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
      _publish(staging, dst)
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


@contextlib.contextmanager
def scratch(dst: pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields a fresh, empty working directory beside `dst` for this process, removed when the block
  ends (however it ends). `dst`'s parent is created if missing."""
  dst = pathlib.Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  work = dst.parent / f".{dst.name}.scratch-{_suffix()}"
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir()
  try:
    yield work
  finally:
    shutil.rmtree(work, ignore_errors=True)


def _publish(staging: pathlib.Path, dst: pathlib.Path) -> None:
  """Renames `staging` to `dst`; a non-empty `dst` is set aside first and removed after."""
  if dst.is_dir() and any(dst.iterdir()):
    old = dst.parent / f".{dst.name}.old-{_suffix()}"
    shutil.rmtree(old, ignore_errors=True)
    dst.rename(old)
    staging.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    return
  if dst.is_dir():
    dst.rmdir()
  staging.rename(dst)
