#!/usr/bin/env bash
# The GPU checks of issues 7 (attention kernels) and 4 (trainer MFU) as ONE device-tool run.
#
# A session that is lent a GPU gets 15 minutes of device time in all and at most 10 per command, so
# this runs both benchmarks back to back under their own time limits and writes everything to $OUT:
#
#   run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=560)
#
# Neither benchmark imports grain, ml-collections, clu or tensorflow (absent on the GPU image), so no
# wheels need carrying; heal_jax is imported from the working tree. Results go into BENCHMARKS.md
# with the device line from $OUT/env.txt. About 400 s; with .whl carried (bench/gpu_tiny.sh) it also
# runs the whole tiny recipe on the GPU through our kernel.
set -u
OUT=${OUT:-/tmp/heal_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  "$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  > "$OUT/env.txt" 2>&1

# Most informative first; each step has its own time limit and writes to $OUT as it goes, so a
# cut-off run still returns what finished.

# Issue 7: the kernel tests on the GPU itself (compiled Triton kernels instead of interpret mode;
# conftest's JAX_PLATFORMS=cpu is only a default).
JAX_PLATFORMS=cuda timeout 100 "$PY" -m pytest -q -p no:cacheprovider tests/test_flash_attention.py \
  > "$OUT/pytest_gpu.txt" 2>&1
echo "pytest exit $?" >> "$OUT/pytest_gpu.txt"

# Issue 7: block/warp/stage settings at 8K (the dq and dk/dv kernels tiled apart), and the price of
# segment ids; its last line is the best settings as JSON.
timeout 100 "$PY" bench/attention.py --sweep --seqs 8192 --heads 32:32 --iters 5 > "$OUT/sweep.txt" 2>&1
echo "sweep exit $?" >> "$OUT/sweep.txt"
BEST=$(grep '^{"sweep_best"' "$OUT/sweep.txt" | "$PY" -c "import json, sys; print(json.dumps(json.load(sys.stdin)['sweep_best']))" 2>/dev/null || echo '{}')

# Issue 7: the table with the defaults, then ours with the sweep's best settings, against cuDNN.
timeout 80 "$PY" bench/attention.py --seqs 4096,8192,16384 --iters 10 --budget-s 70 \
  --impls ours,ours_seg,cudnn > "$OUT/attention.txt" 2>&1
echo "attention exit $?" >> "$OUT/attention.txt"
timeout 60 "$PY" bench/attention.py --seqs 8192 --iters 10 --budget-s 50 --impls ours,ours_seg,cudnn \
  --ours-kwargs "$BEST" > "$OUT/attention_best.txt" 2>&1
echo "attention_best exit $?" >> "$OUT/attention_best.txt"

# Issue 4: MFU, packed rows (segment ids) and one-document rows through our kernel, against cuDNN.
timeout 170 "$PY" bench/train.py --gpu --layers 8 --steps 5 --remat dots_no_batch \
  --impls pallas,pallas_1doc,cudnn > "$OUT/train_gpu.txt" 2>&1
echo "train exit $?" >> "$OUT/train_gpu.txt"

# The main job on the GPU through our kernel (packed rows, GQA, head_dim 32), when the wheels of
# grain/ml-collections/clu were carried (see bench/gpu_tiny.sh).
if compgen -G ".whl/*.whl" > /dev/null; then
  TINY_TIMEOUT=150 TINY_ARGS="--config.model.attention_impl=pallas" bash bench/gpu_tiny.sh > /dev/null 2>&1
fi

grep -v -E "^W[0-9]|^E[0-9]|^\{" "$OUT"/env.txt "$OUT"/train_gpu.txt | cut -c1-300
tail -n 6 "$OUT"/pytest_gpu.txt
grep -v -E "^W[0-9]|^E[0-9]|^\{\"bench" "$OUT"/sweep.txt "$OUT"/attention.txt "$OUT"/attention_best.txt | cut -c1-300
[ -f "$OUT/tiny_gpu.txt" ] && grep -E "held-out|phase .*: |tiny exit" "$OUT/tiny_gpu.txt" | cut -c1-300
