#!/usr/bin/env bash
# Every GPU check in one run of at most 590 s (the sum of the step limits), for a GPU machine
# lent for a few minutes.
#
#   tools/gpu_check.sh             on the GPU machine: installs .whl/ (tools/gpu_wheels.sh) first
#   tools/gpu_check.sh --dry-run   the same steps at toy sizes on the CPU, with this checkout's
#                                  environment (CI runs it: tests/e2e/test_gpu_check.py)
#
# The steps come in the order of what most often breaks. Each runs under its own timeout; a
# failed step is reported and the next one runs. Everything goes under $OUT (default
# gpu_check_out/): gpu_check.log (every step's output, in sections) and summary.md (a table for
# docs/performance.md: step, status, seconds, the step's last line). It never runs make or pip
# against a package index.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DRY=0 ONLY=""
while (($#)); do
  case $1 in
    --dry-run) DRY=1 ;;
    --run-step) ONLY=$2; shift ;;  # internal: one step's function, in its own process (for timeout)
    *) echo "usage: tools/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
  esac
  shift
done

if ((DRY)); then
  PY=${PYTHON:-$REPO/.venv/bin/python}
  [[ -x $PY ]] || PY=python3
  export CUDA_VISIBLE_DEVICES=""  # the CPU path, even where a GPU is seen
  LM_STEPS=4; LM_MORE=6; CKPT=2; DET_STEPS=4; CODEC_STEPS=2; ZERO_STEPS=2; COMPILE_STEPS=2
  SMALL_LM=(model.backbone.num_hidden_layers=2 model.backbone.hidden_size=64 model.backbone.intermediate_size=128)
  THROUGHPUT=(--preset tiny --seq 64 --batch 2 --steps 1 --blocks 1 --warmup 1)
  # bf16 convolutions on ATen's CPU kernels are slow (aurora.precision): a smaller GAN
  SMALL_GAN=(discriminator.periods=[2,3] discriminator.fft_sizes=[256,128] loss.mel_n_ffts=[64,256]
    loss.mel_n_mels=[10,40])
  CODEC_BATCH=(data.batch_size=2)  # bf16 on ATen's CPU kernels: 3 s a step for one 0.2 s clip
  CODEC_STEP=(--device cpu --batch 1 --seconds 0.2 --steps 1 --blocks 1 --warmup 1 "${SMALL_GAN[@]}")
  STALL=(--hidden 64 --layers 2 --repeats 1)
  # Inductor's CPU code generation is not what runs on the GPU (triton) and takes most of a minute
  # here; dynamo's graphs and recompiles, which step 5 reports, are the same under aot_eager.
  COMPILE=(engine.compile_backend=aot_eager)
  T=(120 60 240 240 240 240 240 240 120 120)
else
  PY=python3
  LM_STEPS=12; LM_MORE=16; CKPT=4; DET_STEPS=8; CODEC_STEPS=6; ZERO_STEPS=6; COMPILE_STEPS=10
  SMALL_LM=()
  THROUGHPUT=(--preset qwen2-0.5b --seq 2048 --batch 4)
  SMALL_GAN=()
  CODEC_BATCH=()
  CODEC_STEP=()
  STALL=(--repeats 3)
  COMPILE=()
  T=(40 20 60 60 60 60 100 50 50 30)  # seconds per step; 590 in all (2b shares 2's), under the device's 600
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}  # no more than the cores
COMMON=(trainer.progress_bar=false trainer.log_every=1)
LM=(configs/lm/tiny.yaml generation.num_samples=0 "${SMALL_LM[@]}")

# One step: its output into the log, a row into the summary, whose result is the step's last line
# matching RESULT (an extended regex; '' for the last line).
step() {
  local name=$1 limit=$2 result=$3
  shift 3
  local start=$SECONDS section=$WORK/section.log
  echo "== $name (limit ${limit}s)" | tee -a "$LOG"
  if [[ $(type -t "$1") == function ]]; then
    GPU_CHECK_WORK=$WORK timeout --kill-after=10 "$limit" bash "$0" $( ((DRY)) && echo --dry-run) --run-step "$1"
  else
    timeout --kill-after=10 "$limit" "$@"
  fi >"$section" 2>&1
  local rc=$?
  cat "$section" >>"$LOG"
  local status=ok
  if ((rc == 124 || rc == 137)); then status="TIMED OUT (${limit}s)"; elif ((rc != 0)); then status="FAILED (rc $rc)"; fi
  [[ $status == ok ]] || FAILED=$((FAILED + 1))
  local last
  last=$(grep -E "${result:-.}" "$section" | tail -n 1 | cut -c1-200 | tr '|' '/')
  echo "| $name | $status | $((SECONDS - start)) | \`$last\` |" >>"$SUMMARY"
  echo "   $status in $((SECONDS - start)) s: $last"
}

train() { "$PY" -m aurora train "$@"; }

# The last metrics line of a run, the fields that say it trained.
last_metrics() {
  "$PY" - "$1" <<'EOF'
import json, sys
m = json.loads(open(sys.argv[1] + "/metrics.jsonl").read().splitlines()[-1])
keys = ("step", "loss", "discriminator/loss", "grad_norm", "mfu", "tokens_per_s", "step_time_s")
print(" ".join(f"{k}={m[k]:.4g}" if isinstance(m[k], float) else f"{k}={m[k]}" for k in keys if k in m))
EOF
}

step0_environment() {
  if ((!DRY)); then
    ls .whl/*.whl >/dev/null || { echo "no .whl/: build it here with tools/gpu_wheels.sh and carry .whl"; return 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
    nvidia-smi -L || return 1
  fi
  "$PY" - <<'EOF'
import deepspeed, torch
import aurora.cli
from aurora.perf.mfu import peak_flops
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
peak = peak_flops(device, "bf16")
print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, device {name}, "
      f"bf16 peak {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}")
EOF
}

step1_data() {
  "$PY" -m data_prep.synth --out "$WORK/corpus" --num-clips 16 --min-seconds 0.6 --max-seconds 1.2 &&
    "$PY" -m data_prep.make_shards --manifest "$WORK/corpus/metadata.jsonl" --out "$WORK/audio" --samples-per-shard 8 &&
    "$PY" -m data_prep.synth_tokens --out "$WORK/tokens" && echo "audio and token shards in $WORK"
}

step2_lm_fsdp_async_resume() {
  local run=$WORK/lm_fsdp args=("${LM[@]}" run.dir="$WORK/lm_fsdp" data.shards="$WORK/tokens" "${COMMON[@]}"
    engine.name=fsdp engine.precision=bf16 trainer.async_checkpoint=true trainer.checkpoint_every=$CKPT)
  train "${args[@]}" trainer.max_steps=$LM_STEPS || return 1
  train "${args[@]}" trainer.max_steps=$LM_MORE | tee "$WORK/resume.log" || return 1
  grep -q "resumed from" "$WORK/resume.log" || { echo "the second run did not resume"; return 1; }
  last_metrics "$run"
}

# trainer.deterministic=true: DET_STEPS/2 steps, resumed to DET_STEPS, against DET_STEPS straight:
# the steps after the resume bit for bit.
step2b_deterministic_resume() {
  local half=$((DET_STEPS / 2))
  local args=("${LM[@]}" data.shards="$WORK/tokens" "${COMMON[@]}" engine.name=fsdp engine.precision=bf16
    trainer.deterministic=true trainer.checkpoint_every=$half)
  train "${args[@]}" run.dir="$WORK/det_straight" trainer.max_steps=$DET_STEPS || return 1
  train "${args[@]}" run.dir="$WORK/det_resumed" trainer.max_steps=$half || return 1
  train "${args[@]}" run.dir="$WORK/det_resumed" trainer.max_steps=$DET_STEPS || return 1
  "$PY" - "$WORK/det_straight" "$WORK/det_resumed" "$half" <<'EOF'
import json, sys
half = int(sys.argv[3])
straight, resumed = ([json.loads(line) for line in open(run + "/metrics.jsonl")][half:] for run in sys.argv[1:3])
same = len(straight) == len(resumed) == half and all(
    (a["step"], a["loss"], a["grad_norm"]) == (b["step"], b["loss"], b["grad_norm"]) for a, b in zip(straight, resumed))
print(f"steps {half + 1}-{2 * half} after the resume: {'bit-identical' if same else 'DIFFERENT'} "
      f"(last loss {straight[-1]['loss']:.6f} straight, {resumed[-1]['loss']:.6f} resumed)")
sys.exit(0 if same else 1)
EOF
}

step3_codec_gan() {
  local args=(configs/codec/tiny.yaml data.shards="$WORK/audio" data.segment_seconds=0.2 "${COMMON[@]}"
    engine.precision=bf16 trainer.checkpoint_every=1000 "${SMALL_GAN[@]}" "${CODEC_BATCH[@]}")
  train "${args[@]}" run.dir="$WORK/codec_ddp" engine.name=ddp trainer.max_steps=$CODEC_STEPS || return 1
  last_metrics "$WORK/codec_ddp"
  train "${args[@]}" run.dir="$WORK/codec_fsdp" engine.name=fsdp trainer.max_steps=2 || return 1
  last_metrics "$WORK/codec_fsdp"
}

step4_deepspeed_dtypes() {
  local stage results=()
  for stage in 2 3; do
    "$PY" -m tools.linear_dtypes "${LM[@]}" run.dir="$WORK/lm_zero$stage" data.shards="$WORK/tokens" \
      "${COMMON[@]}" engine.name=deepspeed engine.deepspeed.zero_stage=$stage engine.precision=bf16 \
      trainer.max_steps=$ZERO_STEPS trainer.checkpoint_every=1000 | tee "$WORK/zero$stage.log" || return 1
    results+=("ZeRO-$stage: $(grep '^linear_dtypes' "$WORK/zero$stage.log" | cut -d: -f3-) $(last_metrics "$WORK/lm_zero$stage")")
  done
  echo "${results[*]}"
}

step5_compile() {
  TORCH_LOGS=recompiles train "${LM[@]}" run.dir="$WORK/lm_compile" data.shards="$WORK/tokens" \
    "${COMMON[@]}" engine.name=fsdp engine.precision=bf16 engine.compile=true "${COMPILE[@]}" trainer.max_steps=$COMPILE_STEPS \
    trainer.checkpoint_every=1000 2>&1 | tee "$WORK/compile.log" || return 1
  echo "$(last_metrics "$WORK/lm_compile") recompiles=$(grep -c 'Recompiling' "$WORK/compile.log")"
}

# Profiling: with nsys on the PATH (and a GPU), an Nsight capture of steps 2-4 through launch/nsys.sh,
# whose NVTX summary must hold aurora's ranges; else the torch profiler's window (a Kineto trace,
# on the CPU in a dry run) and tools.profile_report's tables from it.
step9_profile() {
  local run=$WORK/lm_profile args=("${LM[@]}" run.dir="$WORK/lm_profile" data.shards="$WORK/tokens" "${COMMON[@]}"
    engine.name=fsdp trainer.max_steps=5 trainer.checkpoint_every=1000 profile.start_step=2 profile.end_step=4)
  if ((!DRY)) && command -v nsys >/dev/null; then
    NSYS_DIR=$WORK/nsys launch/nsys.sh "$PY" -m aurora train "${args[@]}" profile.mode=nsys || return 1
    nsys stats --report nvtx_sum --format csv --output "$WORK/nvtx" "$WORK"/nsys/*.nsys-rep || return 1
    local found
    found=$(grep -ohE 'aurora/(step|data|model/forward|model/backward|model/optimizer)' "$WORK"/nvtx*.csv | sort -u | tr '\n' ' ')
    echo "nsys: aurora ranges in the capture: $found"
    [[ $found == *aurora/step* && $found == *aurora/model/forward* ]]
  else
    ((DRY)) || echo "nsys is absent (not on the PATH): the torch profiler's window instead"
    train "${args[@]}" profile.mode=torch || return 1
    "$PY" -m tools.profile_report "$run" --top 5 || return 1
    grep -q '"aurora/model/forward"' <(gzip -dc "$run"/profile/rank0_steps2-4.json.gz) || return 1
    echo "torch profiler: $(last_metrics "$run"), trace with aurora's ranges"
  fi
}

if ((!DRY)); then export PYTHONPATH=/tmp/site:$REPO; else export PYTHONPATH=$REPO; fi
if [[ -n $ONLY ]]; then
  WORK=$GPU_CHECK_WORK
  "$ONLY"
  exit
fi
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.md
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
: >"$LOG"
FAILED=0
echo "| step | status | s | last line |" >"$SUMMARY"
echo "|---|---|---|---|" >>"$SUMMARY"
step "0 environment" "${T[0]}" '' step0_environment
step "1 data" "${T[1]}" '' step1_data
step "2 LM FSDP bf16 async ckpt + resume" "${T[2]}" '' step2_lm_fsdp_async_resume
step "2b deterministic resume" "${T[2]}" '' step2b_deterministic_resume
step "3 codec GAN bf16 DDP + FSDP" "${T[3]}" '' step3_codec_gan
step "4 DeepSpeed ZeRO-2/3 bf16 dtypes" "${T[4]}" '' step4_deepspeed_dtypes
step "5 LM FSDP bf16 compile" "${T[5]}" '' step5_compile
step "6 lm_throughput" "${T[6]}" '^(aurora |ratio)' "$PY" -m tools.bench.lm_throughput "${THROUGHPUT[@]}" --bf16
step "7 codec_step" "${T[7]}" '^aurora ' "$PY" -m tools.bench.codec_step --no-reference --bf16 "${CODEC_STEP[@]}"
step "8 checkpoint_stall" "${T[8]}" '^stall ratio' "$PY" -m tools.bench.checkpoint_stall "${STALL[@]}"
step "9 profile" "${T[9]}" '' step9_profile
rm -rf "$WORK"
echo
cat "$SUMMARY"
echo "gpu_check: $FAILED step(s) failed; output in $LOG"
exit $((FAILED > 0))
