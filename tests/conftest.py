"""Test setup: 8 fake CPU devices (set before jax is imported), float32 matmuls, shared fixtures."""

import os

# On CPU, XLA's LLVM backend at -O0: compiling is three quarters of the suite's CPU time, and this cuts the
# suite by about a third. XLA's own HLO passes (fusion, layout, buffer assignment) still run, and Eigen's
# products are prebuilt; the product and the benchmarks compile at the default level. Subprocesses keep the
# flag (train_helpers.xla_flags). Tests run on a GPU (JAX_PLATFORMS=cuda, bench/gpu_session.sh) compile as usual.
_CPU_ONLY = os.environ.setdefault("JAX_PLATFORMS", "cpu") == "cpu"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8" +
                           (" --xla_backend_optimization_level=0" if _CPU_ONLY else "")).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One XLA program cache for the session, its workers and the heal-jax processes tests start: many
# tests train the same tiny model, and each run would otherwise compile the same train step again.
# pytest-xdist's workers inherit the directory from the process that made it, which removes it at the end
# (never a cache the user's environment names: the tests would fill it with their small programs). A size
# limit turns on jax's file lock, so a process never reads an entry another is still writing.
_OWN_CACHE = None
if "HEAL_JAX_TESTS_XLA_CACHE" not in os.environ:
  import tempfile  # noqa: E402  pylint: disable=g-import-not-at-top
  _OWN_CACHE = tempfile.mkdtemp(prefix="heal-jax-tests-xla-cache-")
  os.environ["HEAL_JAX_TESTS_XLA_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 * 2**30)

import pathlib  # noqa: E402
import shutil  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data, or a skip naming what is missing."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"public evaluation data not found at {SHARED_DATA}")
  return SHARED_DATA


@pytest.fixture(scope="session")
def note_checkpoint(tmp_path_factory) -> pathlib.Path:
  """A tiny random checkpoint (2 layers, GQA, context 1024) with a tokenizer trained on a small
  synthetic corpus: what generation tests write notes with."""
  from heal_jax.checkpoint import random_init  # pylint: disable=import-outside-toplevel
  from heal_jax.data import synthetic, tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from heal_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("gen")
  files = synthetic.generate_corpus(root / "corpus", seed=0,
                                    sizes={"general": 20, "medical": 10, "clinical": 20, "instructions": 8})
  tok = tokenizer_lib.train_tokenizer([files[t] for t in sorted(files)], root / "tok", vocab_size=600,
                                      num_threads=1)
  cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, max_position_embeddings=1024)
  random_init.write_random_checkpoint(cfg, root / "ckpt", seed=0, tokenizer_dir=root / "tok")
  return root / "ckpt"
