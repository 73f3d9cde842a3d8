"""ml-collections run configs: the base config, loading a `get_config()` file, command-line overrides.

A config file is a Python file with `get_config() -> ConfigDict`, usually starting from
`base_config()` here (every field, with its default and meaning) and changing a few. A file with
named presets takes one argument, `get_config(arg)`: `configs/ablations/base.py:ROOT` passes "ROOT"
(big_vision style); a preset given to a file without presets is an error. Overrides are
`--config.a.b=value`; the value is parsed to the type of the field it replaces, and an unknown key
is an error that names it, whether in an override or set by the config file itself (a typo such as
`c.data.on_eror` would otherwise be ignored). Counts and intervals must be in range (`MINIMUM`) and every float
finite, checked once the overrides are applied. The loaded config is locked: no code path can add a
field later.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import math
import pathlib
import traceback
from typing import Any, Sequence

import ml_collections

from heal_jax.model.config import ConfigError, ModelConfig  # one ConfigError for every config key


def base_model_config() -> ml_collections.ConfigDict:
  """Model fields: those of `ModelConfig`, with a run's defaults (LLaMA2-7B shape, bf16 compute,
  attention "auto"; `ModelConfig`'s own defaults are float32 and "xla"). Read in exactly one place,
  `model_config`."""
  return ml_collections.ConfigDict(dict(
      vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
      num_kv_heads=32, head_dim=ml_collections.FieldReference(None, field_type=int),
      max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling_factor=1.0,
      tie_word_embeddings=False, param_dtype="float32", compute_dtype="bfloat16",
      remat_policy="none", scan_layers=False, attention_impl="auto"))


# Meta's published LLaMA2 shapes (the HF meta-llama/Llama-2-*-hf config.json files).
LLAMA2_SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64, num_kv_heads=8),
}


def llama2_config(size: str, corpus_source: bool = True) -> ml_collections.ConfigDict:
  """Base config with a LLaMA2 preset's shape, bf16 compute, full remat, scanned layers.

  corpus_source: one data source, `corpus` (documents), whose paths a run gives on the command line:
    `heal-jax train --config configs/llama2_7b.py --config.data.sources.corpus.paths=/data/*.jsonl
    --config.data.tokenizer=DIR --config.init_from=DIR`. A config file that names its own sources (a
    mixture, as configs/heal_13b.py) leaves it out.
  """
  config = base_config()
  if corpus_source:
    config.data.sources.corpus = source_config("", "document", 1.0)
  config.model.update(dict(
      vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
      param_dtype="float32", compute_dtype="bfloat16", remat_policy="full", scan_layers=True,
      attention_impl="auto", **LLAMA2_SHAPES[size]))
  config.train.global_batch = 64
  config.train.micro_steps = 4
  config.phase_order = "pretrain"
  config.phases.pretrain = phase_config(steps=10000, seq_len=4096, peak_lr=3e-5, warmup_steps=200)
  return config


def source_config(paths: str, kind: str, weight: float, format: str = "",  # pylint: disable=redefined-builtin
                  fields: str = "") -> ml_collections.ConfigDict:
  """One data source (read by `heal_jax.data.sources.from_config`).

  paths: comma-separated globs; an entry that names an existing file is taken as it is (glob
    characters in its name and all; a name with a comma only as the whole of paths); `{workdir}` is
    replaced by the run's work directory.
  kind: document | conversation | instruction (see heal_jax.data.check.KIND_FIELDS).
  weight: this source's share of the tokens read for training, relative to the others (prompts
    included; the trainer's share/<source> counts target tokens), in every phase that names the
    source without a number (or names none); a phase's "source=number" replaces it; > 0.
  format: jsonl | text | csv | arrayrecord | tfds ("" = from the file suffix). For tfds, paths is
    "NAME[:SPLIT]@DATA_DIR" of a dataset prepared on disk.
  fields: "ours=theirs,..." to read our field names from other columns (e.g. "conversation=dialogue").
  """
  return ml_collections.ConfigDict(dict(paths=paths, kind=kind, weight=float(weight), format=format,
                                        fields=fields))


def base_data_config() -> ml_collections.ConfigDict:
  """Data fields; `sources` is filled by presets with `source_config` entries."""
  return ml_collections.ConfigDict(dict(
      bootstrap="",        # "synthetic": write the bundled corpus and train a tokenizer in the workdir if absent
      tokenizer="",        # directory holding tokenizer.model (LLaMA's works unchanged); {workdir} allowed
      sources=ml_collections.ConfigDict(),
      prepared_dir="",     # "": tokenize raw files online; else read `heal-jax data prepare` output here
      on_error="raise",    # bad records: "raise" (error naming file and line) or "skip" (counted)
      dedup=ml_collections.ConfigDict(dict(
          exact=True,        # drop records whose normalised text was seen before
          near=True,         # MinHash/LSH near-duplicate removal
          threshold=0.8,     # estimated Jaccard similarity of shingles at or above which a record is a duplicate
          num_perm=128,      # MinHash permutations (= bands * rows)
          bands=16,          # LSH bands
          shingle=5,         # words per shingle
      )),
      num_shards=0,        # shards of every global batch, each read by one process (0: one per process)
      worker_count=0,      # grain worker processes per host (0: read in the training process)
      pack_defer=16,       # a batch closes when more than this many examples fit none of its rows (they wait
                           # for the next batch; later ones fill the gaps); 0: at the first, as before 2026-11-29
  ))


def phase_config(steps: int, seq_len: int, weights: str = "", rope_scaling_factor: float = 1.0,
                 instruction_tuning: bool = False, peak_lr: float = 3e-4, warmup_steps: int = 0,
                 schedule: str = "cosine", end_lr_ratio: float = 0.1,
                 global_batch: int = 0) -> ml_collections.ConfigDict:
  """One training phase (read by `heal_jax.train.phases.from_config`).

  steps: global batches in this phase. seq_len: packed row length.
  weights: the sources read in this phase and their shares: "source=weight,..." gives a number here,
    a bare "source" takes config.data.sources.NAME.weight ("" = every source at its own weight);
    sources not named are not read in this phase.
  rope_scaling_factor: linear position interpolation, >= 1 (1.0: none; 2.0 doubles the usable context).
  instruction_tuning: loss on responses only (else on every token).
  peak_lr, warmup_steps, schedule (cosine | linear | constant), end_lr_ratio: the phase's AdamW
    schedule; the optimizer state starts fresh at every phase.
  global_batch: rows per step in this phase (0 = config.train.global_batch).
  """
  return ml_collections.ConfigDict(dict(
      steps=steps, seq_len=seq_len, weights=weights, rope_scaling_factor=float(rope_scaling_factor),
      instruction_tuning=instruction_tuning, peak_lr=float(peak_lr), warmup_steps=warmup_steps,
      schedule=schedule, end_lr_ratio=float(end_lr_ratio), global_batch=global_batch))


def base_config() -> ml_collections.ConfigDict:
  """Every field of a run config with its default."""
  config = ml_collections.ConfigDict()
  config.seed = 0               # orders each phase's data, and initialises weights trained from scratch
  config.model = base_model_config()
  config.data = base_data_config()
  # Where the weights come from: "" = from scratch; an HF directory (config.json + safetensors); a
  # converted heal-jax checkpoint; or another run's work directory (its newest checkpoint).
  config.init_from = ""
  config.distributed = ml_collections.ConfigDict(dict(  # see heal_jax/parallel/distributed.py
      coordinator_address="",      # "host:port" of process 0; "" = from SLURM or the environment
      num_processes=0, process_id=-1,  # with coordinator_address: this process of how many (else unset)
      initialization_timeout_s=300,    # how long jax.distributed waits for every process to join
      heartbeat_timeout_s=30,      # a dead peer is noticed within this (the others then exit)
  ))
  config.mesh = ml_collections.ConfigDict(dict(
      data=1, fsdp=-1, tensor=1,              # device mesh; one axis may be -1 (the rest)
      max_replicated_elements=1 << 20,        # refuse to start if a larger parameter is unsplit (over 1 device)
  ))
  config.train = ml_collections.ConfigDict(dict(
      global_batch=8,          # rows of seq_len per optimizer step, over all processes
      micro_steps=1,           # gradient accumulation: the global batch is split into this many
      z_loss=0.0,              # weight of the PaLM z-loss (0 = off)
      max_bad_steps=5,         # halt after this many consecutive skipped steps (non-finite, or no target token)
      weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8,  # AdamW (decoupled weight decay; LLaMA2's numbers)
      clip_norm=1.0,           # gradients are clipped to this global norm
  ))
  config.phase_order = ""      # comma-separated names of config.phases, run in this order
  config.phases = ml_collections.ConfigDict()
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=100,         # save every this many steps (and at every phase end and on SIGTERM)
      keep=3,                  # keep the newest k checkpoints...
      keep_period=0,           # ...and every m-th step forever (0 = none)
      async_save=True,         # write in the background while training goes on (orbax)
  ))
  config.metrics = ml_collections.ConfigDict(dict(
      every_steps=10,          # log training metrics every this many steps
      peak_tflops=0.0,         # per-device dense bf16 peak for MFU (0 = from the device kind; none on CPU)
      profile_steps=0,         # > 0: a jax profiler trace of this many steps into WORKDIR/profile
      profile_after_step=5,    # ... starting after this global step (compilation stays out)
  ))
  config.plan = ml_collections.ConfigDict(dict(   # `heal-jax plan`: the cluster to plan for
      devices=8,               # accelerators in the run (the fake CPU mesh gets this many devices)
      device_memory_gb=80.0,   # memory per accelerator, GiB (an A100 80GB has 80 GiB)
      peak_tflops=989.0,       # dense bf16 peak per accelerator (H100 989, A100 312)
      mfu=0.4,                 # assumed model FLOPs utilisation for the implied step time
      memory_fraction=0.9,     # share of device memory XLA may use (the launchers set XLA_CLIENT_MEM_FRACTION=0.90)
  ))
  config.eval = ml_collections.ConfigDict(dict(
      every_steps=0,           # held-out loss per source every this many steps (0 = only at phase ends)
      holdout_examples=0,      # examples per source held out of training for it (0 = no eval)
      batches=2,               # held-out batches per evaluation
      tasks="",                # "pubmedqa=DIR,medqa=FILE": multiple-choice accuracy at every evaluation
      task_limit=200,          # questions per task (a seeded random subset; 0 = all)
      sample_note_tokens=0,    # > 0: after the last phase, print a note generated (greedy, this many tokens at
                               # most) from the newest held-out conversation of a conversation source that fits
                               # (without a holdout, its last example; heal_jax/train/note_eval.py)
      note_examples=0,         # > 0: at every evaluation of instruction-tuning phases, write notes (greedy) for
                               # this many held-out conversations and log their ROUGE and rubric rates (note_eval)
      note_tokens=256,         # new tokens per such note at most
  ))
  return config


# The least value of each count or interval (phases are checked by heal_jax.train.phases, the model by
# ModelConfig, the mesh by heal_jax.parallel.mesh, dedup by heal_jax.data.dedup, plan by `heal-jax plan`).
MINIMUM = {
    "distributed.num_processes": 0, "distributed.initialization_timeout_s": 1,
    "distributed.heartbeat_timeout_s": 1, "mesh.max_replicated_elements": 0,
    "train.global_batch": 1, "train.micro_steps": 1, "train.max_bad_steps": 1, "train.z_loss": 0,
    "train.weight_decay": 0, "train.b1": 0, "train.b2": 0, "train.eps": 0, "train.clip_norm": 0,
    "checkpoint.every_steps": 1, "checkpoint.keep": 1, "checkpoint.keep_period": 0,
    "metrics.every_steps": 1, "metrics.peak_tflops": 0, "metrics.profile_steps": 0, "metrics.profile_after_step": 0,
    "eval.every_steps": 0, "eval.holdout_examples": 0, "eval.batches": 1, "eval.task_limit": 0,
    "eval.sample_note_tokens": 0, "eval.note_examples": 0, "eval.note_tokens": 1, "data.num_shards": 0, "data.worker_count": 0,
    "data.pack_defer": 0,
}
_BELOW_ONE = ("train.b1", "train.b2")  # Adam's decay rates: in [0, 1)
# Zero would break training silently: eps=0 makes AdamW divide 0 by 0 where a gradient is 0 (unused
# embedding rows), clip_norm=0 zeroes every update (to turn clipping off, give a large value).
_ABOVE_ZERO = ("train.eps", "train.clip_norm")


def _type_name(value: Any) -> str:
  return "group" if isinstance(value, ml_collections.ConfigDict) else type(value).__name__


def _same_type(value: Any, default: Any) -> bool:
  """Whether `value` may stand where `schema` has `default` (an int where a float belongs; any value
  where the default is None, i.e. an optional field such as model.head_dim, typed by ModelConfig)."""
  if default is None:
    return True
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(default, bool) and isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  return type(value) is type(default)  # pylint: disable=unidiomatic-typecheck


def _check_schema(node: Any, schema: ml_collections.ConfigDict, prefix: str = "") -> None:
  """ConfigError for the first key under `node` that `schema` lacks, that `node` lacks, or whose value
  is of another type than the schema's (a group where a value belongs, "10" where an int does)."""
  for key, value in node.items():
    name = f"{prefix}{key}"
    if key not in schema:
      raise ConfigError(f"unknown config key: {name} (known here: {', '.join(sorted(schema.keys()))})")
    default = schema[key]
    if isinstance(default, ml_collections.ConfigDict) != isinstance(value, ml_collections.ConfigDict):
      raise ConfigError(f"config key {name} is a {_type_name(default)}, got {_type_name(value)}")
    if isinstance(value, ml_collections.ConfigDict):
      if default.keys():
        _check_schema(value, default, f"{name}.")
    elif not _same_type(value, default):
      hint = " (use '' for none)" if value is None and isinstance(default, str) else ""
      raise ConfigError(f"config key {name}: expected {type(default).__name__}, got {value!r} "
                        f"({type(value).__name__}){hint}")
  missing = [key for key in schema.keys() if key not in node]
  if missing:
    raise ConfigError(f"config key {prefix}{missing[0]} is missing (build the config from heal_jax.config's "
                      "base_config(), source_config() and phase_config(), which set every field)")


def check_known_keys(config: ml_collections.ConfigDict) -> None:
  """Every key of a loaded config is one of `base_config()`'s, with a value of its type, and none is
  missing; each `data.sources.NAME` holds exactly the `source_config` fields and each `phases.NAME`
  the `phase_config` fields. Else ConfigError naming the key (a config file's typo, e.g.
  `c.data.on_eror`, would otherwise be ignored, and "10" for an int would fail deep in training)."""
  _check_schema(config, base_config())
  groups = [("data.sources", source_config("", "document", 1.0)), ("phases", phase_config(1, 1))]
  for where, fields in groups:
    parent = config
    for part in where.split("."):
      parent = parent.get(part) or ml_collections.ConfigDict()
    for name, entry in parent.items():
      if not isinstance(entry, ml_collections.ConfigDict):
        raise ConfigError(f"config key {where}.{name} is a group, got {type(entry).__name__}")
      _check_schema(entry, fields, f"{where}.{name}.")


def _leaves(node: ml_collections.ConfigDict, prefix: str = ""):
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Every float finite, every `MINIMUM` field at least its minimum; else ConfigError naming the key."""
  values = dict(_leaves(config))
  for key, value in values.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"config.{key}={value}: must be a finite number")
  for key, least in MINIMUM.items():
    if key in values and values[key] < least:
      raise ConfigError(f"config.{key}={values[key]}: must be >= {least}")
  for key in _BELOW_ONE:
    if key in values and values[key] >= 1:
      raise ConfigError(f"config.{key}={values[key]}: must be < 1")
  for key in _ABOVE_ZERO:
    if key in values and values[key] <= 0:
      raise ConfigError(f"config.{key}={values[key]}: must be > 0")


def differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """`config.KEY: saved X, now Y` for each field where `config` differs from `saved` (a config in its
  JSON form, as checkpoints keep it), sorted by key. Fields only one side has (a config saved by
  another version of heal-jax, before a field was added or after one was removed) are not compared."""
  old, now = (dict(_leaves(ml_collections.ConfigDict(tree))) for tree in (saved, json.loads(config.to_json())))
  return [f"config.{key}: saved {old[key]!r}, now {now[key]!r}"
          for key in sorted(old.keys() & now.keys()) if old[key] != now[key]]


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The single reader of `config.model`."""
  return ModelConfig.from_dict(config.model.to_dict())


def _where(path: pathlib.Path, error: BaseException) -> str:
  """"path:line" of the innermost frame of `error` inside the config file (else "path")."""
  lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
           if pathlib.Path(f.filename).resolve() == path.resolve()]
  return f"{path}:{lines[-1]}" if lines else str(path)


def _load_module(path: pathlib.Path):
  if path.is_dir():
    raise ConfigError(f"config file {path} is a directory; name a .py file in it")
  if not path.is_file():
    raise ConfigError(f"config file {path} not found")
  if path.suffix != ".py":
    raise ConfigError(f"config file {path} is not a Python file (.py)")
  spec = importlib.util.spec_from_file_location(f"heal_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"config file {path}:{e.lineno}: {e.msg}") from None
  except Exception as e:  # pylint: disable=broad-except  # an import error or any bug in the file
    raise ConfigError(f"config file {_where(path, e)}: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} has no get_config()")
  return module


def _optional_fields() -> set[str]:
  """Keys whose default in `base_config()` is None: the only fields an override may set to None."""
  return {key for key, value in _leaves(base_config()) if value is None}


def _parse_value(key: str, raw: str, current: Any, field_type: type | None) -> Any:
  target = field_type if field_type is not None else (type(current) if current is not None else None)
  if raw == "None":
    optional = _optional_fields()  # e.g. model.head_dim (None: hidden_size // num_heads)
    if key in optional:
      return None
    raise ConfigError(f"--config.{key}=None: only {', '.join(sorted(optional))} may be None")
  try:
    if target is bool:
      if raw.lower() in ("true", "1", "yes"):
        return True
      if raw.lower() in ("false", "0", "no"):
        return False
      raise ValueError(raw)
    if target is int:
      return int(raw)
    if target is float:
      return float(raw)
    if target is str:
      return raw
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise ConfigError(f"--config.{key}={raw}: not a valid {getattr(target, '__name__', 'value')}") from None


def apply_override(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
  """Sets `config.<key>` from its command-line string; unknown keys raise ConfigError."""
  parts = key.split(".")
  if not all(parts):
    raise ConfigError(f"--config.{key}={raw}: empty key")
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      group = ".".join(parts[:i])
      if not isinstance(node, ml_collections.ConfigDict):
        why = f"{group} is not a group"
      elif node:
        why = f"known here: {', '.join(sorted(node.keys()))}"
      else:  # config.phases or config.data.sources of a config that defines none
        why = f"{group} has no entries: the config file defines them"
      raise ConfigError(f"unknown config key: {'.'.join(parts[:i + 1])} ({why})")
    if i < len(parts) - 1:
      node = node[part]
  leaf = parts[-1]
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise ConfigError(f"config key {key} is a group; set one of its fields")
  ref = node.get_ref(leaf)
  field_type = ref.get_type() if isinstance(ref, ml_collections.FieldReference) else None
  node[leaf] = _parse_value(key, raw, node[leaf], field_type)


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` and applies `--config.k=v` (or `k=v`) overrides, then locks it."""
  path, _, arg = spec.partition(":")
  module = _load_module(pathlib.Path(path))
  if arg and not inspect.signature(module.get_config).parameters:
    raise ConfigError(f"config file {path} has no presets; ':{arg}' given")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  # e.g. an unknown preset
    call = f"get_config({arg!r})" if arg else "get_config()"
    raise ConfigError(f"config file {_where(pathlib.Path(path), e)}: {call} failed: {type(e).__name__}: {e}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  try:
    check_known_keys(config)
  except ConfigError as e:
    raise ConfigError(f"config file {path}: {e}") from None
  config.lock()
  for item in overrides:
    item = item.removeprefix("--config.").removeprefix("config.")
    key, eq, raw = item.partition("=")
    if not eq:
      raise ConfigError(f"override {item!r} must look like --config.key=value")
    apply_override(config, key, raw)
  check_ranges(config)
  return config


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.k=v` (or `--config.k v`) items from the rest of argv."""
  overrides, rest = [], []
  it = iter(argv)
  for item in it:
    if item.startswith("--config."):
      if "=" not in item:
        value = next(it, None)
        if value is None or value.startswith("--"):  # not `--config.a --workdir D`: a forgotten value
          raise ConfigError(f"{item} needs a value (give {item}=VALUE)")
        item = f"{item}={value}"
      overrides.append(item)
    else:
      rest.append(item)
  return overrides, rest
