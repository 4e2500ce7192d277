#!/usr/bin/env bash
# Stage 1 of the audio testbed's training on an accelerator (testbeds/GPU.md): build a large generated speech
# corpus there (espeak-ng on every core, the Whisper tiny.en tower on the GPU), train the projector with CTC over
# the LM's embedding rows, write the learning curve and the projector to $OUT. Needs the folder that
#     python -m guardrail_testbeds.stage1_pack .stage1_carry
# writes, carried into the repository root (ignored by git: echo /.stage1_carry/ >> .git/info/exclude).
# Knobs: STAGE1_CLIPS (60000), STAGE1_STEPS (4000), STAGE1_BATCH (256), STAGE1_WORKERS (16), STAGE1_HELD (300),
# STAGE1_DEVICE (cuda; cpu for a smoke run), STAGE1_WORK (/tmp/stage1), STAGE1_CARRY (.stage1_carry).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${STAGE1_CARRY:-.stage1_carry}
OUT=${OUT:-/tmp/stage1-out}
WORK=${STAGE1_WORK:-/tmp/stage1}
DEVICE=${STAGE1_DEVICE:-cuda}
HELD=${STAGE1_HELD:-300}
CLIPS=${STAGE1_CLIPS:-60000}
STEPS=${STAGE1_STEPS:-4000}
BATCH=${STAGE1_BATCH:-256}
WORKERS=${STAGE1_WORKERS:-16}
mkdir -p "$WORK/corpus" "$OUT"
t0=$(date +%s)

# 1. what the image lacks: espeak-ng (program, libraries, English data), a few wheels, the testbed cache
tar xzf "$CARRY/espeak.tar.gz" -C "$WORK"
export PATH="$WORK/espeak:$PATH" LD_LIBRARY_PATH="$WORK/espeak/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ESPEAK_DATA_PATH="$WORK/espeak"
python3 -c "import soundfile, soxr, pydantic, structlog" 2>/dev/null ||
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$CARRY"/wheels/*.whl
export PYTHONPATH="$PWD:$PWD/testbeds:$WORK/site" PYTHONUNBUFFERED=1
rm -rf "$WORK/cache" && cp -r "$CARRY/cache" "$WORK/cache"
gunzip "$WORK"/cache/*/hf/tokenizer.json.gz
export GUARDRAIL_CACHE="$WORK/cache" GUARDRAIL_FIGSTEP_DIR="$(cd "$CARRY" && pwd)/figstep"  # kept out of the corpus
[ -f "$CARRY/figstep-safe-50-100.safetensors" ] && cp "$CARRY/figstep-safe-50-100.safetensors" "$WORK/corpus/"
espeak-ng --version | tee "$OUT/espeak.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee -a "$OUT/espeak.txt" || true

# 2. the corpus: held-out sentences, then the training clips (shards of 500, fp16 encoder frames)
BUILD=(python3 -m guardrail_testbeds.corpus_build --out "$WORK/corpus" --device "$DEVICE" --batch 256
       --workers "$WORKERS" --threads 8)
"${BUILD[@]}" held --n "$HELD" 2>&1 | tail -n 2
"${BUILD[@]}" train --n "$CLIPS" 2>&1 | tee "$OUT/build.log" | tail -n 3
echo "corpus built in $(( $(date +%s) - t0 )) s"

# 3. stage 1: CTC with cosine logits and a sampled softmax over the packed embedding rows, bf16 autocast
python3 -m guardrail_testbeds.stage1_train --device "$DEVICE" --bf16 --cosine --batch "$BATCH" --steps "$STEPS" --lr 3e-3 \
    --negatives 4096 --eval-every 250 --eval-limit 300 --threads 8 --corpus "$WORK/corpus" \
    --embeddings "$CARRY/embed-int8.safetensors" --work "$WORK/work" \
    --curve "$OUT/stage1_ctc_gpu.json" --export "$OUT/projector.safetensors" 2>&1 | tee "$OUT/train.log"
echo "total $(( $(date +%s) - t0 )) s"
