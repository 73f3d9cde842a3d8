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


def test_a_checkpoint_path_that_is_missing_or_a_hugging_face_folder_is_named_as_such(tmp_path):
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  with pytest.raises(CheckpointError, match=f"^{tmp_path / 'none'}: no such file or directory$"):
    restore.load_model(tmp_path / "none")
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text("{}")
  with pytest.raises(CheckpointError, match=r"hf: neither a converted checkpoint .* it looks like a Hugging Face "
                                            r"checkpoint: convert it first \(heal-jax convert hf-to-orbax .*hf DIR\)$"):
    restore.load_model(tmp_path / "hf")
  with pytest.raises(CheckpointError, match=r"neither a converted checkpoint .*\(checkpoints/N\)$"):
    restore.load_model(tmp_path)
