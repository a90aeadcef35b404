"""The table of a sub-network ablation (scripts/train_ablation.sh): per arm, training throughput
from its metrics.jsonl and the errors of its exported weights on both val splits.

    python benchmarks/ablation_table.py [RUN_ROOT] [--baseline DIR]

RUN_ROOT (default runs/ablation) holds one folder per arm (B, BD, ...) with metrics.jsonl and
eval/{syndof-large-val,dfd-real-val}.json; --baseline DIR holds the same two eval files for the
weights every arm started from (row "start"). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

SETS = ("syndof-large-val", "dfd-real-val")


def throughput(metrics: Path) -> tuple[int, float]:
    """(last step, median samples/s over the step records)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in rows if "kind" not in r and "samples_per_s" in r]
    return (steps[-1]["step"] if steps else 0,
            statistics.median(r["samples_per_s"] for r in steps) if steps else float("nan"))


def errors(eval_dir: Path) -> list[str]:
    cells = []
    for name in SETS:
        path = eval_dir / f"{name}.json"
        if not path.exists():
            cells += ["", ""]
            continue
        m = json.loads(path.read_text())["mean"]
        first = f"{m['mae']:.4f}" if name.startswith("syndof") else f"{m['mae_px']:.3f}"
        cells += [first, f"{m['spearman']:.3f}"]
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--baseline", type=Path, default=None)
    args = ap.parse_args()
    print("| arm | steps | samples/s (median) | synthetic val MAE/7 | synthetic val Spearman "
          "| dfd-real val MAE px | dfd-real val Spearman |")
    print("|---|---|---|---|---|---|---|")
    if args.baseline is not None:
        print("| " + " | ".join(["start", "0", ""] + errors(args.baseline)) + " |")
    for arm in sorted(p for p in args.root.iterdir() if (p / "metrics.jsonl").exists()):
        step, rate = throughput(arm / "metrics.jsonl")
        print("| " + " | ".join([arm.name, str(step), f"{rate:.2f}"] + errors(arm / "eval")) + " |")


if __name__ == "__main__":
    main()
