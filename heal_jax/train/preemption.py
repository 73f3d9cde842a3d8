"""SIGTERM (a preemption notice) as a decision every process of a run takes at the same step."""

from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
  """SIGTERM as a decision every process takes at the same step.

  One process: a Python signal handler sets a flag the loop checks after every step. Several
  processes: jax.distributed's preemption sync manager (which owns SIGTERM there) agrees on the
  first step all processes can stop at, so every process saves the same step.
  """

  def __init__(self):
    self._flag = False
    self._multi = jax.process_count() > 1
    self._previous = None
    if not self._multi:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread
        pass

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def reached(self, step: int) -> bool:
    """Call once per step on every process; True at the step to save and stop at."""
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
