"""`infer.placement`: a model read straight onto a mesh of the process's devices (eval/generate --mesh)."""

import jax
import numpy as np
import pytest

from heal_jax.checkpoint import hf_mapping, params_store, restore, workdir_restore
from heal_jax.infer import placement
from heal_jax.train import loop
from tests import train_helpers

MESH = "fsdp=2,tensor=4"


@pytest.fixture(scope="module", params=[False, True], ids=["per_layer", "scanned"])
def workdir(request, tmp_path_factory):
  """A one-step training work directory whose checkpoint stores layers per layer, or stacked."""
  data_root = train_helpers.make_corpus(tmp_path_factory.mktemp("placement_data"))
  workdir = tmp_path_factory.mktemp("placement_run") / "w"
  loop.train(train_helpers.load(data_root, 1, (f"--config.model.scan_layers={request.param}",)), workdir)
  assert restore.load_model(workdir).cfg.scan_layers == request.param
  return workdir


def _no_whole_reads(monkeypatch):
  """The whole-model readers fail: a placed read must never fall back to them."""
  def whole(*args, **kwargs):
    raise AssertionError("the whole model was read into host memory")
  monkeypatch.setattr(params_store, "load_params", whole)
  monkeypatch.setattr(workdir_restore, "_to_numpy", whole)


def _assert_placed_equal(host: restore.LoadedModel, placed: restore.LoadedModel, dtype=None) -> None:
  mesh = placement._mesh(MESH)  # pylint: disable=protected-access
  shardings = placement._shardings(placed.cfg, mesh, MESH)  # pylint: disable=protected-access
  pairs = list(zip(hf_mapping.iter_paths(host.params), hf_mapping.iter_paths(placed.params)))
  assert pairs and len(pairs) == len(list(hf_mapping.iter_paths(host.params))) == len(
      list(hf_mapping.iter_paths(placed.params)))
  for (path, want), (path2, got) in pairs:
    assert path == path2
    assert isinstance(got, jax.Array) and got.sharding == hf_mapping.get_path(shardings, path), path
    want = np.asarray(want) if dtype is None else np.asarray(want).astype(dtype)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), want)  # bitwise: the same stored values, the same cast


def test_a_work_directory_is_read_onto_the_mesh_tensor_by_tensor(workdir, monkeypatch):
  host = restore.load_model(workdir)
  _no_whole_reads(monkeypatch)
  placed = placement.load(str(workdir), MESH)
  assert placed.cfg == host.cfg and placed.source == host.source
  assert placed.weights_digest == host.weights_digest is not None  # the fingerprints each tensor was checked against
  _assert_placed_equal(host, placed)
  big = next(x for p, x in hf_mapping.iter_paths(placed.params) if p[-1] == "kernel" and x.ndim >= 2)
  assert len(big.sharding.device_set) == 8 and not big.sharding.is_fully_replicated
  with placement.placed(placed, MESH) as on_mesh:  # already where it belongs: not copied again
    first = next(hf_mapping.iter_paths(placed.params))
    again = hf_mapping.get_path(on_mesh.params, first[0])
    assert (again.addressable_shards[0].data.unsafe_buffer_pointer()
            == first[1].addressable_shards[0].data.unsafe_buffer_pointer())


def test_a_work_directory_is_cast_on_the_devices(workdir, monkeypatch):
  host = restore.load_model(workdir)
  _no_whole_reads(monkeypatch)
  _assert_placed_equal(host, placement.load(str(workdir), MESH, "bfloat16"), dtype=jax.numpy.bfloat16)


def test_a_converted_checkpoint_is_read_onto_the_mesh_tensor_by_tensor(note_checkpoint, monkeypatch):
  host = restore.load_model(note_checkpoint, "bfloat16")
  read = []
  original = params_store.read_tensor
  monkeypatch.setattr(params_store, "read_tensor", lambda *a, **k: read.append(a[1]) or original(*a, **k))
  _no_whole_reads(monkeypatch)
  placed = placement.load(str(note_checkpoint), MESH, "bfloat16")
  assert sorted(read) == sorted(p for p, _ in hf_mapping.iter_paths(host.params))  # each once, alone
  assert placed.weights_digest == host.weights_digest is not None  # the CRC-32s each tensor was checked against
  _assert_placed_equal(host, placed)


def test_a_mesh_that_does_not_fit_fails_before_anything_is_read(note_checkpoint, monkeypatch):
  _no_whole_reads(monkeypatch)
  monkeypatch.setattr(params_store, "read_tensor", lambda *a, **k: pytest.fail("read before the mesh was checked"))
  with pytest.raises(ValueError, match="does not fit 8 devices"):
    placement.load(str(note_checkpoint), "tensor=3")
  monkeypatch.setattr(placement, "_REPLICATED_LIMIT", 100)
  with pytest.raises(ValueError, match=r"--mesh tensor=-1: parameter .* would be replicated"):
    placement.load(str(note_checkpoint), "tensor=-1")


def test_damage_in_the_last_tensor_read_is_named(note_checkpoint, tmp_path):
  """Every tensor is checked, not only the first: a NaN in lm_head (read last), and a float32 value
  beyond float16's range, are refused by name as the host read refuses them."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  host = restore.load_model(note_checkpoint, "float32")
  params = jax.tree.map(np.array, host.params)
  params["lm_head"]["kernel"][1, 2] = np.nan
  params_store.write_checkpoint(tmp_path / "nan", params, host.cfg, None, "float32", host.tokenizer_dir)
  with pytest.raises(CheckpointError, match=r"holds NaN/Inf in lm_head/kernel \(1 of "):
    placement.load(str(tmp_path / "nan"), MESH)
  params["lm_head"]["kernel"][1, 2] = 1e6  # finite in float32, inf in float16
  params_store.write_checkpoint(tmp_path / "big", params, dataclasses.replace(host.cfg), None, "float32",
                                host.tokenizer_dir)
  for mesh in (None, MESH):
    with pytest.raises(CheckpointError, match=r"holds NaN/Inf in lm_head/kernel \(1 of .*float16"):
      placement.load(str(tmp_path / "big"), mesh, "float16")
