"""The TFDS builder that writes one prepared source as ArrayRecord (no TensorFlow needed).

Layout under a source's data dir: `heal_prepared/1.0.0/{dataset_info.json, features.json,
heal_prepared-train.array_record-NNNNN-of-MMMMM}`. Every example is {"tokens": int32[n],
"loss_mask": int32[n]}, stored in the order given (shuffling is disabled: example i of the split is
the i-th example written), so readers get random access by index.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
import contextlib
import io
import json
import pathlib
import tempfile

import numpy as np
import tensorflow_datasets as tfds

NAME = "heal_prepared"
SPLIT = "train"


def features() -> tfds.features.FeaturesDict:
  """{"tokens": int32[None], "loss_mask": int32[None]}."""
  return tfds.features.FeaturesDict({
      "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.int32),
  })


class HealPrepared(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Tokenized examples of one source; `examples` is consumed once, by `download_and_prepare`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "tokens and loss_mask, int32, in the order written."}
  # No checksums file: TFDS looks for one next to the builder's source file, and that lookup needs the
  # `importlib_resources` package (absent here) for an installed, non-zipped package.
  code_path = None

  def __init__(self, *, examples: Iterable[Mapping[str, np.ndarray]] | None = None, description: str = "",
               **kwargs):
    self._examples = examples
    self._description = description
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self._description, features=features(),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._examples is None:
      raise ValueError(f"{NAME}: no examples given to write")
    return {SPLIT: self._generate_examples()}

  def _generate_examples(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    for i, example in enumerate(self._examples):
      yield i, {"tokens": np.asarray(example["tokens"], np.int32),
                "loss_mask": np.asarray(example["loss_mask"], np.int32)}


def write(examples: Iterable[Mapping[str, np.ndarray]], data_dir: str | pathlib.Path,
          description: str = "") -> pathlib.Path:
  """Writes `examples` as ArrayRecord under `data_dir`; returns the dataset's version directory."""
  data_dir = pathlib.Path(data_dir)
  builder = HealPrepared(examples=examples, description=description, data_dir=str(data_dir),
                         file_format="array_record")
  # TFDS prints "Downloading and preparing dataset ..." to stdout, which holds the command's JSON report,
  # and progress bars to stderr, between `data prepare`'s own lines; nothing is downloaded, and `data
  # prepare` logs its own counts: both dropped (the bars by TFDS's process-wide switch).
  tfds.display_progress_bar(False)
  with tempfile.TemporaryDirectory(dir=data_dir.parent, prefix=".tfds-downloads-") as downloads, \
      contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare(download_dir=downloads)
  return pathlib.Path(str(builder.data_dir))


def version_dir(data_dir: str | pathlib.Path) -> pathlib.Path:
  """Where `write` put the dataset of `data_dir`."""
  return pathlib.Path(data_dir) / NAME / str(HealPrepared.VERSION)


def check_shards(directory: str | pathlib.Path) -> int:
  """Every shard file that the version directory's dataset_info.json lists is there and holds the
  records it says (a truncated copy reads as fewer); returns the number of examples. ValueError
  naming the file otherwise."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  directory = pathlib.Path(directory)
  try:
    info = json.loads((directory / "dataset_info.json").read_text(encoding="utf-8"))
    split = next(s for s in info["splits"] if s["name"] == SPLIT)
    lengths = [int(n) for n in split["shardLengths"]]
  except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
    raise ValueError(f"{directory / 'dataset_info.json'}: no readable {SPLIT!r} split with shard lengths "
                     f"({type(e).__name__}: {e})") from None
  for i, expected in enumerate(lengths):
    path = directory / f"{NAME}-{SPLIT}.array_record-{i:05d}-of-{len(lengths):05d}"
    if not path.is_file():
      raise ValueError(f"{path}: missing (dataset_info.json lists {len(lengths)} shard files)")
    try:
      found = array_record_module.ArrayRecordReader(str(path)).num_records()
    except Exception as e:  # pylint: disable=broad-except  # the reader raises RuntimeError and others
      raise ValueError(f"{path}: not a readable ArrayRecord file ({type(e).__name__}: {e})") from None
    if found != expected:
      raise ValueError(f"{path}: {found} records, dataset_info.json says {expected} (truncated or replaced?)")
  return sum(lengths)


def open_split(directory: str | pathlib.Path):
  """Random-access TFDS data source of a written dataset (its version directory); decoded examples are
  dicts of numpy arrays."""
  return tfds.builder_from_directory(str(directory)).as_data_source(split=SPLIT)
