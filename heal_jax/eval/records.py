"""`{"id": ..., "text": ...}` JSONL files: the inputs of `eval notes` and of `generate --conversations`."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from heal_jax.data import check


class InputError(ValueError):
  """A malformed or inconsistent input file; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Record:
  """One line of an id/text file: its 1-based line number, the id as written (str(id) is the key that
  matches files) and the text."""
  line: int
  id: Any
  text: str

  @property
  def key(self) -> str:
    return str(self.id)


def read(path: pathlib.Path) -> list[Record]:
  """The records of a JSONL file (UTF-8, a leading byte-order mark allowed; blank lines skipped), in order.

  Raises InputError naming the file and line for undecodable or malformed lines, a line without "id" or
  a string "text", a duplicate id (ids match as str(id)) and a file without any record.
  """
  out: list[Record] = []
  seen: dict[str, int] = {}
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
      except UnicodeDecodeError as e:
        raise InputError(f"{path}:{n}: not UTF-8 ({e.reason} at byte {e.start})") from None
      if not line.strip():
        continue
      record, reason = check.parse_json(line, unique_keys=True)
      if reason is not None:
        raise InputError(f"{path}:{n}: {reason}")
      if check.has_lone_surrogate(record):
        raise InputError(f"{path}:{n}: {check.LONE_SURROGATE}")
      if not isinstance(record, dict) or "id" not in record or not isinstance(record.get("text"), str):
        raise InputError(f'{path}:{n}: expected an object with "id" and a string "text"')
      if isinstance(record["id"], bool) or not isinstance(record["id"], (str, int)):
        raise InputError(f'{path}:{n}: "id" must be a string or an integer, got {json.dumps(record["id"])[:40]}')
      key = str(record["id"])
      if key in seen:
        raise InputError(f"{path}:{n}: duplicate id {key!r} (first on line {seen[key]})")
      seen[key] = n
      out.append(Record(n, record["id"], record["text"]))
  if not out:
    raise InputError(f"{path}: no records")
  return out
