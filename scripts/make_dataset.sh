#!/usr/bin/env bash
# The team's synthetic training set (DMENet's SYNDOF recipe, paper Sec. 3), in one command:
#   81 DFD indoor RGB-D scenes x 8 cameras, the 3 SYNDOF sample pairs (Middlebury, MPI Sintel,
#   SYNTHIA) x 8, and 1000 procedural scenes (320x320) textured with the sharp photos.
# Output: datasets/syndof (gitignored; never commit it). Re-running resumes an interrupted run.
# Usage: scripts/make_dataset.sh [OUTPUT_DIR]      (WORKERS=N for N processes; default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEFOCUS_SHARED_DATA:-../shared/data}"
OUT="${1:-datasets/syndof}"
exec defocus synth \
  --rgb "$DATA/rgbd/dfd-indoor/allinfocus" --depth "$DATA/rgbd/dfd-indoor/depth" \
  --rgb "$DATA/rgbd/syndof-samples/image" --depth "$DATA/rgbd/syndof-samples/depth" \
  --samples-per-source 8 \
  --procedural 1000 --textures "$DATA/sharp" --size 320x320 \
  --seed 0 --workers "${WORKERS:-1}" \
  -o "$OUT"
