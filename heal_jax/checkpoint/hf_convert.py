"""HF <-> heal-jax checkpoint conversion, streaming one tensor at a time.

Both directions validate everything they can before writing (config fields, tensor names,
shapes, dtypes, file sizes) and write into a staging directory that is renamed into place only
on success, so a failure leaves no partial output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Callable

import jax
import numpy as np

from heal_jax import atomic_dir
from heal_jax.checkpoint import finite, hf_mapping, params_store, safetensors_io
from heal_jax.checkpoint.errors import CheckpointError
from heal_jax.model.config import ConfigError, ModelConfig, from_hf_config, to_hf_config

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_FLOAT_DTYPES = {"float32", "bfloat16", "float16"}


@dataclasses.dataclass(frozen=True)
class SourceTensor:
  name: str
  dtype: np.dtype
  shape: tuple[int, ...]
  where: str  # file it comes from, for messages
  load: Callable[[], np.ndarray]  # the whole tensor, read into memory
  view: Callable[[], np.ndarray]  # the tensor unread (memory-mapped): slicing it reads the slice


@dataclasses.dataclass
class HFCheckpoint:
  path: pathlib.Path
  hf_config: dict[str, Any]
  cfg: ModelConfig
  tensors: dict[str, SourceTensor]


def _host_device() -> jax.Device:
  """The host's CPU device, where conversions stage tensors (a 70B model would not fit one GPU)."""
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:
    raise CheckpointError(f"conversion stages tensors on jax's CPU backend, which JAX_PLATFORMS="
                          f"{os.environ.get('JAX_PLATFORMS', '')!r} leaves out; add it (e.g. JAX_PLATFORMS=cuda,cpu) "
                          "or unset JAX_PLATFORMS") from None


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    value = json.loads(path.read_text())
  except FileNotFoundError:
    raise CheckpointError(f"{path} is missing") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(value, dict):
    raise CheckpointError(f"{path}: holds a JSON {type(value).__name__}, expected an object")
  return value


def _safetensors_sources(files: list[pathlib.Path]) -> dict[str, SourceTensor]:
  out: dict[str, SourceTensor] = {}
  for f in files:
    infos, _ = safetensors_io.read_header(f)
    for name, info in infos.items():
      if name in out:
        raise CheckpointError(f"tensor {name} appears in both {out[name].where} and {f}")
      out[name] = SourceTensor(name, info.dtype, info.shape, str(f),
                               lambda info=info: safetensors_io.read_tensor(info),
                               lambda info=info: safetensors_io.map_tensor(info))
  return out


def _pickle_sources(files: list[pathlib.Path]) -> dict[str, SourceTensor]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointError("loading pickle .bin weights needs torch installed") from None
  import ml_dtypes  # pylint: disable=import-outside-toplevel

  def to_numpy(t):
    if t.dtype == torch.bfloat16:
      return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()

  out: dict[str, SourceTensor] = {}
  for f in files:
    state = _torch_load(torch, f)
    for name, t in state.items():
      if name in out:
        raise CheckpointError(f"tensor {name} appears in both {out[name].where} and {f}")
      dtype = np.dtype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else to_numpy(t[:0]).dtype
      # torch.load(mmap=True) maps the file: the numpy view of a tensor is read as it is used, so
      # it serves as both the whole tensor and the unread view
      read = lambda t=t: to_numpy(t)  # pylint: disable=unnecessary-lambda-assignment
      out[name] = SourceTensor(name, dtype, tuple(t.shape), str(f), read, read)
  return out


def _torch_load(torch: Any, f: pathlib.Path) -> dict[str, Any]:
  """{name: tensor} of a torch.save file, memory-mapped when its format allows; errors name the file."""
  try:
    try:
      state = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as e:
      if "_use_new_zipfile_serialization" not in str(e):
        raise
      state = torch.load(f, map_location="cpu", weights_only=True)  # the pre-1.6 format cannot be mapped
  except Exception as e:  # pylint: disable=broad-except  # torch raises many types for damaged files
    raise CheckpointError(f"{f}: cannot be read as PyTorch weights ({type(e).__name__}: {e})") from None
  if not isinstance(state, dict):
    raise CheckpointError(f"{f}: holds type {type(state).__name__}, expected a dict of tensor name -> tensor")
  for name, t in state.items():
    if not isinstance(t, torch.Tensor):
      raise CheckpointError(f"{f}: entry {name!r} is not a tensor (type {type(t).__name__}; weights nested in a "
                            "training checkpoint, e.g. under 'state_dict', are not read: save the model's state_dict)")
  return state


def _weight_files(src: pathlib.Path, allow_pickle: bool) -> tuple[list[pathlib.Path], bool]:
  """(files, is_pickle). A sharded index must list only files that exist."""
  for index_name, is_pickle in (("model.safetensors.index.json", False), ("pytorch_model.bin.index.json", True)):
    index_path = src / index_name
    if index_path.is_file():
      weight_map = _read_json(index_path).get("weight_map")
      if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: no weight_map")
      bad = [v for v in weight_map.values() if not isinstance(v, str)]
      if bad:
        raise CheckpointError(f"{index_path} lists {bad[0]!r}: shards must be plain file names in {src}")
      files = sorted(set(weight_map.values()))
      for name in files:
        if pathlib.PurePath(name).name != name or name in (".", ".."):
          raise CheckpointError(f"{index_path} lists {name!r}: shards must be plain file names in {src}")
        if not (src / name).is_file():
          raise CheckpointError(f"{index_path} lists {name}, which is missing")
      if is_pickle and not allow_pickle:
        break
      return [src / n for n in files], is_pickle
  single = src / "model.safetensors"
  if single.is_file():
    return [single], False
  pickles = sorted(src.glob("pytorch_model*.bin"))
  if pickles:
    if not allow_pickle:
      raise CheckpointError(
          f"{src} holds only pickle weights ({pickles[0].name}); loading them executes code."
          " Convert them to safetensors, or pass --allow-pickle if you trust their source")
    return pickles, True
  raise CheckpointError(f"{src}: no model.safetensors, sharded index or weights found")


def open_hf(src: pathlib.Path, allow_pickle: bool = False) -> HFCheckpoint:
  """Reads config.json and every weight header of an HF LLaMA directory; loads no tensor data."""
  src = pathlib.Path(src)
  if not src.is_dir():
    raise CheckpointError(f"{src} is not a directory")
  hf_config = _read_json(src / "config.json")
  try:
    cfg = from_hf_config(hf_config)
  except ConfigError as e:
    raise CheckpointError(f"{src / 'config.json'}: {e}") from None
  files, is_pickle = _weight_files(src, allow_pickle)
  tensors = _pickle_sources(files) if is_pickle else _safetensors_sources(files)
  index = src / "model.safetensors.index.json"
  if index.is_file():
    for name, fname in _read_json(index)["weight_map"].items():
      if name not in tensors or pathlib.Path(tensors[name].where).name != fname:
        raise CheckpointError(f"{index} maps tensor {name} to {fname}, which does not contain it")
  return HFCheckpoint(src, hf_config, cfg, tensors)


def _check_tied_copy(ckpt: HFCheckpoint, head: SourceTensor) -> None:
  """With tie_word_embeddings, lm_head.weight may be stored too (torch.save of a state_dict always
  has it); it is skipped when it equals model.embed_tokens.weight bit for bit, refused otherwise."""
  embed = ckpt.tensors.get("model.embed_tokens.weight")
  same = embed is not None and embed.shape == head.shape and embed.dtype == head.dtype
  if same:  # row blocks of the unread views: a few MB at a time, however large the vocabulary
    a, b = embed.view(), head.view()
    rows = max(1, (1 << 24) // max(1, a[:1].nbytes))
    same = all(a[i:i + rows].tobytes() == b[i:i + rows].tobytes() for i in range(0, a.shape[0], rows))
  if not same:
    raise CheckpointError(f"{ckpt.path}: tensor lm_head.weight in {head.where} differs from "
                          "model.embed_tokens.weight, but config.json has tie_word_embeddings=true (one matrix "
                          "for both): fix the config or drop the tensor")


def validate(ckpt: HFCheckpoint) -> str:
  """Checks names, shapes and dtypes against the config; returns the common dtype name."""
  cfg = ckpt.cfg
  specs = hf_mapping.tensor_specs(cfg)
  expected = {s.hf_name: s for s in specs}
  for spec in specs:
    if spec.hf_name not in ckpt.tensors:
      raise CheckpointError(f"{ckpt.path}: missing tensor {spec.hf_name}")
  for name, t in ckpt.tensors.items():
    if name in expected:
      continue
    if name.endswith(hf_mapping.IGNORED_HF_SUFFIXES):
      continue
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
      _check_tied_copy(ckpt, t)
      continue
    raise CheckpointError(f"{ckpt.path}: unexpected tensor {name} in {t.where}")
  dtypes = set()
  for spec in specs:
    t = ckpt.tensors[spec.hf_name]
    if t.shape != spec.hf_shape:
      raise CheckpointError(
          f"{ckpt.path}: tensor {spec.hf_name} has shape {list(t.shape)} but config.json implies"
          f" {list(spec.hf_shape)} (hidden_size={cfg.hidden_size}, intermediate_size={cfg.intermediate_size},"
          f" num_attention_heads={cfg.num_heads}, num_key_value_heads={cfg.num_kv_heads},"
          f" head_dim={cfg.head_dim}, vocab_size={cfg.vocab_size})")
    if t.dtype.name not in _FLOAT_DTYPES:
      raise CheckpointError(f"{ckpt.path}: tensor {spec.hf_name} has dtype {t.dtype.name}, expected a float type")
    dtypes.add(t.dtype.name)
  if len(dtypes) > 1:
    first = {d: next(s.hf_name for s in specs if ckpt.tensors[s.hf_name].dtype.name == d) for d in dtypes}
    raise CheckpointError(f"{ckpt.path}: mixed dtypes: " + ", ".join(f"{n} is {d}" for d, n in sorted(first.items())))
  (dtype,) = dtypes
  return dtype


def hf_to_orbax(src: pathlib.Path, dst: pathlib.Path, allow_pickle: bool = False,
                overwrite: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Converts an HF LLaMA directory into a heal-jax checkpoint; returns a summary dict."""
  log = log or (lambda msg: print(msg, file=sys.stderr))
  ckpt = open_hf(src, allow_pickle=allow_pickle)
  dtype = validate(ckpt)
  declared = ckpt.hf_config.get("dtype", ckpt.hf_config.get("torch_dtype"))
  if declared is not None and declared != dtype:  # a loading default in transformers, often stale
    log(f"warning: {ckpt.path}/config.json says dtype={declared!r} but the weights are {dtype}; "
        f"converting them as stored ({dtype})")
  specs = hf_mapping.tensor_specs(ckpt.cfg)
  has_tokenizer = any((ckpt.path / n).is_file() for n in params_store.TOKENIZER_FILES)
  if not has_tokenizer:
    log(f"warning: {ckpt.path} has no tokenizer files; the checkpoint will have none")
  elif not (ckpt.path / "tokenizer.model").is_file():
    log(f"warning: {ckpt.path} has tokenizer files but no tokenizer.model (sentencepiece), which heal-jax's "
        "train, eval and generate read; copy it into DST/tokenizer/ before using the checkpoint")
  params: dict[str, Any] = {}
  nbytes = 0
  cpu = _host_device()
  with params_store.atomic_output_dir(dst, overwrite, inputs=(ckpt.path,)) as out:
    for spec in specs:
      # One tensor at a time: read, relayout, move into a jax array; the numpy copies die here.
      source = ckpt.tensors[spec.hf_name].load()
      finite.require_finite({spec.hf_name: source}, str(ckpt.path))
      array = jax.device_put(spec.to_ours(source), cpu)
      nbytes += array.nbytes
      hf_mapping.set_path(params, spec.path, array)
    extra = {"source": str(ckpt.path)}
    gen = ckpt.path / "generation_config.json"
    if gen.is_file():
      extra["generation_config"] = _read_json(gen)
    params_store.write_checkpoint(out, params, ckpt.cfg.replace(param_dtype=dtype), ckpt.hf_config, dtype,
                                  ckpt.path if has_tokenizer else None, extra)
  return {"tensors": len(specs), "bytes": nbytes, "dtype": dtype, "params": ckpt.cfg.num_params()}


def _special_ids(tokenizer_dir: pathlib.Path) -> dict[str, int]:
  """{bos,eos,pad}_token_id of the sentencepiece model in `tokenizer_dir` (those it has; none without one)."""
  if not (tokenizer_dir / "tokenizer.model").is_file():
    return {}
  from heal_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  tok = tokenizer_lib.Tokenizer(tokenizer_dir)
  ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
  return {k: v for k, v in ids.items() if v >= 0}


def _generation_config(manifest: dict[str, Any], hf: dict[str, Any]) -> dict[str, Any]:
  if manifest.get("generation_config"):
    return manifest["generation_config"]
  gen = {"_from_model_config": True}
  for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
    if hf.get(key) is not None:
      gen[key] = hf[key]
  return gen


def orbax_to_hf(src: pathlib.Path, dst: pathlib.Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                overwrite: bool = False, dtype: str | None = None) -> dict[str, Any]:
  """Exports a heal-jax checkpoint as an HF directory (sharded safetensors, configs, tokenizer).

  `src` may also be a training work directory: its newest checkpoint's parameters are first written
  as a converted checkpoint in `dtype` (default bfloat16, half the size of the fp32 master weights)
  next to `dst`, then exported; that intermediate holds the whole model on the host once.
  """
  src = pathlib.Path(src)
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  if not (src / params_store.MANIFEST).is_file() and restore.is_workdir(src):
    return _workdir_to_hf(src, pathlib.Path(dst), max_shard_bytes, overwrite, dtype or "bfloat16")
  if dtype is not None:
    raise CheckpointError("--dtype applies to exports from a training work directory; a converted checkpoint "
                          "is exported in its stored dtype")
  manifest = params_store.read_manifest(src)
  cfg = params_store.model_config(src, manifest).replace(scan_layers=False)
  params_store.check_params(src, cfg)
  if (src / "tokenizer" / "tokenizer.model").is_file():  # an export transformers would feed ids past the table
    restore.check_tokenizer_fits(src / "tokenizer", cfg.vocab_size)
  stored = params_store.tensor_metadata(src)
  specs = hf_mapping.tensor_specs(cfg)
  plan = [safetensors_io.PlannedTensor(s.hf_name, stored[s.path][1], s.hf_shape) for s in specs]
  shards = safetensors_io.shard_plan(plan, max_shard_bytes)
  by_name = {s.hf_name: s for s in specs}
  weight_map: dict[str, str] = {}
  total = 0
  with params_store.atomic_output_dir(dst, overwrite, inputs=(src,)) as out:
    for i, shard in enumerate(shards):
      fname = (f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1
               else "model.safetensors")
      writer = safetensors_io.StreamingWriter(out / fname, shard)
      for t in shard:
        spec = by_name[t.name]
        tensor = params_store.read_tensor(src, spec.path, manifest)
        finite.require_finite({"/".join(spec.path): tensor}, str(src))
        writer.write(t.name, spec.to_hf(tensor))
        weight_map[t.name] = fname
        total += t.nbytes
      writer.close()
    if len(shards) > 1:
      index = {"metadata": {"total_size": total}, "weight_map": weight_map}
      (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    hf_config = to_hf_config(cfg, base=manifest.get("hf_config"), dtype=manifest["dtype"])
    for key, value in _special_ids(src / "tokenizer").items():  # a model trained here: stop at its EOS
      hf_config.setdefault(key, value)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps(_generation_config(manifest, hf_config), indent=2, sort_keys=True) + "\n")
    copied = params_store.copy_tokenizer(src / "tokenizer", out)
  return {"tensors": len(specs), "bytes": total, "shards": len(shards), "dtype": manifest["dtype"],
          "tokenizer_files": copied}


def _workdir_to_hf(workdir: pathlib.Path, dst: pathlib.Path, max_shard_bytes: int, overwrite: bool,
                   dtype: str) -> dict[str, Any]:
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  dst = params_store.check_output(dst, overwrite, (workdir,))  # before loading the model
  loaded = restore.load_model(workdir, dtype=dtype, scan_layers=False)
  with atomic_dir.scratch(dst) as work:  # private to this process: two exports to one dst do not collide
    with params_store.atomic_output_dir(work / "checkpoint") as out:
      cpu = _host_device()  # host arrays (not GPU 0), which orbax writes without a copy
      params = jax.tree.map(lambda x: jax.device_put(x, cpu), loaded.params)
      params_store.write_checkpoint(out, params, loaded.cfg.replace(param_dtype=dtype),
                                    to_hf_config(loaded.cfg, dtype=dtype), dtype, loaded.tokenizer_dir,
                                    {"source": loaded.source})
    summary = orbax_to_hf(work / "checkpoint", dst, max_shard_bytes, overwrite)
  return {**summary, "source": loaded.source}
