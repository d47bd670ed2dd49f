#!/usr/bin/env bash
# Launch a fault-tolerant aurora job on this node with torchrun (elastic agent, c10d rendezvous):
#   NPROC=8 launch/torchrun.sh train configs/lm/tiny.yaml run.dir=runs/lm
# Run the same command on every node of a multi-node job (see launch/README.md).
#
# Environment (all optional):
#   NPROC          processes on this node (default: the GPU count, else 1)
#   NNODES         node count, or MIN:MAX for an elastic job that goes on with fewer nodes (default 1).
#                  One node (1 or 1:1) runs torchrun --standalone: a rendezvous of its own on a free
#                  port of this host, under a generated id (MASTER_ADDR, MASTER_PORT, RDZV_ID unused)
#   MAX_RESTARTS   times the agent restarts the worker group after a failure (default 3)
#   MASTER_ADDR    several nodes: host of the rendezvous store, the first node (required)
#   MASTER_PORT    several nodes: its port (default 29500)
#   RDZV_ID        several nodes: job id, the same on every node and new for every job (default
#                  $SLURM_JOB_ID; required outside slurm)
#   RDZV_CONF      rendezvous settings, e.g. join_timeout=900,last_call_timeout=30 (torchrun's --rdzv-conf)
#   LOG_DIR        per-rank logs and @record error files, LOG_DIR/<rendezvous id>_<random>/attempt_N/<local rank>/
#                  (one such directory per launch of this script; default: none)
#   PYTHON         interpreter (default: python)
#   NSYS           1: every worker runs under Nsight Systems (launch/nsys.sh, which reads NSYS_DIR,
#                  NSYS_RANKS, NSYS_ARGS), capturing the run's profile.mode=nsys window
#   TORCH_FR_BUFFER_SIZE  collectives each process keeps in torch's flight recorder (default 20000;
#                  0 turns it off). Dumped when an NCCL collective times out
#                  (TORCH_NCCL_DUMP_ON_TIMEOUT, default 1) and by aurora's hang watchdog, to
#                  RUN/comm_traces/rank_<r> unless TORCH_FR_DUMP_TEMP_FILE names another prefix
#
# Exit code: 0 when the job finished; torchrun's 1 when the group failed after its restarts (the
# workers' own codes, aurora/train/stops.py, are in torchrun's failure report); 75 when a SIGTERM
# or SIGUSR1 reached this script (a preemption notice), the code launch/slurm.sbatch requeues
# on. The signal is passed on to the workers, which checkpoint at the next step boundary and
# stop; torchrun allows them 30 s after it forwards the signal before it kills them.
set -uo pipefail

NPROC=${NPROC:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l) || echo 1)}
NNODES=${NNODES:-1}
MAX_RESTARTS=${MAX_RESTARTS:-3}
PYTHON=${PYTHON:-python}
# A fresh store for the workers of every restart. The shared rendezvous store outlives restarts
# and keeps the last attempt's process-group keys; a restarted rank could read a dead peer's
# address from them (gloo "connectFullMesh failed ... Connection refused").
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
# torch's flight recorder (the last collectives of each rank, for finding what a hung job waits on):
# aurora points its dumps under run.dir (aurora/distributed/flight_recorder.py).
export TORCH_FR_BUFFER_SIZE=${TORCH_FR_BUFFER_SIZE:-20000}
export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}

# A job never joins another's rendezvous: on one node a fixed port and id would make a second job
# on this host a client of the first one's store, and part of its rendezvous.
if [[ "$NNODES" == 1 || "$NNODES" == 1:1 ]]; then
  options=(--standalone)
else
  if [[ -z "${MASTER_ADDR:-}" ]]; then
    echo "launch/torchrun.sh: NNODES=$NNODES needs MASTER_ADDR, the host of the first node (the same on every" \
         "node); for a job on this node alone use NNODES=1" >&2
    exit 2
  fi
  RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-}}
  if [[ -z "$RDZV_ID" ]]; then
    echo "launch/torchrun.sh: NNODES=$NNODES needs RDZV_ID, an id for this job that is the same on every node" \
         "and new for every job (e.g. RDZV_ID=lm-\$(date +%s) once, passed to all nodes)" >&2
    exit 2
  fi
  options=(--rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id "$RDZV_ID")
fi
if [[ -n "${LOG_DIR:-}" ]]; then
  options+=(--log-dir "$LOG_DIR" --redirects 3 --tee 3)
fi
if [[ -n "${RDZV_CONF:-}" ]]; then
  options+=(--rdzv-conf "$RDZV_CONF")
fi
worker=(-m aurora)
if [[ "${NSYS:-0}" == 1 ]]; then
  worker=(--no-python "$(cd "$(dirname "$0")" && pwd)/nsys.sh" "$PYTHON" -m aurora)
fi

# --signals-to-handle: torchrun passes these on to its workers rather than die of them (SIGUSR1
# too: slurm's --signal reaches the agent itself, not only this script).
"$PYTHON" -m torch.distributed.run \
  --nnodes "$NNODES" --nproc-per-node "$NPROC" --max-restarts "$MAX_RESTARTS" \
  --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
  "${options[@]}" "${worker[@]}" "$@" &
child=$!

preempted=0
notice() {
  preempted=1
  kill -TERM "$child" 2>/dev/null
}
trap notice TERM USR1

# `wait` returns early when a trapped signal arrives: wait again until torchrun has exited.
while true; do
  wait "$child"
  rc=$?
  kill -0 "$child" 2>/dev/null || break
done
if (( preempted )); then
  echo "launch/torchrun.sh: preemption notice passed on to the workers, which checkpoint at the next step" \
       "boundary and stop (torchrun's exit code was $rc); exit 75: requeue the job to continue" >&2
  exit 75
fi
exit "$rc"
