"""One trainer per work directory: an advisory lock on WORKDIR/.heal-jax-train.lock.

Two trainers on one work directory would overwrite each other's checkpoints and interleave their
metrics, so `heal-jax train` takes an exclusive `flock` on this file (process 0 only; the other
processes of a multi-host run share its work directory). The kernel drops the lock when the holder
exits, however it exits (SIGKILL included), so there is never a stale lock to clean up. The file
itself stays and says who held it last: {"pid", "host", "started"}.

On a filesystem without locks (some FUSE mounts) training goes on after a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import socket
import time
from typing import Callable

LOCK_NAME = ".heal-jax-train.lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirInUse(RuntimeError):
  """Another live process holds the work directory's lock."""


class WorkdirLock:
  """Held from `acquire` until `release` (or until the process exits)."""

  def __init__(self, fd: int | None):
    self._fd = fd

  @property
  def held(self) -> bool:
    return self._fd is not None

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor releases the flock
      self._fd = None


def _holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    return (f"pid {info['pid']} on host {info['host']}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))}")
  except (ValueError, KeyError, TypeError, OSError):
    return "holder unknown"


def acquire(workdir: pathlib.Path, log: Callable[[str], None]) -> WorkdirLock:
  """Locks `workdir` (created if missing) for this process, or raises WorkdirInUse naming the holder."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_NAME
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _holder(fd)
    os.close(fd)
    raise WorkdirInUse(f"work directory {workdir} is in use by another heal-jax train ({holder}; lock file "
                       f"{path}). Wait for it to finish or stop it; two trainers would overwrite each "
                       "other's checkpoints.") from None
  except OSError as e:
    os.close(fd)
    if e.errno not in _UNSUPPORTED:
      raise
    log(f"warning: cannot lock {path} ({e.strerror}): this filesystem has no file locks; make sure no other "
        "trainer uses this work directory")
    return WorkdirLock(None)
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode(), 0)
  return WorkdirLock(fd)
