"""SIGTERM handling of one process (several processes use jax.distributed's sync manager: test_multiprocess)."""

import os
import signal

from heal_jax.train import preemption


def test_sigterm_sets_the_flag_and_restore_puts_back_the_previous_handler():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
  try:
    p = preemption.Preemption()
    assert not p.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread before kill returns
    assert p.reached(2) and p.reached(3)  # stays set: the loop saves at the first step it checks
    assert not seen  # the run's handler, not the one before it, received it
    p.restore()
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [signal.SIGTERM]
  finally:
    signal.signal(signal.SIGTERM, previous)
