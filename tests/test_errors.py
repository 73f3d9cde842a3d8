"""checkpoint.errors: a failed read becomes one line naming what could not be read."""

import pytest

from heal_jax.checkpoint import errors
from heal_jax.checkpoint.errors import CheckpointError


def test_a_failed_read_names_the_array_that_tensorstore_names_deeper_in_the_chain():
  """orbax's outer message gives only the slice it was reading; the cause names the array."""
  with pytest.raises(CheckpointError, match=r'^W/40 cannot be read \(array opt_state.1.0.mu.wk/0.0.0: OUT_OF_RANGE: '
                                            r'Error reading "opt_state.1.0.mu.wk/0.0.0": byte range\); go back$'):
    with errors.reading("W/40", "go back"):
      try:
        raise ValueError('OUT_OF_RANGE: Error reading "opt_state.1.0.mu.wk/0.0.0": byte range\nmore lines')
      except ValueError as inner:
        raise RuntimeError("Encountered error while reading array index: (slice(0, 128, 1),)") from inner


def test_without_an_array_name_the_outer_error_is_given_and_kept_errors_pass():
  with pytest.raises(CheckpointError, match=r"^W cannot be read \(RuntimeError: outer wrapper\); hint$"):
    with errors.reading("W", "hint"):
      try:
        raise OSError("disk gone")
      except OSError:
        raise RuntimeError("outer wrapper\nwith lines")  # pylint: disable=raise-missing-from
  with pytest.raises(KeyError):
    with errors.reading("W", "hint", keep=(KeyError,)):
      raise KeyError("mine")
