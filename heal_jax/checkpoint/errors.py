"""The one error type of checkpoint reading and writing."""

from __future__ import annotations

import contextlib
from typing import Iterator


class CheckpointError(ValueError):
  """A missing, truncated or inconsistent checkpoint; the message names the file, tensor or field."""


@contextlib.contextmanager
def reading(where: str, hint: str, keep: tuple[type[Exception], ...] = ()) -> Iterator[None]:
  """Turns any failure of the orbax/tensorstore read inside into a one-line CheckpointError naming
  `where` (a CheckpointError, or one of the types in `keep`, passes unchanged): their own errors are
  many types and lines long."""
  try:
    yield
  except (CheckpointError, *keep):
    raise
  except Exception as e:  # pylint: disable=broad-except
    detail = (str(e).strip().splitlines() or [""])[0][:300]
    raise CheckpointError(f"{where} cannot be read ({type(e).__name__}: {detail}); {hint}") from e
