"""Training-checkpoint fingerprints: equal to a Python-integer computation, the same sharded or not,
and a changed bit in a saved state is refused by resume, `init_from` and the eval/export loader."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heal_jax.checkpoint import fingerprint, restore
from heal_jax.checkpoint.errors import CheckpointError
from heal_jax.train import loop
from tests import train_helpers


def _fmix32(x: int) -> int:
  """MurmurHash3's 32-bit finalizer on a Python int."""
  x ^= x >> 16
  x = (x * 0x85EBCA6B) % 2**32
  x ^= x >> 13
  x = (x * 0xC2B2AE35) % 2**32
  return x ^ (x >> 16)


def _reference(x) -> list[int]:
  """The two sums with Python integers, reduced mod 2^32 at the end."""
  x = np.asarray(x)
  unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
  bits = [int(b) for b in x.reshape(-1).view(unsigned)]
  return [sum(bits) % 2**32, sum(_fmix32(b ^ _fmix32(i)) for i, b in enumerate(bits)) % 2**32]


def test_sums_equal_numpy_for_each_dtype_sharded_or_not():
  rng = np.random.default_rng(0)
  tree = {"w": rng.standard_normal((16, 24)).astype(np.float32),
          "half": {"bf16": jnp.asarray(rng.standard_normal((8, 5)), jnp.bfloat16),
                   "f16": rng.standard_normal(7).astype(np.float16)},
          "step": jnp.int32(-7), "key": jnp.asarray([1, 2**32 - 1], jnp.uint32), "scalar": np.float32(3.5)}
  got = fingerprint.fingerprints(tree)
  for path, x in [("w", tree["w"]), ("half/bf16", tree["half"]["bf16"]), ("half/f16", tree["half"]["f16"]),
                  ("step", tree["step"]), ("key", tree["key"]), ("scalar", tree["scalar"])]:
    assert got[path] == [np.dtype(x.dtype).name, *_reference(x)], path
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  sharded = jax.device_put(tree["w"], jax.NamedSharding(mesh, jax.P("a", "b")))
  assert fingerprint.fingerprints({"w": sharded})["w"] == got["w"]


def test_host_arrays_summed_in_chunks_equal_the_whole_array_sums(monkeypatch):
  """Host arrays go through padded chunks (bounded memory); 5,000 values in chunks of 1,536 give
  the same numbers as the reference and as the device path."""
  x = np.random.default_rng(1).standard_normal((50, 100)).astype(np.float32)
  monkeypatch.setattr(fingerprint, "_HOST_CHUNK", 1536)
  got = fingerprint.fingerprints({"x": x})["x"]
  assert got == ["float32", *_reference(x)] == fingerprint.fingerprints({"x": jnp.asarray(x)})["x"]
  assert fingerprint.fingerprints({"e": np.zeros((0, 3), np.float32)})["e"] == ["float32", 0, 0]


def test_a_flipped_mantissa_bit_or_two_swapped_values_are_seen():
  w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
  saved = fingerprint.fingerprints({"params": {"w": w}, "n": np.int32(3)})
  flipped = w.copy()
  flipped.view(np.uint32)[2, 5] ^= 1  # the lowest mantissa bit: still finite, 1 ulp off
  with pytest.raises(CheckpointError,
                     match=r"^X: params/w differ from the fingerprints saved with the checkpoint.*; go back$"):
    fingerprint.require_match({"w": flipped}, saved, "X", "params/", "go back")
  swapped = w.copy()
  swapped[0, 0], swapped[7, 7] = w[7, 7], w[0, 0]
  assert fingerprint.fingerprints({"w": swapped})["w"][1] == saved["params/w"][1]  # the plain sum cannot tell
  with pytest.raises(CheckpointError, match="params/w differ"):
    fingerprint.require_match({"w": swapped}, saved, "X", "params/")
  assert fingerprint.require_match({"w": w}, saved, "X", "params/") == 1
  assert fingerprint.require_match({"w": w.astype(np.float16)}, saved, "X", "params/") == 0  # read cast: not compared
  assert fingerprint.require_match({"w": flipped}, None, "X") == 0  # saved before fingerprints
  with pytest.raises(CheckpointError, match="none of its arrays"):  # paths that match nothing are not a pass
    fingerprint.require_match({"w": w}, saved, "X", "other/")
  assert "x64" not in fingerprint.fingerprints({"x64": np.arange(3.0), "w": w})  # 8-byte leaves get none


def test_a_changed_bit_in_a_saved_state_is_refused_by_every_reader(tmp_path_factory, tmp_path):
  data_root = train_helpers.make_corpus(tmp_path_factory.mktemp("fingerprint_data"))
  workdir = tmp_path / "w"

  def flip(state):  # one weight and one Adam moment 1 ulp off: still finite
    for parent in (state["params"], state["opt_state"][1][0]["mu"]):
      embedding = np.array(parent["embed"]["embedding"])
      embedding.view(np.uint32)[3, 4] ^= 1
      parent["embed"]["embedding"] = embedding

  state_dir = train_helpers.two_steps_with_step_2_edited(data_root, workdir, flip)
  longer = train_helpers.load(data_root, 3, ("--config.checkpoint.every_steps=1",))
  with pytest.raises(CheckpointError, match=rf"{state_dir.parent}'s state: params/embed/embedding, "
                     r"opt_state/1/0/mu/embed/embedding differ from the fingerprints saved with the checkpoint.*"
                     r"remove that directory to resume from step 1$"):
    loop.train(longer, workdir)
  with pytest.raises(CheckpointError, match=r"checkpoints/2 \(params\): params/embed/embedding differ"):
    restore.load_model(workdir)  # as eval, generate and export read it
  from heal_jax.infer import placement  # pylint: disable=import-outside-toplevel
  with pytest.raises(CheckpointError, match=r"checkpoints/2 \(params\): params/embed/embedding differ"):
    placement.load(str(workdir), "fsdp=2,tensor=4", "bfloat16")  # checked before the cast, tensor by tensor
  init = train_helpers.load(data_root, 1, (f"--config.init_from={workdir}",))
  with pytest.raises(CheckpointError, match=r"checkpoints/2 \(params\): params/embed/embedding differ.*"
                     r"or point init_from elsewhere$"):
    loop.train(init, tmp_path / "w2")
