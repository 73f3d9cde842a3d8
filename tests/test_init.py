"""train/init: parameters straight from an HF directory, each device reading only its block."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from heal_jax.checkpoint import hf_convert, hf_mapping, random_init, safetensors_io
from heal_jax.model.config import ModelConfig
from heal_jax.parallel import mesh as mesh_lib
from heal_jax.train import init, state as state_lib

CFG = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  max_position_embeddings=64, param_dtype="float32")


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def hf_dir(request, tmp_path_factory):
  """An HF export of a random checkpoint stored in `param` dtype, and that checkpoint's tensors in HF layout."""
  tmp = tmp_path_factory.mktemp(request.param)
  cfg = dataclasses.replace(CFG, param_dtype=request.param)
  random_init.write_random_checkpoint(cfg, tmp / "ck", seed=3)
  hf_convert.orbax_to_hf(tmp / "ck", tmp / "hf")
  ckpt = hf_convert.open_hf(tmp / "hf")
  return tmp / "hf", {name: t.load() for name, t in ckpt.tensors.items()}


def _expected(tensors, scan: bool):
  """Our parameter tree computed the plain way: whole tensors, `to_ours`, float32."""
  params = {}
  for spec in hf_mapping.tensor_specs(CFG):
    hf_mapping.set_path(params, spec.path, spec.to_ours(tensors[spec.hf_name]).astype(np.float32))
  return hf_mapping.stack_layers(params, CFG.num_layers) if scan else params


def _norm(index, shape):
  """A device index (tuple of slices) as (start, stop, step) triples."""
  return tuple(i.indices(n) for i, n in zip(index, shape))


@pytest.mark.parametrize("scan", [False, True])
def test_from_hf_reads_each_devices_block_and_never_a_whole_tensor(hf_dir, scan, monkeypatch):
  """On a (data 2, fsdp 2, tensor 2) mesh every parameter equals the whole-tensor conversion exactly,
  no whole tensor is read (the reader is disabled), and the blocks read are exactly the parameters'
  distinct device blocks, each read once (replicas share a read)."""
  path, tensors = hf_dir
  cfg = dataclasses.replace(CFG, scan_layers=scan)
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = state_lib.param_shardings(cfg, mesh)

  def no_whole_reads(*args, **kwargs):
    raise AssertionError("from_hf read a whole tensor")
  monkeypatch.setattr(safetensors_io, "read_tensor", no_whole_reads)
  read = []
  original = init._Slices.read  # pylint: disable=protected-access

  def counting(self, index):
    block = original(self, index)
    read.append((self.shape, _norm(index, self.shape), block.size))
    return block
  monkeypatch.setattr(init._Slices, "read", counting)  # pylint: disable=protected-access
  params = init.from_hf(path, cfg, shardings)

  expected = _expected(tensors, scan)
  for (kp, got), want, sharding in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(expected),
                                       jax.tree.leaves(shardings)):
    assert got.dtype == np.float32 and got.sharding == sharding, kp
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=str(kp))
  blocks = {(id(x), x.shape, _norm(s.index, x.shape)) for x in jax.tree.leaves(params) for s in x.addressable_shards}
  assert sorted((shape, index) for shape, index, _ in read) == sorted((shape, index) for _, shape, index in blocks)
  assert all(n == np.prod([len(range(*t)) for t in index]) for _, index, n in read)  # just the block
  sharded = [x for x in jax.tree.leaves(params) if x.addressable_shards[0].data.size < x.size]
  assert len(sharded) >= len(jax.tree.leaves(params)) // 2  # most parameters are split, not replicated


def test_from_hf_names_a_missing_tensor(hf_dir, tmp_path):
  """A directory missing a tensor fails before anything is placed, naming the tensor."""
  path, tensors = hf_dir
  broken = tmp_path / "hf"
  shutil.copytree(path, broken)
  kept = {n: t for n, t in tensors.items() if n != "model.layers.1.mlp.up_proj.weight"}
  for f in broken.glob("*.safetensors*"):
    f.unlink()
  plan = [safetensors_io.PlannedTensor(n, t.dtype, t.shape) for n, t in kept.items()]
  writer = safetensors_io.StreamingWriter(broken / "model.safetensors", plan)
  for n, t in kept.items():
    writer.write(n, t)
  writer.close()
  assert json.loads((broken / "config.json").read_text())["num_hidden_layers"] == 2
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  with pytest.raises(hf_convert.CheckpointError, match="missing tensor model.layers.1.mlp.up_proj.weight"):
    init.from_hf(broken, CFG, state_lib.param_shardings(CFG, mesh))


def _layout(params, scan: bool):
  """numpy tree in the scanned or unscanned layout."""
  params = jax.tree.map(np.asarray, params)
  if scan and "layers" not in params:
    return hf_mapping.stack_layers(params, CFG.num_layers)
  if not scan and "layers" in params:
    return hf_mapping.unstack_layers(params, CFG.num_layers)
  return params


@pytest.mark.parametrize("scan", [False, True])
def test_from_converted_checkpoint_sharded_and_cast(tmp_path, scan):
  """A bf16 converted checkpoint read by orbax into fp32 arrays placed by the run's shardings
  (scanned runs get the layers stacked on the devices); values equal the plain numpy load."""
  from heal_jax.checkpoint import restore  # pylint: disable=import-outside-toplevel
  random_init.write_random_checkpoint(dataclasses.replace(CFG, param_dtype="bfloat16"), tmp_path / "ck", seed=5)
  cfg = dataclasses.replace(CFG, scan_layers=scan)
  shardings = state_lib.param_shardings(cfg, mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  params = init.from_checkpoint(tmp_path / "ck", cfg, shardings)
  expected = _layout(restore.load_model(tmp_path / "ck", dtype="float32").params, scan)
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for got, want, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(expected), jax.tree.leaves(shardings)):
    assert got.dtype == np.float32 and got.sharding == sharding
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("stored_scan,run_scan", [(True, False), (False, True), (True, True)])
def test_from_a_work_directory_in_either_layout(tmp_path, stored_scan, run_scan):
  """Another run's newest parameters, stored scanned or not, restored sharded into a run that scans
  or not: equal to the numpy load."""
  from heal_jax.checkpoint import workdir_restore  # pylint: disable=import-outside-toplevel
  from heal_jax.train import checkpointing  # pylint: disable=import-outside-toplevel
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  stored = dataclasses.replace(CFG, scan_layers=stored_scan)
  params = jax.jit(lambda k: state_lib.unboxed_init(stored, k),
                   out_shardings=state_lib.param_shardings(stored, mesh))(jax.random.PRNGKey(1))
  from heal_jax.train import optimizer as opt_lib  # pylint: disable=import-outside-toplevel
  tx = opt_lib.make_optimizer(opt_lib.hyperparams(opt_lib.OptimizerSpec(peak_lr=1e-3, steps=10, warmup_steps=0,
                                                                      schedule="constant")))

  class _Iterator:  # the data state a run saves beside its train state
    def get_state(self):
      return {"spec": "-", "shards": {"0": {}}}
  mngr = checkpointing.manager(tmp_path / "run", keep=1, keep_period=0, async_save=False)
  checkpointing.save(mngr, 7, state_lib.new_state(params, tx, jax.random.PRNGKey(0)), _Iterator(),
                     {"model": stored.to_dict()})
  mngr.close()
  cfg = dataclasses.replace(CFG, scan_layers=run_scan)
  shardings = state_lib.param_shardings(cfg, mesh)
  got = init.from_checkpoint(tmp_path / "run", cfg, shardings)
  _, want, _, _ = workdir_restore.newest_params(tmp_path / "run", "float32", scan_layers=run_scan)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w, sh in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(shardings)):
    assert g.sharding == sh
    np.testing.assert_array_equal(np.asarray(g), w)


def test_init_from_refuses_other_rope_theta_or_norm_eps_and_names_a_rope_scaling_or_context_change(hf_dir):
  """The weights' rope_theta and rms_norm_eps must be the run's (they used to be silently replaced by
  config.model's, changing every logit); a rope scaling change, context extension, is logged."""
  path, _ = hf_dir
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  for field, value in (("rope_theta", 500000.0), ("rms_norm_eps", 1e-6)):
    cfg = dataclasses.replace(CFG, **{field: value})
    with pytest.raises(ValueError, match=rf"init_from {path} does not fit config.model: it was trained with "
                                         rf"{field}={getattr(CFG, field):g}, config.model.{field} is {value:g} "
                                         rf"\(every logit would change\)\. To start from it, set "
                                         rf"--config.model.{field}={getattr(CFG, field):g}$"):
      init.initial_params(str(path), cfg, state_lib.param_shardings(cfg, mesh), 0)
  # Every difference at once, with the overrides that fit the checkpoint.
  cfg = dataclasses.replace(CFG, hidden_size=2 * CFG.hidden_size, num_layers=CFG.num_layers + 1, rope_theta=5e5)
  with pytest.raises(ValueError, match=rf"hidden_size is {CFG.hidden_size} there, config.model.hidden_size is "
                                       rf"{cfg.hidden_size}; num_layers is {CFG.num_layers} there, .*; it was trained "
                                       rf"with rope_theta={CFG.rope_theta:g}, .* set --config.model.hidden_size="
                                       rf"{CFG.hidden_size} --config.model.num_layers={CFG.num_layers} "
                                       rf"--config.model.rope_theta={CFG.rope_theta:g}$"):
    init.initial_params(str(path), cfg, state_lib.param_shardings(cfg, mesh), 0)
  cfg = dataclasses.replace(CFG, rope_scaling_factor=2.0)
  params, how = init.initial_params(str(path), cfg, state_lib.param_shardings(cfg, mesh), 0)
  assert how == f"from HF {path} (its rope scaling x1 becomes this phase's x2)"
  same, how_same = init.initial_params(str(path), CFG, state_lib.param_shardings(CFG, mesh), 0)
  assert how_same == f"from HF {path}"
  longer = dataclasses.replace(CFG, max_position_embeddings=4 * CFG.max_position_embeddings)
  _, how_longer = init.initial_params(str(path), longer, state_lib.param_shardings(longer, mesh), 0)
  assert how_longer == (f"from HF {path} (its context of {CFG.max_position_embeddings} positions becomes this "
                        f"phase's {longer.max_position_embeddings} (config.model.max_position_embeddings, or the "
                        "phase's seq_len where longer), which exports declare)")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
