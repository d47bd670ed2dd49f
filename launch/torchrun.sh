#!/usr/bin/env bash
# Launch an aurora job on this node with torchrun.
#   NPROC=8 launch/torchrun.sh train configs/lm/tiny.yaml run.dir=runs/lm
# Multi-node: set NNODES, NODE_RANK and MASTER_ADDR (the first node) on every node.
set -euo pipefail
NPROC=${NPROC:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l) || echo 1)}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
exec torchrun \
  --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" \
  -m aurora "$@"
