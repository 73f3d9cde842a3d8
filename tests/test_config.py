"""Config files, command-line overrides, and the HF config mapping."""

import json
import pathlib

import pytest
import transformers

from heal_jax import config as config_lib
from heal_jax.model.config import ConfigError as ModelConfigError
from heal_jax.model.config import ModelConfig, from_hf_config, to_hf_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name,params_b", [("llama2_7b", 6.74), ("llama2_13b", 13.02), ("llama2_70b", 68.98)])
def test_llama2_presets_have_meta_shapes(name, params_b):
  cfg = config_lib.model_config(config_lib.load_config(str(CONFIGS / f"{name}.py")))
  # Meta's published totals: 6,738,415,616 / 13,015,864,320 / 68,976,648,192 parameters.
  assert round(cfg.num_params() / 1e9, 2) == params_b
  assert cfg.head_dim == 128 and cfg.vocab_size == 32000


def test_70b_is_gqa_8():
  cfg = config_lib.model_config(config_lib.load_config(str(CONFIGS / "llama2_70b.py")))
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.num_groups) == (64, 8, 8)


def test_overrides_are_typed():
  config = config_lib.load_config(str(CONFIGS / "tiny.py"), [
      "--config.model.num_layers=3", "--config.model.scan_layers=true", "--config.model.rope_theta=5e5",
      "--config.model.head_dim=16", "--config.model.compute_dtype=bfloat16"])
  cfg = config_lib.model_config(config)
  assert (cfg.num_layers, cfg.scan_layers, cfg.rope_theta, cfg.head_dim, cfg.compute_dtype) == (
      3, True, 500000.0, 16, "bfloat16")


def test_a_key_in_a_group_the_config_leaves_empty_says_so():
  with pytest.raises(config_lib.ConfigError, match=r"unknown config key: phases.pretrain \(phases has no entries: "
                                                   r"the config file defines them\)$"):
    config_lib.apply_override(config_lib.base_config(), "phases.pretrain.steps", "3")


@pytest.mark.parametrize("override,message", [
    ("--config.model.num_layer=3", "unknown config key: model.num_layer"),
    ("--config.modle.num_layers=3", r"unknown config key: modle \(known here: .*, model, "),
    ("--config.data.sources.notes.paths=x", r"unknown config key: data.sources.notes \(known here: clinical, general, "),
    ("--config.seed.value=3", r"unknown config key: seed.value \(seed is not a group\)"),
    ("--config.model.num_layers=three", "--config.model.num_layers=three: not a valid int"),
    ("--config.model.scan_layers=maybe", "not a valid bool"),
    ("--config.model=3", "config key model is a group"),
    ("--config.seed=None", "--config.seed=None: only model.head_dim may be None"),
    ("--config.init_from=None", "--config.init_from=None: only model.head_dim may be None"),
    ("--config.train.eps=0", r"config.train.eps=0.0: must be > 0"),
    ("--config.train.clip_norm=0", r"config.train.clip_norm=0.0: must be > 0"),
    ("--config.=1", "--config.=1: empty key"),
    ("--config.checkpoint.keep=0", r"config.checkpoint.keep=0: must be >= 1"),
    ("--config.checkpoint.every_steps=0", r"config.checkpoint.every_steps=0: must be >= 1"),
    ("--config.metrics.every_steps=0", r"config.metrics.every_steps=0: must be >= 1"),
    ("--config.train.global_batch=-8", r"config.train.global_batch=-8: must be >= 1"),
    ("--config.train.micro_steps=0", r"config.train.micro_steps=0: must be >= 1"),
    ("--config.train.z_loss=nan", r"config.train.z_loss=nan: must be a finite number"),
    ("--config.phases.pretrain.peak_lr=inf", r"config.phases.pretrain.peak_lr=inf: must be a finite number"),
    ("--config.train.b2=1", r"config.train.b2=1.0: must be < 1"),
])
def test_bad_overrides_name_the_key(override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load_config(str(CONFIGS / "tiny.py"), [override])


def test_a_config_file_that_is_not_python_names_file_and_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  return (\n")
  with pytest.raises(config_lib.ConfigError, match=f"config file {bad}:2: "):
    config_lib.load_config(str(bad))


def test_loaded_config_is_locked():
  config = config_lib.load_config(str(CONFIGS / "tiny.py"))
  with pytest.raises(AttributeError):
    config.model.new_field = 1


def test_split_overrides():
  overrides, rest = config_lib.split_overrides(
      ["train", "--config", "c.py", "--config.seed=3", "--config.model.num_layers", "2", "--workdir", "w"])
  assert overrides == ["--config.seed=3", "--config.model.num_layers=2"]
  assert rest == ["train", "--config", "c.py", "--workdir", "w"]
  for forgotten in (["--config.data.tokenizer", "--config.plan.devices=4"], ["--config.data.tokenizer", "--workdir", "w"],
                    ["--config.data.tokenizer"]):
    with pytest.raises(config_lib.ConfigError, match=r"--config.data.tokenizer needs a value \(give "):
      config_lib.split_overrides(forgotten)


def test_model_config_validation_names_fields():
  with pytest.raises(ModelConfigError, match="model.num_kv_heads=3 must divide model.num_heads=4"):
    ModelConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=4, num_kv_heads=3)
  with pytest.raises(ModelConfigError, match="unknown model config key.*model.bogus"):
    ModelConfig.from_dict({"bogus": 1})
  shape = dict(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=2)
  for field, value in [("rms_norm_eps", -1e-5), ("rms_norm_eps", 0.0), ("rope_theta", -10000.0),
                       ("rope_theta", float("nan")), ("head_dim", 0)]:
    with pytest.raises(ModelConfigError, match=f"model.{field} must be positive"):
      ModelConfig(**shape, **{field: value})


def test_hf_config_both_rope_styles():
  base = dict(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
  old = from_hf_config({**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}})
  new = from_hf_config({**base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 4.0}})
  assert old == new and (old.rope_theta, old.rope_scaling_factor) == (5e5, 4.0)
  assert from_hf_config(to_hf_config(new)) == new
  wide = new.replace(head_dim=16)  # wider than hidden / heads = 4: only an exported head_dim says so
  assert from_hf_config(to_hf_config(wide)) == wide
  assert transformers.LlamaConfig(**to_hf_config(wide)).head_dim == 16
  with pytest.raises(ModelConfigError, match="rope_scaling.rope_type='dynamic' is not supported"):
    from_hf_config({**base, "rope_scaling": {"type": "dynamic", "factor": 2.0}})


def test_none_sets_an_optional_field():
  config = config_lib.load_config(str(CONFIGS / "tiny.py"), ["--config.model.head_dim=16", "--config.model.head_dim=None"])
  assert config.model.head_dim is None


def test_config_file_errors_name_the_file(tmp_path):
  not_py = tmp_path / "c.txt"
  not_py.write_text("def get_config(): pass\n")
  with pytest.raises(config_lib.ConfigError, match=f"config file {not_py} is not a Python file"):
    config_lib.load_config(str(not_py))
  with pytest.raises(config_lib.ConfigError, match=f"config file {tmp_path} is a directory"):
    config_lib.load_config(str(tmp_path))
  broken = tmp_path / "broken.py"
  broken.write_text("import os\nimport heal_jax.no_such_module\n")
  with pytest.raises(config_lib.ConfigError, match=f"config file {broken}:2: ModuleNotFoundError: No module named"):
    config_lib.load_config(str(broken))
  with pytest.raises(config_lib.ConfigError, match=f"config file {CONFIGS / 'tiny.py'} has no presets; ':big' given"):
    config_lib.load_config(f"{CONFIGS / 'tiny.py'}:big")
  presets = tmp_path / "presets.py"
  presets.write_text("from heal_jax import config as c\n\ndef get_config(arg):\n"
                     "  return {'a': c.base_config()}[arg]\n")
  with pytest.raises(config_lib.ConfigError, match=f"config file {presets}:4: get_config\\('b'\\) failed: KeyError"):
    config_lib.load_config(f"{presets}:b")
  assert config_lib.load_config(f"{presets}:a").seed == 0


@pytest.mark.parametrize("line, message", [
    ("c.data.on_eror = 'skip'", r"unknown config key: data.on_eror \(known here: .*on_error"),
    ("c.data.dedup.treshold = 0.5", r"unknown config key: data.dedup.treshold"),
    ("c.trian = ml_collections.ConfigDict()", r"unknown config key: trian"),
    ("c.data.sources.notes.feilds = 'conversation=dialogue'", r"unknown config key: data.sources.notes.feilds"),
    ("c.phases.pretrain.warmup = 10", r"unknown config key: phases.pretrain.warmup \(known here: .*warmup_steps"),
    ("c.phases.extend = 5", r"config key phases.extend is a group, got int"),
])
def test_a_config_file_typo_is_an_unknown_key(tmp_path, line, message):
  """A key a config file adds outside the schema is an error naming it (not ignored, not stored in
  config.json next to the field it was meant to set)."""
  path = tmp_path / "typo.py"
  path.write_text("import ml_collections\nfrom heal_jax import config as config_lib\n\n"
                  "def get_config():\n"
                  "  c = config_lib.base_config()\n"
                  "  c.data.sources.notes = config_lib.source_config('a.jsonl', 'conversation', 1.0)\n"
                  "  c.phases.pretrain = config_lib.phase_config(steps=2, seq_len=8)\n"
                  f"  {line}\n"
                  "  return c\n")
  with pytest.raises(config_lib.ConfigError, match=f"config file {path}: {message}"):
    config_lib.load_config(str(path))


@pytest.mark.parametrize("line, message", [
    ("c.phases.pretrain = config_lib.phase_config(steps='10', seq_len=8)",
     r"config key phases.pretrain.steps: expected int, got '10' \(str\)"),
    ("c.phases.pretrain = config_lib.phase_config(steps=2, seq_len=8, global_batch=8.0)",
     r"config key phases.pretrain.global_batch: expected int, got 8.0 \(float\)"),
    ("c.train = ml_collections.ConfigDict({**c.train.to_dict(), 'micro_steps': True})",
     r"config key train.micro_steps: expected int, got True \(bool\)"),
    ("c.checkpoint = ml_collections.ConfigDict({**c.checkpoint.to_dict(), 'async_save': 1})",
     r"config key checkpoint.async_save: expected bool, got 1 \(int\)"),
    ("c.data.sources.notes = ml_collections.ConfigDict(dict(paths='a.jsonl', kind='conversation'))",
     r"config key data.sources.notes.(weight|format|fields) is missing \(build the config from"),
    ("del c.phases.pretrain['peak_lr']", r"config key phases.pretrain.peak_lr is missing"),
])
def test_a_config_file_value_of_the_wrong_type_or_a_missing_field_names_the_key(tmp_path, line, message):
  """A config file's values are checked against the schema's types (an int may stand for a float), and
  every field must be there: these used to fail later as a bare AttributeError or TypeError."""
  path = tmp_path / "typed.py"
  path.write_text("import ml_collections\nfrom heal_jax import config as config_lib\n\n"
                  "def get_config():\n"
                  "  c = config_lib.base_config()\n"
                  "  c.data.sources.notes = config_lib.source_config('a.jsonl', 'conversation', 1.0)\n"
                  "  c.phases.pretrain = config_lib.phase_config(steps=2, seq_len=8)\n"
                  "  c.data.sources.notes.weight = 2\n"  # an int where a float belongs is fine
                  f"  {line}\n"
                  "  return c\n")
  with pytest.raises(config_lib.ConfigError, match=f"config file {path}: {message}"):
    config_lib.load_config(str(path))


def test_differences_name_each_changed_field_against_the_saved_json():
  config = config_lib.load_config(str(CONFIGS / "tiny.py"), ["--config.seed=3", "--config.phases.pretrain.steps=7"])
  saved = json.loads(config_lib.load_config(str(CONFIGS / "tiny.py")).to_json())
  assert config_lib.differences(saved, config) == [
      f"config.phases.pretrain.steps: saved {saved['phases']['pretrain']['steps']}, now 7",
      f"config.seed: saved {saved['seed']}, now 3"]
  saved["retired_field"] = 1  # saved by another version
  del saved["eval"]["batches"]
  assert config_lib.differences(saved, config) == [  # fields of another version: not differences
      "config.phases.pretrain.steps: saved 150, now 7", "config.seed: saved 0, now 3"]
  assert config_lib.differences(json.loads(config.to_json()), config) == []
