#!/usr/bin/env bash
# The edge networks of paper 002 (B-NET, E-NET) and their shipped weights, in one command:
# patches from the shared data and the synthetic set, B-NET (blur stage), E-NET on B-NET's frozen
# f1-NET (edge stage), export, and the validation search of the dense step's settings.
# Needs datasets/syndof (scripts/make_dataset.sh) and datasets/dfd-real (defocus eval prepare-dfd).
# Outputs: datasets/edge-patches, runs/edge-blur, runs/edge-e (gitignored), weights/edge.pt.
# A later run continues a stage with: defocus train edge --resume runs/edge-blur --steps N
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEFOCUS_SHARED_DATA:-../shared/data}"
defocus train edge-data --sharp "$DATA/sharp" --renders datasets/syndof \
  --middlebury "$DATA/rgbd/middlebury" --workers "${WORKERS:-2}" -o datasets/edge-patches
defocus train edge --data datasets/edge-patches --stage blur --steps 4000 --threads 2 -o runs/edge-blur
defocus train edge --data datasets/edge-patches --stage edge --init runs/edge-blur --steps 2000 \
  --val-every 500 --threads 2 -o runs/edge-e
defocus train edge-export runs/edge-e -o weights/edge.pt --overwrite
python benchmarks/select_edge_fusion.py --edge weights/edge.pt --limit 60
