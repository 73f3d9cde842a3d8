"""Per-row JSONL outputs of the eval commands (`--output`): checked before any scoring, written after."""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any


def check_writable(path: pathlib.Path, inputs: Sequence[pathlib.Path | None] = ()) -> None:
  """OSError unless `path` is none of `inputs` and a file can be written there (its folder is
  created): called before a model is loaded, so a bad --output does not lose an hour of scoring."""
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


def strict(value: Any) -> Any:
  """`value` with every NaN or infinite float replaced by None, so that it dumps as strict JSON."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, Mapping):
    return {k: strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict(v) for v in value]
  return value


def write_rows(path: pathlib.Path, rows: Sequence[Mapping[str, Any]]) -> None:
  """One JSON object per line (strict JSON: NaN or infinity is written as null)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(strict(row), allow_nan=False) + "\n")
