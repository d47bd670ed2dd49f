#!/usr/bin/env bash
# The whole path on built-in demo data, on 2 CPU processes (or GPUs) under torchrun:
# synthetic corpus -> audio shards -> codec -> token shards -> audio LM -> generated clips.
# AURORA_DEMO_QUICK=1 runs a reduced size (used by the test suite).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${AURORA_DEMO_DIR:-demo}
NPROC=${NPROC:-2}
if [[ "${AURORA_DEMO_QUICK:-0}" == "1" ]]; then
  CLIPS=48; CODEC_STEPS=8; LM_STEPS=8; CKPT=4
else
  CLIPS=256; CODEC_STEPS=400; LM_STEPS=400; CKPT=200
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
TORCHRUN=(torchrun --standalone --nproc-per-node "$NPROC")

# Start afresh, deleting only a directory this script made (it holds the marker file).
MARKER="$OUT/.aurora-demo"
if [[ -e "$OUT" && ! -e "$MARKER" && -n "$(ls -A "$OUT" 2>/dev/null || echo "$OUT")" ]]; then
  echo "tools/demo.sh: $OUT exists and was not made by the demo (no $MARKER); not deleting it: move it" \
       "away or set AURORA_DEMO_DIR to another directory" >&2
  exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
touch "$MARKER"
echo "== 1/5 demo corpus ($CLIPS clips)"
python -m data_prep.synth --out "$OUT/corpus" --num-clips "$CLIPS"
echo "== 2/5 audio shards"
python -m data_prep.make_shards --manifest "$OUT/corpus/metadata.jsonl" --out "$OUT/shards" --samples-per-shard 16
echo "== 3/5 codec ($CODEC_STEPS steps, $NPROC processes)"
"${TORCHRUN[@]}" -m aurora train configs/codec/tiny.yaml run.dir="$OUT/codec" data.shards="$OUT/shards" \
  trainer.max_steps="$CODEC_STEPS" trainer.checkpoint_every="$CKPT"
echo "== 4/5 tokenize"
# --trust-checkpoint: $OUT/codec is the run this script just trained (docs/reliability.md, the trust boundary).
"${TORCHRUN[@]}" -m data_prep.tokenize --shards "$OUT/shards" --codec "$OUT/codec" --trust-checkpoint --out "$OUT/tokens"
echo "== 5/5 audio LM ($LM_STEPS steps, $NPROC processes)"
"${TORCHRUN[@]}" -m aurora train configs/lm/tiny.yaml run.dir="$OUT/lm" data.shards="$OUT/tokens" \
  trainer.max_steps="$LM_STEPS" trainer.checkpoint_every="$CKPT"
echo "== done"
echo "codec run:       $OUT/codec (metrics.jsonl, checkpoints/, samples/)"
echo "token shards:    $OUT/tokens"
echo "LM run:          $OUT/lm (metrics.jsonl, checkpoints/)"
echo "generated clips: $(ls "$OUT"/lm/samples/*.flac | tr '\n' ' ')"
