#!/usr/bin/env bash
# The main job (`heal-jax train --config configs/tiny.py`) on a GPU machine of the device tool, whose
# image has jax, flax, optax, orbax and sentencepiece but not grain, ml-collections or clu. Those
# travel as wheels in the ignored folder .whl, fetched here first (Python 3.12, x86-64):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl grain==0.2.18 array-record ml-collections==1.1.0 clu==0.0.12 portpicker
#   run(command="bash bench/gpu_tiny.sh", carry=[".whl"], timeout_s=300)
#
# configs/tiny.py uses XLA attention; TINY_ARGS="--config.model.attention_impl=pallas" trains through
# our Pallas kernel with packed rows instead (bench/gpu_session.sh does). TINY_TIMEOUT caps the run.
# The same set-up (Python 3.12, jax 0.11.2, those five wheels, no TensorFlow) ran the recipe to the end
# on the CPU VM (BENCHMARKS.md).
set -u
OUT=${OUT:-/tmp/heal_gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$OUT/tiny_gpu.txt" 2>&1 || { echo "tiny: installing the carried wheels failed" >> "$OUT/tiny_gpu.txt"; exit 1; }
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
rm -rf /tmp/tiny_gpu  # A rerun on a warm machine must train again, not resume a finished run.
# shellcheck disable=SC2086  # TINY_ARGS is a list of overrides.
timeout "${TINY_TIMEOUT:-280}" "$PY" -c "import sys; from heal_jax.cli import main; sys.exit(main())" \
  train --config configs/tiny.py --workdir /tmp/tiny_gpu ${TINY_ARGS:-} >> "$OUT/tiny_gpu.txt" 2>&1
echo "tiny exit $? after $(( $(date +%s) - start )) s" >> "$OUT/tiny_gpu.txt"
grep -v -E "^W[0-9]|^E[0-9]" "$OUT/tiny_gpu.txt" | tail -n 40 | cut -c1-300
