#!/usr/bin/env bash
# The GPU checks of issues 7 (attention kernels) and 4 (trainer MFU) as ONE device-tool run.
#
# A session that is lent a GPU gets 15 minutes of device time in all and at most 10 per command, so
# this runs both benchmarks back to back under their own time limits and writes everything to $OUT:
#
#   run(command="bash bench/gpu_session.sh", timeout_s=300)
#
# Neither benchmark imports grain, ml-collections, clu or tensorflow (absent on the GPU image), so no
# wheels need carrying; heal_jax is imported from the working tree. Results go into BENCHMARKS.md
# with the device line from $OUT/env.txt.
set -u
OUT=${OUT:-/tmp/heal_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  "$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  > "$OUT/env.txt" 2>&1

# Issue 4 first: MFU of a LLaMA2-7B-width model (8 layers) at seq 4096 and 8192 per attention
# implementation, full remat; rows print as they finish.
timeout 150 "$PY" bench/train.py --gpu --layers 8 --steps 5 --remat full --impls pallas,cudnn,xla \
  > "$OUT/train_gpu.txt" 2>&1
echo "train exit $?" >> "$OUT/train_gpu.txt"

# Issue 7: ours, ours with segment ids, cudnn and jax's Pallas mha validated against the float32
# XLA reference, then timed at 2K/4K/8K/16K for MHA 32:32 and GQA 64:8 (xla, which runs out of
# memory from 8K on, is left to a longer session: --impls ours,ours_seg,cudnn,mha,xla); cells not
# started within --budget-s are skipped (the table says so).
timeout 115 "$PY" bench/attention.py --seqs 2048,4096,8192,16384 --iters 10 --budget-s 95 \
  --impls ours,ours_seg,cudnn,mha > "$OUT/attention.txt" 2>&1
echo "attention exit $?" >> "$OUT/attention.txt"

# Block/warp/stage sweep of ours at 8K (how the defaults were picked), when a session has time:
#   python bench/attention.py --sweep --seqs 8192 --heads 32:32 --iters 5

grep -v -E "^W[0-9]|^E[0-9]|^\{" "$OUT"/env.txt "$OUT"/train_gpu.txt | cut -c1-300
grep -v -E "^W[0-9]|^E[0-9]|^\{" "$OUT"/attention.txt | cut -c1-300
