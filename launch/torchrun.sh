#!/usr/bin/env bash
# Launch a fault-tolerant aurora job on this node with torchrun (elastic agent, c10d rendezvous):
#   NPROC=8 launch/torchrun.sh train configs/lm/tiny.yaml run.dir=runs/lm
# Run the same command on every node of a multi-node job (see launch/README.md).
#
# Environment (all optional):
#   NPROC          processes on this node (default: the GPU count, else 1)
#   NNODES         node count, or MIN:MAX for an elastic job that goes on with fewer nodes (default 1)
#   MAX_RESTARTS   times the agent restarts the worker group after a failure (default 3)
#   MASTER_ADDR    host of the rendezvous store: the first node (default 127.0.0.1)
#   MASTER_PORT    its port (default 29500)
#   RDZV_ID        job id shared by all nodes (default $SLURM_JOB_ID, else "aurora")
#   RDZV_CONF      rendezvous settings, e.g. join_timeout=900,last_call_timeout=30 (torchrun's --rdzv-conf)
#   LOG_DIR        per-rank logs and @record error files, LOG_DIR/<RDZV_ID>_<random>/attempt_N/<local rank>/
#                  (one such directory per launch of this script; default: none)
#   PYTHON         interpreter (default: python)
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
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-aurora}}
PYTHON=${PYTHON:-python}
# A fresh store for the workers of every restart. The shared rendezvous store outlives restarts
# and keeps the last attempt's process-group keys; a restarted rank could read a dead peer's
# address from them (gloo "connectFullMesh failed ... Connection refused").
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

options=()
if [[ -n "${LOG_DIR:-}" ]]; then
  options+=(--log-dir "$LOG_DIR" --redirects 3 --tee 3)
fi
if [[ -n "${RDZV_CONF:-}" ]]; then
  options+=(--rdzv-conf "$RDZV_CONF")
fi

# --signals-to-handle: torchrun passes these on to its workers rather than die of them (SIGUSR1
# too: slurm's --signal reaches the agent itself, not only this script).
"$PYTHON" -m torch.distributed.run \
  --nnodes "$NNODES" --nproc-per-node "$NPROC" --max-restarts "$MAX_RESTARTS" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RDZV_ID" \
  --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
  "${options[@]}" -m aurora "$@" &
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
