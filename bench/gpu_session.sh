#!/usr/bin/env bash
# The GPU checks of issues 7 (attention kernels) and 4 (trainer MFU) as ONE device-tool run.
#
# A session that is lent a GPU gets 15 minutes of device time in all and at most 10 per command, so
# this runs both benchmarks back to back under their own time limits and writes everything to $OUT:
#
#   run(command="bash bench/gpu_session.sh", timeout_s=540)
#
# Neither benchmark imports grain, ml-collections, clu or tensorflow (absent on the GPU image), so no
# wheels need carrying; heal_jax is imported from the working tree. Results go into BENCHMARKS.md
# with the device line from $OUT/env.txt. About 560 s; if device time is left, follow it at once
# (while the machine is warm) with the whole tiny recipe on the GPU, `bench/gpu_tiny.sh`.
set -u
OUT=${OUT:-/tmp/heal_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  "$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  > "$OUT/env.txt" 2>&1

# What the 2026-11-27 runs (BENCHMARKS.md) left open, most informative first; each step has its own
# time limit and writes to $OUT as it goes, so a cut-off run still returns what finished.

# Issue 4: MFU with lighter remat (the recorded rows used full remat, whose recomputation MFU does
# not count): no remat, and saving the matmul outputs; ours and cuDNN at 4K and 8K.
timeout 200 "$PY" bench/train.py --gpu --layers 8 --steps 5 --remat none,dots_no_batch --impls pallas,cudnn \
  > "$OUT/train_gpu.txt" 2>&1
echo "train exit $?" >> "$OUT/train_gpu.txt"

# Issue 7: the kernel tests on the GPU itself (compiled Triton kernels instead of interpret mode;
# conftest's JAX_PLATFORMS=cpu is only a default).
JAX_PLATFORMS=cuda timeout 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_flash_attention.py \
  > "$OUT/pytest_gpu.txt" 2>&1
echo "pytest exit $?" >> "$OUT/pytest_gpu.txt"

# Issue 7: block/warp/stage settings around the current defaults at 8K.
timeout 90 "$PY" bench/attention.py --sweep --seqs 8192 --heads 32:32 --iters 5 > "$OUT/sweep.txt" 2>&1
echo "sweep exit $?" >> "$OUT/sweep.txt"

# Issue 7: the table (ours, ours with segment ids, cuDNN, jax's Pallas mha) at 2K/4K/8K/16K, MHA 32:32
# and GQA 64:8, validated against the float32 XLA reference first (add xla to --impls in a longer
# session; it runs out of memory from 8K on).
timeout 130 "$PY" bench/attention.py --seqs 2048,4096,8192,16384 --iters 10 --budget-s 105 \
  --impls ours,ours_seg,cudnn,mha > "$OUT/attention.txt" 2>&1
echo "attention exit $?" >> "$OUT/attention.txt"

# Issue 4: where a step's time goes (forward, forward+backward, whole step) and a plain bf16 matmul.
timeout 70 "$PY" bench/train.py --breakdown --layers 8 --steps 5 --seqs 4096 --remat full --impls pallas,cudnn \
  > "$OUT/breakdown.txt" 2>&1
echo "breakdown exit $?" >> "$OUT/breakdown.txt"

grep -v -E "^W[0-9]|^E[0-9]|^\{" "$OUT"/env.txt "$OUT"/train_gpu.txt "$OUT"/breakdown.txt | cut -c1-300
tail -n 15 "$OUT"/pytest_gpu.txt
grep -v -E "^W[0-9]|^E[0-9]|^\{" "$OUT"/sweep.txt "$OUT"/attention.txt | cut -c1-300
