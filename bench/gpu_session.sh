#!/usr/bin/env bash
# The GPU checks of issues 7 (attention kernels) and 4 (trainer MFU) as ONE device-tool run.
#
# A session that is lent a GPU gets 15 minutes of device time in all and at most 10 per command, so
# this runs both benchmarks back to back under their own time limits and writes everything to $OUT:
#
#   run(command="bash bench/gpu_session.sh", timeout_s=560)
#
# Neither benchmark imports grain, ml-collections, clu or tensorflow (absent on the GPU image), so no
# wheels need carrying; heal_jax is imported from the working tree. Results go into BENCHMARKS.md
# with the device line from $OUT/env.txt.
set -u
OUT=${OUT:-/tmp/heal_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  "$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  > "$OUT/env.txt" 2>&1

# Issue 7: every implementation (xla, cudnn, pallas, splash where it applies) validated against the
# XLA reference at --validate-len, then timed; about 3 minutes on an H100.
timeout 240 "$PY" bench/attention.py --seqs 2048,4096,8192 --iters 10 > "$OUT/attention.txt" 2>&1
echo "attention exit $?" >> "$OUT/attention.txt"

# Issue 4: MFU of a LLaMA2-7B-width model (8 layers) at seq 4096 and 8192 per attention implementation.
timeout 270 "$PY" bench/train.py --gpu --layers 8 --steps 5 > "$OUT/train_gpu.txt" 2>&1
echo "train exit $?" >> "$OUT/train_gpu.txt"

tail -n 3 "$OUT"/*.txt
