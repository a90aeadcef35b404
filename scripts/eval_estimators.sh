#!/usr/bin/env bash
# Every estimator on both splits of both labelled sets, by `defocus eval` (the model card's table).
# Usage: scripts/eval_estimators.sh [SPLIT] [MODELS...]   (default: test; dmenet-lite edge fused)
# Needs datasets/dfd-real (`defocus eval prepare-dfd ../shared/data/rgbd/dfd-indoor -o datasets/dfd-real`)
# and datasets/syndof (`scripts/make_dataset.sh`). Reports go to benchmarks/results/eval-MODEL-SET-SPLIT.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SPLIT="${1:-test}"
shift || true
MODELS=("${@:-dmenet-lite edge fused}")
read -r -a MODELS <<< "${MODELS[*]}"
mkdir -p benchmarks/results
for model in "${MODELS[@]}"; do
  for set in dfd-real syndof; do
    defocus eval "datasets/$set" --split "$SPLIT" --model "$model" --device cpu --no-per-image \
      -o "benchmarks/results/eval-$model-$set-$SPLIT.json"
  done
done
