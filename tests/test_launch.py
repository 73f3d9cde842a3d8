"""launch/: the Slurm and Kubernetes launchers set the same XLA flags, and this jaxlib accepts them.

An XLA flag the installed jaxlib does not know aborts start-up on every host of a job, so a jax
upgrade that drops one must fail here first.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _slurm_flags() -> list[str]:
  text = (REPO / "launch" / "slurm.sbatch").read_text()
  block = re.search(r"^xla_flags=\(\n(.*?)^\)", text, re.S | re.M)
  assert block, "launch/slurm.sbatch: no xla_flags=( ... ) block"
  return re.findall(r"^\s*(--xla_\S*)", block.group(1), re.M)


def _k8s_flags() -> list[str]:
  text = (REPO / "launch" / "k8s-jobset.yaml").read_text()
  block = re.search(r"- name: XLA_FLAGS\n\s*value: >-\n((?:\s+--xla_\S*\n)+)", text)
  assert block, "launch/k8s-jobset.yaml: no folded XLA_FLAGS value"
  return block.group(1).split()


def test_slurm_and_k8s_set_the_same_flags():
  slurm = _slurm_flags()
  assert len(slurm) >= 5 and all(f.startswith("--xla_gpu_") for f in slurm), slurm
  assert _k8s_flags() == slurm


def test_installed_jaxlib_accepts_every_flag():
  env = {**os.environ, "XLA_FLAGS": " ".join(_slurm_flags()), "JAX_PLATFORMS": "cpu"}
  probe = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
  assert probe.returncode == 0 and probe.stdout.strip() == "3.0", probe.stderr[-2000:]


def test_an_unknown_flag_would_be_caught():
  env = {**os.environ, "XLA_FLAGS": "--xla_gpu_no_such_flag_heal=true", "JAX_PLATFORMS": "cpu"}
  probe = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
  assert probe.returncode != 0 and "Unknown flag" in probe.stderr, probe.stderr[-2000:]


def test_k8s_wrapper_passes_overrides_and_exit_status(tmp_path):
  import yaml  # pylint: disable=import-outside-toplevel
  spec = yaml.safe_load((REPO / "launch" / "k8s-jobset.yaml").read_text())
  script = spec["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
  stub = tmp_path / "heal-jax"  # prints its arguments, one per line, and exits 3
  stub.write_text("#!/bin/bash\nprintf '%s\\n' \"$@\"\nexit 3\n")
  stub.chmod(0o755)
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", CONFIG="configs/heal_13b.py", WORKDIR="/w",
             OVERRIDES="--config.checkpoint.every_steps=250 --config.seed=1")
  out = subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
  assert out.returncode == 3
  assert out.stdout.splitlines() == ["train", "--config", "configs/heal_13b.py", "--workdir", "/w",
                                     "--config.checkpoint.every_steps=250", "--config.seed=1"]
  env.pop("OVERRIDES")
  out = subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
  assert out.stdout.splitlines() == ["train", "--config", "configs/heal_13b.py", "--workdir", "/w"]
  # Preempted (SIGTERM, forwarded): a trainer that saves and exits 0 makes the wrapper exit 143 (the
  # JobSet restarts it); one that fails keeps its own status, not the 143 of the wait the trap cut short.
  for trainer_rc, expected in ((0, 143), (7, 7)):
    stub.write_text(f"#!{sys.executable}\nimport os, signal, time\n"  # exits the moment SIGTERM comes
                    f"signal.signal(signal.SIGTERM, lambda *_: os._exit({trainer_rc}))\n"
                    "print('started', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen(["/bin/bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == expected, (trainer_rc, proc.returncode)


def test_local_gpu_mode_sets_the_memory_fraction_under_one_name_only():
  """jaxlib refuses XLA_CLIENT_MEM_FRACTION together with its deprecated name; a user's old-name value
  is kept, else the new name gets 0.90 (what `heal-jax plan` assumes)."""
  env = {k: v for k, v in os.environ.items() if "MEM_FRACTION" not in k}
  env["CUDA_VISIBLE_DEVICES"] = "3"  # GPU mode needs to know the GPUs; `env` runs no GPU code
  cmd = ["bash", str(REPO / "launch" / "local.sh"), "1", "--gpus-per-process", "1", "--", "env"]
  fresh = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
  old = subprocess.run(cmd, env={**env, "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.8"}, capture_output=True, text=True,
                       timeout=60, check=True).stdout
  assert "[0] XLA_CLIENT_MEM_FRACTION=0.90" in fresh and "[0] CUDA_VISIBLE_DEVICES=3" in fresh
  assert "[0] XLA_PYTHON_CLIENT_MEM_FRACTION=0.8" in old and "XLA_CLIENT_MEM_FRACTION" not in old
  sbatch = (REPO / "launch" / "slurm.sbatch").read_text()
  assert 'if [[ -z "${XLA_PYTHON_CLIENT_MEM_FRACTION:-}" ]]; then\n  export XLA_CLIENT_MEM_FRACTION=' in sbatch


def test_slurm_script_checks_its_setting_before_writing_anything(tmp_path):
  """Run outside sbatch it used to make WORKDIR and then fail on 'SLURM_JOB_ID: unbound variable';
  GPUS_PER_NODE=abc failed as 'abc: unbound variable'; a missing CONFIG reached every node."""
  sbatch = str(REPO / "launch" / "slurm.sbatch")
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env.update(WORKDIR=str(tmp_path / "w"), SLURM_SUBMIT_DIR=str(REPO))
  cases = (({}, "submit this script with sbatch (SLURM_JOB_ID is not set)"),
           ({"SLURM_JOB_ID": "5", "GPUS_PER_NODE": "abc"}, "GPUS_PER_NODE=abc is not a whole number of GPUs >= 1"),
           ({"SLURM_JOB_ID": "5", "CONFIG": "configs/nope.py"}, "CONFIG=configs/nope.py: no such file"))
  for extra, message in cases:
    out = subprocess.run(["bash", sbatch], env={**env, **extra}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and message in out.stderr, (extra, out.returncode, out.stderr)
    assert not (tmp_path / "w").exists()
  # With the settings right it goes on to srun (a stub that prints a finished run's summary).
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "srun").write_text('#!/bin/bash\necho "$@" >&2\necho \'{"status": "done"}\'\n')
  (tmp_path / "bin" / "srun").chmod(0o755)
  ok = {**env, "SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n1", "SLURM_NNODES": "1",
        "PATH": f"{tmp_path / 'bin'}:{env['PATH']}"}
  out = subprocess.run(["bash", sbatch, "--config.seed=1"], env=ok, capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  assert "heal-jax train --config configs/heal_13b.py --workdir" in out.stderr and "--config.seed=1" in out.stderr
  preset = "configs/ablations/heal_equal.py:/tmp/ablation"  # a preset with its argument (config.load_config)
  out = subprocess.run(["bash", sbatch], env={**ok, "CONFIG": preset}, capture_output=True, text=True, timeout=30)
  assert out.returncode == 0 and f"train --config {preset} --workdir" in out.stderr, out.stderr
