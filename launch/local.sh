#!/usr/bin/env bash
# Runs N processes of one command on this host, joined as one jax.distributed job.
#
#   launch/local.sh N [--gpus-per-process K | --cpu-devices D] [--port P] [--kill-grace S] -- COMMAND [ARGS...]
#
#   launch/local.sh 2 --cpu-devices 1 -- heal-jax train --config configs/tiny.py --workdir runs/local2
#   launch/local.sh 2 --gpus-per-process 4 -- heal-jax train --config configs/llama2_7b.py --workdir /scratch/run \
#       --config.data.sources.corpus.paths='/data/*.jsonl' --config.data.tokenizer=/models/Llama-2-7b-hf \
#       --config.init_from=/models/Llama-2-7b-hf
#
# CPU mode (default): each process gets JAX_PLATFORMS=cpu and D fake devices
#   (XLA_FLAGS+=--xla_force_host_platform_device_count=D, default D=4).
# GPU mode (--gpus-per-process K): process i gets GPUs i*K .. i*K+K-1 of this host (of
#   CUDA_VISIBLE_DEVICES when it is set) through CUDA_VISIBLE_DEVICES, and XLA_CLIENT_MEM_FRACTION=0.90
#   unless it or its old name XLA_PYTHON_CLIENT_MEM_FRACTION is set (the share `heal-jax plan`
#   assumes, plan.memory_fraction).
# Every process gets HEAL_COORDINATOR_ADDRESS=127.0.0.1:PORT (a free port unless --port),
# HEAL_NUM_PROCESSES=N and HEAL_PROCESS_ID=i, which heal_jax/parallel/distributed.py reads; SLURM_*
# variables are removed from the children so that running inside an allocation does not switch them
# to SLURM detection. Output lines are prefixed with "[i] " (stderr stays stderr).
# If a process exits non-zero, the others get SIGTERM, then SIGKILL after S seconds (default 5),
# and this script exits with the first failing status. SIGTERM, SIGINT (Ctrl-C) or SIGHUP to this
# script sends SIGTERM to every process (the trainer saves a checkpoint and exits 0) and waits for
# them; a second signal sends SIGKILL. Otherwise it exits 0 when every process has exited 0.
set -euo pipefail

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

die() {
  echo "local.sh: $*" >&2
  exit 2
}

[[ $# -ge 1 && "$1" != "-h" && "$1" != "--help" ]] || usage
nproc="$1"
shift
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$nproc'"

gpus_per_process=""
cpu_devices=4
cpu_devices_given=""
port=""
kill_grace=5
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus-per-process) [[ $# -ge 2 ]] || usage; gpus_per_process="$2"; shift 2 ;;
    --cpu-devices) [[ $# -ge 2 ]] || usage; cpu_devices="$2"; cpu_devices_given=1; shift 2 ;;
    --port) [[ $# -ge 2 ]] || usage; port="$2"; shift 2 ;;
    --kill-grace) [[ $# -ge 2 ]] || usage; kill_grace="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) die "unknown option '$1' (the command goes after --)" ;;
  esac
done
[[ $# -ge 1 ]] || die "no command after --"
[[ -z "$gpus_per_process" || "$gpus_per_process" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-process must be a positive integer"
[[ "$cpu_devices" =~ ^[1-9][0-9]*$ ]] || die "--cpu-devices must be a positive integer"
[[ -z "$gpus_per_process" || -z "$cpu_devices_given" ]] || die "--cpu-devices applies to CPU mode, not with --gpus-per-process"
[[ "$kill_grace" =~ ^[0-9]+$ ]] || die "--kill-grace must be a whole number of seconds"

if [[ -z "$port" ]]; then
  # A port free now (the coordinator binds it a moment later; --port avoids the small race).
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$port" =~ ^[0-9]+$ ]] && (( port >= 1 && port <= 65535 )) || die "bad port '$port' (1-65535)"

gpu_list=()
if [[ -n "$gpus_per_process" ]]; then
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=',' read -r -a gpu_list <<< "$CUDA_VISIBLE_DEVICES"
  elif command -v nvidia-smi > /dev/null 2>&1; then
    count="$(nvidia-smi -L | grep -c '^GPU ')" || count=0
    for ((g = 0; g < count; g++)); do gpu_list+=("$g"); done
  else
    die "--gpus-per-process: neither CUDA_VISIBLE_DEVICES nor nvidia-smi says which GPUs exist"
  fi
  need=$((nproc * gpus_per_process))
  ((${#gpu_list[@]} >= need)) || die "$nproc x $gpus_per_process GPUs wanted, ${#gpu_list[@]} visible (${gpu_list[*]:-none})"
fi

# Children run in their own sessions (setsid), so a terminal's Ctrl-C reaches only this script,
# which forwards it once, and a kill reaches a child's own subprocesses too.
if command -v setsid > /dev/null 2>&1; then setsid_cmd=(setsid); else setsid_cmd=(); fi
mapfile -t slurm_vars < <(compgen -e | grep '^SLURM_' || true)

prefix() {  # line by line, so nothing waits in a buffer (mawk buffers pipes)
  # A terminal's Ctrl-C or hangup reaches this script's whole process group, these prefixers too:
  # they must outlive it, or the trainers' next line of output is a broken pipe before they can save.
  trap '' INT HUP TERM
  local line
  while IFS= read -r line || [[ -n "$line" ]]; do printf '[%s] %s\n' "$1" "$line"; done
}

pids=()
for ((i = 0; i < nproc; i++)); do
  env_args=(HEAL_COORDINATOR_ADDRESS="127.0.0.1:$port" HEAL_NUM_PROCESSES="$nproc" HEAL_PROCESS_ID="$i")
  if [[ -n "$gpus_per_process" ]]; then
    mine="$(IFS=','; echo "${gpu_list[*]:$((i * gpus_per_process)):$gpus_per_process}")"
    local_ids="$(seq -s, 0 $((gpus_per_process - 1)))"
    env_args+=(CUDA_VISIBLE_DEVICES="$mine" JAX_LOCAL_DEVICE_IDS="$local_ids")
    if [[ -z "${XLA_PYTHON_CLIENT_MEM_FRACTION:-}" ]]; then  # the old name; setting both is jaxlib's error
      env_args+=(XLA_CLIENT_MEM_FRACTION="${XLA_CLIENT_MEM_FRACTION:-0.90}")  # as slurm.sbatch; plan assumes it
    fi
  else
    env_args+=(JAX_PLATFORMS=cpu
               XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$cpu_devices")
  fi
  unset_args=()
  for v in "${slurm_vars[@]}"; do unset_args+=(-u "$v"); done
  "${setsid_cmd[@]}" env "${unset_args[@]}" "${env_args[@]}" "$@" \
      > >(prefix "$i") 2> >(prefix "$i" >&2) &
  pids+=("$!")
done

signal_all() {  # signal_all SIG: to every child still running (its whole session when setsid ran)
  local pid
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2> /dev/null; then
      if ((${#setsid_cmd[@]})); then kill "-$1" -- "-$pid" 2> /dev/null || kill "-$1" "$pid" 2> /dev/null || true
      else kill "-$1" "$pid" 2> /dev/null || true; fi
    fi
  done
}

# Background children of a non-interactive shell ignore SIGINT, so every signal goes on as SIGTERM
# (the trainer's save-and-exit); a second signal sends SIGKILL.
signals_seen=0
forward() {
  signals_seen=$((signals_seen + 1))
  if ((signals_seen == 1)); then
    echo "local.sh: SIG$1: sending SIGTERM to ${#pids[@]} process(es); signal again to kill them" >&2
    signal_all TERM
  else
    echo "local.sh: SIG$1 again: sending SIGKILL" >&2
    signal_all KILL
  fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

status=0
failed_at=""
declare -A done_pids=()
while ((${#done_pids[@]} < nproc)); do
  for i in "${!pids[@]}"; do
    pid="${pids[$i]}"
    [[ -n "${done_pids[$pid]:-}" ]] && continue
    kill -0 "$pid" 2> /dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    done_pids[$pid]=1
    if ((rc != 0)) && [[ -z "$failed_at" ]]; then
      status=$rc
      failed_at=$SECONDS
      echo "local.sh: process $i exited with status $rc; stopping the others" >&2
      signal_all TERM
    fi
  done
  if [[ -n "$failed_at" ]] && ((SECONDS - failed_at >= kill_grace)); then
    signal_all KILL
  fi
  sleep 0.1 || true  # killed by the terminal's signal to the group, it would end the script under set -e
done
wait || true  # the output prefixers (a Ctrl-C now would otherwise end the script with 130 under set -e)
exit "$status"
