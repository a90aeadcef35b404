#!/usr/bin/env bash
# Reproduce the shipped `dmenet-lite` weights in one command: data, training, export, evaluation.
#
#   scripts/train_lite.sh [RUN_DIR]        (default runs/lite-b1; re-running resumes the run)
#
# 1. the synthetic set D_S (scripts/make_dataset.sh: 81 DFD indoor scenes x 8 cameras, the 3
#    SYNDOF sample pairs x 8, 1000 procedural scenes textured with the sharp photos);
# 2. the real labelled DFD indoor set (f/2.8 photos, thin-lens sigma from depth, split by scene
#    groups 57/8/16; the synthetic renders of those scenes share that split);
# 3. both merged, the real train photos repeated 8x so they weigh about a quarter of an epoch;
# 4. network B alone (no ImageNet VGG19 here: random encoder, L_C dropped), width 0.25, 128 px
#    crops, 2 gloo DDP processes of batch 4 on the CPU, Adam 2e-4 (x0.8 every 20 epochs);
# 5. export to weights/dmenet-lite.pt and evaluation on both held-out test splits.
# Environment: DEFOCUS_SHARED_DATA (default ../shared/data), STEPS (default 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEFOCUS_SHARED_DATA:-../shared/data}"
RUN="${1:-runs/lite-b1}"

bash scripts/make_dataset.sh datasets/syndof
[ -f datasets/dfd-real/manifest.jsonl ] || defocus eval prepare-dfd "$DATA/rgbd/dfd-indoor" -o datasets/dfd-real
python scripts/merge_datasets.py -o datasets/train-mix datasets/syndof datasets/dfd-real:8

if [ -f "$RUN/checkpoint.pt" ]; then
  defocus train --resume "$RUN" --steps "${STEPS:-20000}"
else
  defocus train --data datasets/train-mix --nets B --gpus 0 --cpu-procs 2 --threads 1 \
    --width 0.25 --crop 128 --batch 4 --lr 2e-4 --steps "${STEPS:-20000}" --ckpt-every 200 \
    --val-max 24 --seed 0 --channels-last -o "$RUN"
fi

defocus train export "$RUN" -o weights/dmenet-lite.pt --overwrite
mkdir -p "$RUN/eval"
defocus eval datasets/syndof --split test --weights weights/dmenet-lite.pt --no-per-image -o "$RUN/eval/syndof-test.json"
defocus eval datasets/dfd-real --split test --weights weights/dmenet-lite.pt --no-per-image --deblur -o "$RUN/eval/dfd-real-test.json"
