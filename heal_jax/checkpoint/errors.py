"""The one error type of checkpoint reading and writing."""


class CheckpointError(ValueError):
  """A missing, truncated or inconsistent checkpoint; the message names the file, tensor or field."""
