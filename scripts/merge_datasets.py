"""Merge dataset folders (the synth format) into one, by symbolic links, for `defocus train --data`.

    python scripts/merge_datasets.py -o datasets/train-mix datasets/syndof datasets/dfd-real:8

Each input is FOLDER or FOLDER:K; K repeats that folder's entries K times in the manifest (the
training sampler walks the manifest, so K weights a small set, e.g. real labelled photos, against
a large synthetic one). Names are prefixed with the folder's name so they cannot collide; splits
are kept. The merged folder holds links (image/, sigma/, mask/) and a manifest.jsonl, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from defocus_cli.io.datasets import read_manifest, write_manifest


def merge(inputs: list[tuple[Path, int]], out: Path) -> dict[str, int]:
    for sub in ("image", "sigma", "mask"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    merged: list[dict] = []
    counts: dict[str, int] = {}
    for root, repeat in inputs:
        for e in read_manifest(root):
            name = f"{root.name}--{e['name']}"
            for sub, ext in (("image", ".png"), ("sigma", ".npy"), ("mask", ".png")):
                src = root / sub / f"{e['name']}{ext}"
                link = out / sub / f"{name}{ext}"
                if src.exists() and not link.is_symlink():
                    link.symlink_to(os.path.relpath(src.resolve(), link.parent.resolve()))
            rec = dict(e, name=name, merged_from=str(root))
            merged += [rec] * (repeat if e["split"] == "train" else 1)
            counts[f"{root.name}:{e['split']}"] = counts.get(f"{root.name}:{e['split']}", 0) + (
                repeat if e["split"] == "train" else 1)
    write_manifest(out, merged)
    (out / "dataset.json").write_text(json.dumps(
        {"generator": "scripts/merge_datasets.py", "inputs": [f"{r}:{k}" for r, k in inputs],
         "manifest_entries": counts}, indent=2) + "\n")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="FOLDER or FOLDER:K")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    inputs = []
    for item in args.inputs:
        folder, _, k = item.partition(":")
        inputs.append((Path(folder), int(k or 1)))
    counts = merge(inputs, args.output)
    for key, n in sorted(counts.items()):
        print(f"{key}: {n} manifest entries")


if __name__ == "__main__":
    main()
