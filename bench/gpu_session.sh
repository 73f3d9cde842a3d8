#!/usr/bin/env bash
# The GPU checks of issues 7 (attention kernels) and 4 (trainer MFU) as ONE device-tool run.
#
# A session that is lent a GPU gets 15 minutes of device time in all and at most 10 per command, so
# this runs both benchmarks back to back under their own time limits and writes everything to $OUT:
#
#   run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=600)
#
# The benchmarks import neither grain, ml-collections, clu nor tensorflow (absent on the GPU image);
# heal_jax is imported from the working tree. Only the last step, the whole tiny recipe on the GPU
# through our kernel (bench/gpu_tiny.sh), needs those, as the wheels in .whl (fetched as its header
# says); without them it is skipped. Results go into BENCHMARKS.md with the device line from
# $OUT/env.txt. About 500 s; the step limits below add up to more, the tiny recipe last.
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
# cut-off run still returns what finished. At most 8 files come back from $OUT: these are 8 with the tiny recipe.
# (The second 2026-11-27 session ran the sweep; see BENCHMARKS.md. `--sweep` is still there.)

# Issue 7: the kernel tests on the GPU itself (compiled Triton kernels instead of interpret mode;
# conftest's JAX_PLATFORMS=cpu is only a default).
JAX_PLATFORMS=cuda timeout 100 "$PY" -m pytest -q -p no:cacheprovider tests/test_flash_attention.py \
  > "$OUT/pytest_gpu.txt" 2>&1
echo "pytest exit $?" >> "$OUT/pytest_gpu.txt"

# Issue 4: where the step's time goes at 8K: forward, forward+backward, whole step, and a profile
# of two whole steps per implementation summarised per kernel (the ~11 ms of the pallas step that
# its attention kernels do not explain; BENCHMARKS.md).
rm -rf /tmp/heal_traces  # No stale trace from an earlier run on a warm machine.
timeout 150 "$PY" bench/train.py --breakdown --layers 8 --steps 5 --seqs 8192 --remat dots_no_batch \
  --impls pallas,pallas_1doc,cudnn --trace /tmp/heal_traces > "$OUT/breakdown.txt" 2>&1
echo "breakdown exit $?" >> "$OUT/breakdown.txt"
for impl in pallas pallas_1doc cudnn; do
  [ -d "/tmp/heal_traces/$impl" ] && "$PY" bench/trace_summary.py "/tmp/heal_traces/$impl" --top 30
done > "$OUT/trace_summary.txt" 2>&1

# Issue 7: the whole table with the current kernel (jax's mha column included).
timeout 120 "$PY" bench/attention.py --seqs 2048,4096,8192,16384 --iters 10 --budget-s 100 \
  --impls ours,ours_seg,cudnn,mha > "$OUT/attention.txt" 2>&1
echo "attention exit $?" >> "$OUT/attention.txt"

# Issue 4: MFU, packed rows (segment ids) and one-document rows through our kernel, against cuDNN.
timeout 150 "$PY" bench/train.py --gpu --layers 8 --steps 5 --remat dots_no_batch \
  --impls pallas,pallas_1doc,cudnn > "$OUT/train_gpu.txt" 2>&1
echo "train exit $?" >> "$OUT/train_gpu.txt"

# Issue 4: the same at 8K under the XLA flags our launchers set (launch/slurm.sbatch), which the
# rows above do not use: what a user's job gets.
LAUNCH_FLAGS=$(sed -n '/^xla_flags=(/,/^)/p' launch/slurm.sbatch | grep -o -- '--xla[^ ]*' | tr '\n' ' ')
XLA_FLAGS="$LAUNCH_FLAGS" timeout 80 "$PY" bench/train.py --gpu --layers 8 --steps 5 --seqs 8192 \
  --remat dots_no_batch --impls pallas,cudnn > "$OUT/train_gpu_flags.txt" 2>&1
echo "train (launcher XLA flags: $LAUNCH_FLAGS) exit $?" >> "$OUT/train_gpu_flags.txt"

# Issue 4: the checkpoint fingerprint's temporaries and time on the GPU (XLA:CPU keeps two uint32
# copies of each array; a GPU should fuse them away). Appended to a file above: 8 files at most return.
{ echo "--- bench/fingerprint.py --layers 2 --time"
  timeout 60 "$PY" bench/fingerprint.py --layers 2 --time 2>&1 | grep -v -E "^W[0-9]|^E[0-9]"
  echo "fingerprint exit ${PIPESTATUS[0]}"; } >> "$OUT/train_gpu_flags.txt"

# The main job on the GPU through our kernel (packed rows, GQA, head_dim 32), when the wheels of
# grain/ml-collections/clu were carried (see bench/gpu_tiny.sh).
if compgen -G ".whl/*.whl" > /dev/null; then
  TINY_TIMEOUT=150 TINY_ARGS="--config.model.attention_impl=pallas" bash bench/gpu_tiny.sh > /dev/null 2>&1
fi

grep -v -E "^W[0-9]|^E[0-9]|^\{" "$OUT"/env.txt "$OUT"/breakdown.txt "$OUT"/train_gpu*.txt | cut -c1-300
tail -n 4 "$OUT"/pytest_gpu.txt
grep -v -E "^W[0-9]|^E[0-9]" "$OUT"/trace_summary.txt | cut -c1-200 | head -n 120
grep -v -E "^W[0-9]|^E[0-9]|^\{\"bench" "$OUT"/attention.txt | cut -c1-300
[ -f "$OUT/tiny_gpu.txt" ] && grep -E "held-out|phase .*: |tiny exit|tiny:" "$OUT/tiny_gpu.txt" | cut -c1-300
exit 0
