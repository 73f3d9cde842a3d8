"""NaN/Inf in stored weights is refused by every reader, naming the tensors (never restored silently)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from heal_jax import cli
from heal_jax.checkpoint import finite, hf_convert, params_store, random_init, restore
from heal_jax.checkpoint.errors import CheckpointError
from heal_jax.model.config import ModelConfig
from heal_jax.train import loop
from tests import hf_reference, train_helpers

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, max_position_embeddings=64, param_dtype="float32")


def test_counts_equal_numpy_on_host_and_on_sharded_devices():
  w = np.arange(64, dtype=np.float32).reshape(8, 8)
  w[[0, 3, 5], [1, 1, 7]] = [np.nan, np.inf, -np.inf]
  mesh = jax.make_mesh((8,), ("x",))
  sharded = jax.device_put(w, jax.NamedSharding(mesh, jax.P("x")))  # rows 0, 3 and 5 on three devices
  tree = {"host": {"w": w}, "dev": sharded, "ok": np.ones(3, np.float32), "ids": np.array([1, 2]),
          "bf16": jnp.array([1.0, jnp.nan], jnp.bfloat16)}
  assert finite.nonfinite_counts(tree) == {"host/w": 3, "dev": 3, "bf16": 1}
  with pytest.raises(CheckpointError, match=r"^X holds NaN/Inf in bf16 \(1 of 2 bfloat16 values\), dev \(3 of 64 "
                     r"float32 values\), host/w \(3 of 64 float32 values\): damaged data.*; go back$"):
    finite.require_finite(tree, "X", "go back")
  finite.require_finite({"ok": np.ones(3), "ids": np.array([1])}, "X")  # nothing to report


def _poisoned_checkpoint(tmp_path):
  """A converted checkpoint whose layer-1 down projection holds one NaN (written past every check)."""
  params = random_init.random_params(CFG, 0)
  params = jax.tree.map(np.array, params)
  params["layers_1"]["mlp"]["w_down"]["kernel"][2, 3] = np.nan
  params_store.write_checkpoint(tmp_path / "ck", params, CFG, None, "float32", None)
  return tmp_path / "ck"


def test_a_converted_checkpoint_with_nan_is_refused_by_load_and_export(tmp_path, capsys):
  ck = _poisoned_checkpoint(tmp_path)
  with pytest.raises(CheckpointError, match=rf"{ck} holds NaN/Inf in layers_1/mlp/w_down/kernel \(1 of 1,536"):
    restore.load_model(ck)
  assert cli.main(["convert", "orbax-to-hf", str(ck), str(tmp_path / "hf")]) == 2
  assert "layers_1/mlp/w_down/kernel (1 of 1,536 float32 values)" in capsys.readouterr().err
  assert not (tmp_path / "hf").exists()


def test_hf_weights_with_inf_are_refused_by_conversion(tmp_path):
  model = hf_reference.hf_llama()
  with torch.no_grad():
    model.model.layers[0].self_attn.k_proj.weight[0, 0] = float("inf")
  model.save_pretrained(tmp_path / "hf")
  with pytest.raises(CheckpointError, match=r"holds NaN/Inf in model\.layers\.0\.self_attn\.k_proj\.weight \(1 of"):
    hf_convert.hf_to_orbax(tmp_path / "hf", tmp_path / "ck")
  assert not (tmp_path / "ck").exists()


def test_a_resume_from_a_step_with_nan_names_it_and_the_step_before(tmp_path_factory, tmp_path):
  data_root = train_helpers.make_corpus(tmp_path_factory.mktemp("finite_data"))
  workdir = tmp_path / "w"

  def poison(state):  # a NaN in a weight and in its Adam moment
    for parent in (state["params"], state["opt_state"][1][0]["mu"]):
      parent["embed"]["embedding"] = np.array(parent["embed"]["embedding"])
      parent["embed"]["embedding"][0, 0] = np.nan

  state_dir = train_helpers.two_steps_with_step_2_edited(data_root, workdir, poison)
  longer = train_helpers.load(data_root, 3, ("--config.checkpoint.every_steps=1",))  # so that step 2 is restored
  with pytest.raises(CheckpointError, match=rf"{state_dir.parent}'s state holds NaN/Inf in params/embed/embedding \(1 of 65,536 float32 values\), "
                     r"opt_state/1/0/mu/embed/embedding \(1 of .* remove that directory to resume from step 1$"):
    loop.train(longer, workdir)
  with pytest.raises(CheckpointError, match=r"checkpoints/2 \(params\) holds NaN/Inf"):
    restore.load_model(workdir)  # as eval, generate and export read it
  from heal_jax.infer import placement  # pylint: disable=import-outside-toplevel
  with pytest.raises(CheckpointError, match=r"checkpoints/2 \(params\) holds NaN/Inf in embed/embedding \(1 of "):
    placement.load(str(workdir), "fsdp=2,tensor=4")  # eval and generate with --mesh: tensor by tensor
