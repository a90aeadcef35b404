#!/usr/bin/env bash
# Reproduce the shipped `dmenet-lite` weights in one command: data, training, export, evaluation.
#
#   scripts/train_lite.sh [RUN_PREFIX]      (default runs/lite; re-running resumes each stage)
#
# 1. the synthetic set D_S (scripts/make_dataset.sh: 81 DFD indoor scenes x 8 cameras, the 3
#    SYNDOF sample pairs x 8, 1000 procedural scenes textured with the sharp photos);
# 2. the real labelled DFD indoor set (f/2.8 photos, thin-lens sigma from depth, split by scene
#    groups 57/8/16; the synthetic renders of those scenes share that split);
# 3. both merged: stage 1 with the real train photos repeated 8x, stage 2 with them 12x;
# 4. network B alone (no ImageNet VGG19 here: random encoder, L_C dropped), width 0.25, 128 px
#    crops, 2 gloo DDP processes of batch 4 on the CPU, Adam 2e-4:
#    stage 1: BatchNorm with batch statistics (the paper's), STEPS1 steps;
#    stage 2: from stage 1's weights, BatchNorm statistics re-estimated on full images and
#    frozen (--bn frozen), x0.8 every 8 epochs, STEPS2 steps;
# 5. export to weights/dmenet-lite.pt and evaluation on both held-out test splits.
# The shipped weights took the stages as weights/README.md lists them (stage 2 began with a
# 300-step single-process A/B run, batch 8; the stages here merge it into stage 2).
# Environment: DEFOCUS_SHARED_DATA (default ../shared/data), STEPS1 (3400), STEPS2 (7600).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEFOCUS_SHARED_DATA:-../shared/data}"
RUN="${1:-runs/lite}"
COMMON=(--nets B --gpus 0 --cpu-procs 2 --threads 1 --width 0.25 --crop 128 --batch 4 --lr 2e-4
        --ckpt-every 200 --val-max 24 --channels-last)

bash scripts/make_dataset.sh datasets/syndof
[ -f datasets/dfd-real/manifest.jsonl ] || defocus eval prepare-dfd "$DATA/rgbd/dfd-indoor" -o datasets/dfd-real
[ -f datasets/train-mix/manifest.jsonl ] || python scripts/merge_datasets.py -o datasets/train-mix datasets/syndof datasets/dfd-real:8
[ -f datasets/train-mix12/manifest.jsonl ] || python scripts/merge_datasets.py -o datasets/train-mix12 datasets/syndof datasets/dfd-real:12

stage() {  # stage RUN_DIR STEPS ARGS...
  local dir="$1" steps="$2"; shift 2
  if [ -f "$dir/checkpoint.pt" ]; then
    defocus train --resume "$dir" --steps "$steps"
  else
    defocus train "${COMMON[@]}" --steps "$steps" -o "$dir" "$@"
  fi
}
stage "$RUN-1" "${STEPS1:-3400}" --data datasets/train-mix --seed 0
defocus train export "$RUN-1" -o "$RUN-1/weights.pt" --overwrite
stage "$RUN-2" "${STEPS2:-7600}" --data datasets/train-mix12 --seed 3 --bn frozen --decay-every 8 \
  --val-every 1000 --init "$RUN-1/weights.pt"

defocus train export "$RUN-2" -o weights/dmenet-lite.pt --overwrite
mkdir -p "$RUN-2/eval"
defocus eval datasets/syndof --split test --weights weights/dmenet-lite.pt --no-per-image -o "$RUN-2/eval/syndof-test.json"
defocus eval datasets/dfd-real --split test --weights weights/dmenet-lite.pt --no-per-image --deblur -o "$RUN-2/eval/dfd-real-test.json"
