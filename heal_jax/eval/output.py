"""Per-row JSONL outputs of the eval commands (`--output`): checked before any scoring, written after."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import IO, Any


def check_writable(path: pathlib.Path, inputs: Sequence[pathlib.Path | None] = (),
                   row_keys: Collection[str] = ()) -> None:
  """OSError unless `path` is none of `inputs` and a file can be written there (its folder is
  created): called before a model is loaded, so a bad --output does not lose an hour of scoring.
  With `row_keys`, an existing non-empty file is replaced only if it is a rows file of the same
  command (its first line a JSON object with those keys): not a checkpoint's manifest, a data file
  inside a --data folder or a run's metrics.jsonl."""
  path = pathlib.Path(path)
  for given in inputs:
    if given is not None and path.exists() and given.exists() and path.samefile(given):
      raise OSError(f"{path} is also an input ({given}): it would be overwritten; choose another output")
  if path.exists() and not os.access(path, os.W_OK):
    raise OSError(f"{path}: not writable")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OSError(f"{path}: cannot create its folder: {e}") from None
  if path.is_dir() or not os.access(path.parent, os.W_OK):
    raise OSError(f"{path}: cannot write a file there")
  if row_keys and not is_rows_file(path, row_keys):
    raise OSError(f"{path} exists and is not a rows file of this command (its first line is not a JSON object "
                  f"with {', '.join(repr(k) for k in row_keys)}): remove it or choose another output")


def is_rows_file(path: pathlib.Path, row_keys: Collection[str]) -> bool:
  """Whether `path` may be replaced by a rows file with `row_keys`: it does not exist, is empty, or its
  first line is a JSON object holding all of them."""
  path = pathlib.Path(path)
  if not path.exists() or (path.is_file() and path.stat().st_size == 0):
    return True
  if not path.is_file():
    return False
  from heal_jax.data import check  # pylint: disable=import-outside-toplevel
  with open(path, "rb") as f:
    first = f.readline(1 << 24)
  try:
    row, reason = check.parse_json(first.decode("utf-8"))
  except UnicodeDecodeError:
    return False
  return reason is None and isinstance(row, dict) and all(key in row for key in row_keys)


def strict(value: Any) -> Any:
  """`value` with every NaN or infinite float replaced by None, so that it dumps as strict JSON."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, Mapping):
    return {k: strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict(v) for v in value]
  return value


@contextlib.contextmanager
def whole_file(path: pathlib.Path, mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
  """The file object of a temporary sibling of `path`, renamed over it when the block succeeds and
  removed when it raises: a failed or killed run leaves the earlier file, never half of one. A link
  is followed: the file it points to is replaced, and the link stays."""
  target = pathlib.Path(os.path.realpath(path))
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
  try:
    with open(tmp, mode, **open_args) as f:
      yield f
    os.replace(tmp, target)
  finally:
    tmp.unlink(missing_ok=True)


def write_rows(path: pathlib.Path, rows: Sequence[Mapping[str, Any]]) -> None:
  """One JSON object per line (strict JSON: NaN or infinity is written as null), whole or not at all
  (`whole_file`)."""
  with whole_file(path, encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(strict(row), allow_nan=False) + "\n")
