"""Streaming safetensors reader and writer: one tensor in memory at a time.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name to
`{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the end of the header),
then the raw little-endian data. Converters read tensors with plain `seek`/`read` (no mmap), so
the resident memory is what the caller holds; a training process initialising from HF maps each
tensor (`map_tensor`) and reads only the slices its devices hold. Every header is validated
against the file size before any tensor is read, so a truncated file is found before anything is
written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import struct
from typing import Any, BinaryIO, Iterable

import ml_dtypes
import numpy as np

from heal_jax.checkpoint.errors import CheckpointError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(CheckpointError):
  """A malformed or truncated safetensors file; the message names the file (and tensor)."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  dtype: np.dtype
  shape: tuple[int, ...]
  file: pathlib.Path
  offset: int  # absolute byte offset of the data in `file`
  nbytes: int


def dtype_name(dtype: np.dtype) -> str:
  try:
    return _NAMES[np.dtype(dtype)]
  except KeyError:
    raise SafetensorsError(f"dtype {dtype} has no safetensors name") from None


def read_header(path: pathlib.Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
  """Parses and validates one file's header: (tensors by name, `__metadata__`)."""
  path = pathlib.Path(path)
  size = path.stat().st_size
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise SafetensorsError(f"{path}: truncated ({size} bytes, no header length)")
    (n,) = struct.unpack("<Q", raw)
    if n > _MAX_HEADER or 8 + n > size:
      raise SafetensorsError(f"{path}: truncated or corrupt (header of {n} bytes in a {size}-byte file)")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
  if not isinstance(header, dict):
    raise SafetensorsError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
  metadata = header.pop("__metadata__", None) or {}
  tensors = {}
  data_start = 8 + n
  for name, entry in header.items():
    try:
      dtype = DTYPES[entry["dtype"]]
      shape = tuple(int(s) for s in entry["shape"])
      begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise SafetensorsError(f"{path}: tensor {name}: malformed header entry {entry!r}") from None
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != nbytes:
      raise SafetensorsError(
          f"{path}: tensor {name}: {end - begin} bytes for shape {shape} {entry['dtype']} ({nbytes} expected)")
    if data_start + end > size:
      raise SafetensorsError(
          f"{path}: truncated: tensor {name} ends at byte {data_start + end}, file has {size}")
    tensors[name] = TensorInfo(name, dtype, shape, path, data_start + begin, nbytes)
  _check_layout(path, tensors, data_start, size)
  return tensors, metadata


def _check_layout(path: pathlib.Path, tensors: dict[str, TensorInfo], data_start: int, size: int) -> None:
  """The tensors tile the data area exactly, as the format requires (and `safetensors` checks): no
  overlap (two names reading the same bytes), no gap, nothing after the last tensor."""
  at = data_start
  for info in sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes)):
    if info.offset != at:
      what = "overlaps the tensor before it" if info.offset < at else f"leaves a gap of {info.offset - at} bytes"
      raise SafetensorsError(f"{path}: corrupt header: tensor {info.name} at byte {info.offset} {what}")
    at += info.nbytes
  if at != size:
    raise SafetensorsError(f"{path}: corrupt: {size - at} bytes after the last tensor's data")


def read_tensor(info: TensorInfo, f: BinaryIO | None = None) -> np.ndarray:
  """Reads one tensor into a fresh array (no mmap)."""
  own = f is None
  f = open(info.file, "rb") if own else f
  try:
    f.seek(info.offset)
    buf = bytearray(info.nbytes)
    if f.readinto(buf) != info.nbytes:
      raise SafetensorsError(f"{info.file}: truncated while reading tensor {info.name}")
  finally:
    if own:
      f.close()
  return np.frombuffer(buf, dtype=info.dtype).reshape(info.shape)


def map_tensor(info: TensorInfo) -> np.ndarray:
  """A read-only memory map of one tensor: indexing it reads only the pages the index touches."""
  return np.memmap(info.file, dtype=info.dtype, mode="r", offset=info.offset, shape=info.shape)


@dataclasses.dataclass(frozen=True)
class PlannedTensor:
  name: str
  dtype: np.dtype
  shape: tuple[int, ...]

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class StreamingWriter:
  """Writes one safetensors file whose tensors are declared up front and then written in order.

  The header is written first from the plan; `write(name, array)` must follow the plan's order
  and each array must match its declared dtype and shape.
  """

  def __init__(self, path: pathlib.Path, plan: list[PlannedTensor], metadata: dict[str, str] | None = None):
    self.path = pathlib.Path(path)
    self._plan = list(plan)
    self._next = 0
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for t in self._plan:
      header[t.name] = {"dtype": dtype_name(t.dtype), "shape": list(t.shape),
                        "data_offsets": [offset, offset + t.nbytes]}
      offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as the reference writer does
    self._f = open(self.path, "wb")
    self._f.write(struct.pack("<Q", len(raw)) + raw)

  def write(self, name: str, array: np.ndarray) -> None:
    expected = self._plan[self._next]
    if name != expected.name:
      raise SafetensorsError(f"{self.path}: wrote {name}, expected {expected.name} next")
    array = np.asarray(array)
    if array.dtype != expected.dtype or tuple(array.shape) != expected.shape:
      raise SafetensorsError(f"{self.path}: tensor {name} is {array.dtype}{list(array.shape)},"
                             f" declared {expected.dtype}{list(expected.shape)}")
    self._f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    self._next += 1

  def close(self) -> None:
    self._f.flush()
    os.fsync(self._f.fileno())
    self._f.close()
    if self._next != len(self._plan):
      raise SafetensorsError(f"{self.path}: closed after {self._next} of {len(self._plan)} tensors")


def shard_plan(tensors: Iterable[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
  """Greedy split into shards of at most `max_shard_bytes` (a larger tensor gets its own shard)."""
  shards: list[list[PlannedTensor]] = [[]]
  size = 0
  for t in tensors:
    if shards[-1] and size + t.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += t.nbytes
  return shards
