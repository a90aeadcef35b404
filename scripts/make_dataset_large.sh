#!/usr/bin/env bash
# The larger synthetic training set for network B (8,000+ samples, SYNDOF's size), in one command:
#   81 DFD indoor RGB-D scenes and the 54 Middlebury 2005/2006 views (27 scenes) x 16 cameras,
#   the 3 SYNDOF sample pairs x 16, and 5800 procedural scenes (320x320) textured with every
#   folder of sharp photos: 1296 + 864 + 48 + 5800 = 8008 samples.
# Splits by scene: DFD indoor scenes keep the real dfd-real split (their val and test scenes never
# reach training); both views of a Middlebury scene share its split.
# Output: datasets/syndof-large (gitignored; never commit it). Re-running resumes an interrupted run.
# Usage: scripts/make_dataset_large.sh [OUTPUT_DIR]      (WORKERS=N for N processes; default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DEFOCUS_SHARED_DATA:-../shared/data}"
OUT="${1:-datasets/syndof-large}"
exec defocus synth \
  --rgb "$DATA/rgbd/dfd-indoor/allinfocus" --depth "$DATA/rgbd/dfd-indoor/depth" \
  --rgb "$DATA/rgbd/middlebury" --depth "$DATA/rgbd/middlebury" \
  --rgb "$DATA/rgbd/syndof-samples/image" --depth "$DATA/rgbd/syndof-samples/depth" \
  --samples-per-source 16 \
  --procedural 5800 --textures "$DATA/sharp" --size 320x320 \
  --seed 0 --workers "${WORKERS:-1}" \
  -o "$OUT"
