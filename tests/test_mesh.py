"""Mesh construction, logical partition rules, and the refusal to replicate large parameters."""

from __future__ import annotations

import jax
import pytest
from jax.sharding import PartitionSpec as P

from heal_jax.model.config import ModelConfig
from heal_jax.parallel import mesh as mesh_lib
from heal_jax.train import state as state_lib


def test_minus_one_fills_the_remaining_devices():
  assert mesh_lib.mesh_shape({"data": 2, "fsdp": -1, "tensor": 1}, 8) == (2, 4, 1)
  assert mesh_lib.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(mesh_lib.ShardingError, match="does not fit 8 devices"):
    mesh_lib.mesh_shape({"data": 3, "fsdp": -1, "tensor": 1}, 8)
  with pytest.raises(mesh_lib.ShardingError, match="at most one axis"):
    mesh_lib.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
  with pytest.raises(mesh_lib.ShardingError, match="tensor=0; each axis is >= 1, or -1 for the devices left over"):
    mesh_lib.mesh_shape({"data": 1, "fsdp": 1, "tensor": 0}, 8)


def _cfg(**kw):
  base = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
              max_position_embeddings=64, param_dtype="float32", compute_dtype="float32")
  return ModelConfig(**{**base, **kw})


def test_rules_split_weights_over_fsdp_and_tensor():
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  shardings = state_lib.param_shardings(_cfg(), mesh)
  assert shardings["embed"]["embedding"].spec == P("tensor", "fsdp")
  assert shardings["layers_0"]["attention"]["wq"]["kernel"].spec == P("fsdp", "tensor", None)
  assert shardings["layers_0"]["attention"]["wk"]["kernel"].spec == P("fsdp", "tensor", None)
  assert shardings["layers_0"]["mlp"]["w_down"]["kernel"].spec == P("tensor", "fsdp")
  assert shardings["final_norm"]["scale"].spec == P(None)


def test_undividable_dimension_is_left_unsplit_and_large_replicas_are_refused():
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  cfg = _cfg(hidden_size=60, num_heads=6, num_kv_heads=3, vocab_size=250)  # 60 and 250 not divisible by 8
  shapes = jax.eval_shape(lambda: state_lib.unboxed_init(cfg, jax.random.PRNGKey(0)))
  shardings = state_lib.param_shardings(cfg, mesh)
  assert shardings["embed"]["embedding"].spec == P(None, None)
  with pytest.raises(mesh_lib.ShardingError, match=r"embed/embedding \[250, 60\].*replicated"):
    mesh_lib.check_no_large_replicated(shapes, shardings, max_replicated_elements=10_000)
  mesh_lib.check_no_large_replicated(shapes, shardings, max_replicated_elements=1 << 20)
  # One device holds each parameter once: nothing is replicated, nothing refused (a single GPU with a
  # 32,000-row vocabulary was refused). Data parallelism alone copies them all: refused (test_setup).
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  mesh_lib.check_no_large_replicated(shapes, state_lib.param_shardings(cfg, mesh), max_replicated_elements=10_000)


def test_optimizer_moments_follow_their_parameters():
  import optax  # pylint: disable=import-outside-toplevel
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  cfg = _cfg()
  p_shard = state_lib.param_shardings(cfg, mesh)
  tx = optax.adamw(1e-3)
  abstract = jax.eval_shape(lambda: state_lib.new_state(state_lib.unboxed_init(cfg, jax.random.PRNGKey(0)), tx,
                                                        jax.random.PRNGKey(0)))
  st = state_lib.state_shardings(abstract, p_shard, mesh)
  mu = st.opt_state[0].mu
  assert mu["layers_1"]["mlp"]["w_up"]["kernel"].spec == p_shard["layers_1"]["mlp"]["w_up"]["kernel"].spec
  assert st.step.spec == P() and st.opt_state[0].count.spec == P()


def test_place_rows_splits_rows_over_the_batch_axes_and_to_host_returns_the_whole():
  import numpy as np  # pylint: disable=import-outside-toplevel
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, jax.devices())
  tokens_BxL = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
  pad_B = np.arange(8, dtype=np.int32)
  placed_BxL = mesh_lib.place_rows(tokens_BxL, mesh_lib.batch_sharding(mesh))
  placed_B = mesh_lib.place_rows(pad_B, mesh_lib.batch_sharding(mesh))
  for x, whole in ((placed_BxL, tokens_BxL), (placed_B, pad_B)):
    shards = x.addressable_shards
    assert len(shards) == 8 and all(s.data.shape[0] == 1 for s in shards)  # one row per device
    for s in shards:
      np.testing.assert_array_equal(np.asarray(s.data), whole[s.index])
    np.testing.assert_array_equal(mesh_lib.to_host(x), whole)
  assert mesh_lib.place_rows(pad_B, None) is pad_B


@pytest.mark.parametrize("data,fsdp", [(2, 4), (1, 8)])  # (1, 8): the presets' layout, as a control
def test_no_device_gathers_the_whole_batch_of_activations(data, fsdp):
  """The compiled gradient of the loss on a (data, fsdp) mesh moves weights (gathered over fsdp), weight
  gradients and token ids, never an activation of the whole global batch: with data > 1, XLA used to gather
  the embedding lookup's [B, L, D/fsdp] on every device ("involuntary full rematerialization")."""
  import re  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from heal_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  cfg = _cfg()
  mesh = mesh_lib.make_mesh({"data": data, "fsdp": fsdp, "tensor": 1})
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        jax.eval_shape(lambda: state_lib.unboxed_init(cfg, jax.random.PRNGKey(0))),
                        state_lib.param_shardings(cfg, mesh))
  rows = mesh_lib.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((8, 48), jnp.int32, sharding=rows)
           for k in ("tokens", "segment_ids", "positions", "loss_mask", "source")}
  grads = jax.jit(lambda p, b: step_lib.loss_and_grads(p, b, cfg, 1, 0.0, 1)[1])
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
    hlo = grads.lower(params, batch).compile().as_text()
  # each collective's result type: one array, or a tuple of them (a combined collective)
  collectives = re.findall(r"= (\([^)]*\)|\S+) (?:all-gather|all-reduce|all-to-all|collective-permute|"
                           r"reduce-scatter)(?:-start)?\(", hlo)
  assert len(collectives) > 10, collectives  # the weights' gathers at least: the pattern reads this HLO
  # (token ids, int32 [B, L], may be gathered within an fsdp group for the lookup: B x L x 4 bytes).
  # The whole batch leads, its 48 positions come later: [B, L, ..] activations, and the attention's
  # heads-major [B, K, G, L, D] / [B, K, L, D] ones.
  assert not [c for c in collectives if re.search(r"(?<!s32)\[8,(\d+,)*48,", c)], collectives
