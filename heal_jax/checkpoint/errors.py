"""The one error type of checkpoint reading and writing."""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

_TENSORSTORE_READ = re.compile(r'Error reading "([^"]+)"')


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
    raise CheckpointError(f"{where} cannot be read ({_detail(e)}); {hint}") from e


def _detail(e: BaseException) -> str:
  """One line about a read failure: the array TensorStore names where any error of the chain does
  (the outer orbax message only gives the slice it was reading), else the outer error's first line
  (which names the file for orbax's own reads)."""
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  for x in chain:
    m = _TENSORSTORE_READ.search(str(x))
    if m:
      return f"array {m.group(1)}: {_first_line(x)[:300]}"
  return f"{type(chain[0]).__name__}: {_first_line(chain[0])[:300]}"


def _first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [""])[0]
