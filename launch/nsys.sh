#!/usr/bin/env bash
# One training process under Nsight Systems, capturing aurora's profile window only: the run's
# profile.mode=nsys calls cudaProfilerStart at profile.start_step and cudaProfilerStop after
# profile.end_step. launch/torchrun.sh runs every worker through this script when NSYS=1, and
# so does launch/slurm.sbatch (the variables pass through sbatch and srun):
#
#   NSYS=1 NPROC=8 launch/torchrun.sh train CONFIG run.dir=RUN profile.mode=nsys profile.start_step=20 profile.end_step=22
#   NSYS=1 sbatch launch/slurm.sbatch train CONFIG run.dir=RUN profile.mode=nsys
#
# One report per process: NSYS_DIR/<job>_node<node>_rank<rank>_attempt<restart>.nsys-rep (job:
# $SLURM_JOB_ID, else torchrun's run id; node and rank as torchrun numbers them; a restarted
# group writes new reports beside the old ones). Summarise one with
#   nsys stats --report nvtx_sum,cuda_gpu_kern_sum REPORT.nsys-rep
#
# Environment (all optional):
#   NSYS_DIR     where the reports go (default: RUN/nsys, from the run.dir= argument; else ./nsys)
#   NSYS_RANKS   comma-separated global ranks run under nsys (default: all); the others run bare.
#                Match profile.ranks: a rank under nsys whose window never opens captures nothing
#   NSYS_ARGS    extra arguments for `nsys profile`, e.g. "--cuda-graph-trace=node"
#   NSYS_BIN     the nsys executable (default: nsys on the PATH)
set -uo pipefail

if (( $# == 0 )); then
  echo "usage: launch/nsys.sh COMMAND [ARGS...]  (a training process; see launch/torchrun.sh NSYS=1)" >&2
  exit 2
fi
rank=${RANK:-${SLURM_PROCID:-0}}
if [[ -n "${NSYS_RANKS:-}" && ",$NSYS_RANKS," != *",$rank,"* ]]; then
  exec "$@"
fi
nsys=${NSYS_BIN:-nsys}
if ! command -v "$nsys" >/dev/null; then
  echo "launch/nsys.sh: $nsys not found: install Nsight Systems (its nsys on the PATH) or set NSYS_BIN;" \
       "or run without NSYS=1 (profile.mode=torch gives a trace without it)" >&2
  exit 2
fi
if [[ -z "${NSYS_DIR:-}" ]]; then
  NSYS_DIR=nsys
  for arg in "$@"; do
    [[ "$arg" == run.dir=* ]] && NSYS_DIR="${arg#run.dir=}/nsys"
  done
fi
mkdir -p "$NSYS_DIR"
job=${SLURM_JOB_ID:-${TORCHELASTIC_RUN_ID:-local}}
name="${job}_node${GROUP_RANK:-${SLURM_NODEID:-0}}_rank${rank}_attempt${TORCHELASTIC_RESTART_COUNT:-0}"
# -s none: no CPU sampling (large, and slow to write); -f true: a rerun of the same name replaces it.
# shellcheck disable=SC2086  # NSYS_ARGS is a list of words
exec "$nsys" profile --capture-range=cudaProfilerApi --capture-range-end=stop -t cuda,nvtx,osrt,cudnn,cublas \
  -s none -f true -o "$NSYS_DIR/$name" ${NSYS_ARGS:-} "$@"
