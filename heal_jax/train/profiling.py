"""An optional jax profiler trace of a few training steps (config.metrics.profile_steps).

The trace starts after global step `profile_after_step` (so compilation and warm-up stay out) and
covers `profile_steps` steps, within one phase (it stops at the phase's end or on SIGTERM). Every
process writes its own trace, under WORKDIR/profile/process_<i>/plugins/profile/<run>/: open it with
TensorBoard's profile plugin, Perfetto (the .trace.json.gz), or `bench/trace_summary.py DIR`. A
profiler that fails to start or stop is reported and training goes on.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import jax


class StepProfiler:
  """Starts and stops the trace around the steps it covers; a no-op when steps == 0."""

  def __init__(self, trace_dir: pathlib.Path, after_step: int, steps: int, log: Callable[[str], None]):
    self.trace_dir, self.start_after, self.steps, self._log = trace_dir, after_step, steps, log
    self._first: int | None = None  # first traced step while a trace is running

  def before_step(self, step: int) -> None:
    """Call before running step `step` (0-based: it produces global step step + 1)."""
    if self.steps and step == self.start_after and self._first is None:
      try:
        jax.profiler.start_trace(str(self.trace_dir))
      except Exception as e:  # pylint: disable=broad-except  # a profile is never worth a failed run
        self._log(f"profile not taken: the profiler did not start ({type(e).__name__}: {e})")
        return
      self._first = step + 1

  def after_step(self, done: int, state: Any) -> None:
    """Call after global step `done`; stops the trace once its steps have run."""
    if self._first is not None and done >= self.start_after + self.steps:
      self._stop(done, state)

  def close(self, done: int, state: Any) -> None:
    """Stops a trace still running (phase end, SIGTERM) at step `done`."""
    if self._first is not None:
      self._stop(done, state)

  def _stop(self, done: int, state: Any) -> None:
    first, self._first = self._first, None
    jax.block_until_ready(state)  # the traced steps' device work inside the trace
    try:
      jax.profiler.stop_trace()
    except Exception as e:  # pylint: disable=broad-except
      self._log(f"profile of steps {first}..{done} lost: the profiler did not stop ({type(e).__name__}: {e})")
      return
    self._log(f"profile of steps {first}..{done} written under {self.trace_dir} (TensorBoard's profile plugin, "
              "or bench/trace_summary.py)")
