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


def throughput(metrics: Path) -> tuple[int, str]:
    """(last step, "median (best)" samples/s over the step records: the best record is the
    arm's rate with the machine to itself, the median includes whatever else ran)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "kind" not in r and "samples_per_s" in r]
    if not rates:
        return 0, ""
    last = [r for r in rows if "kind" not in r][-1]["step"]
    return last, f"{statistics.median(rates):.2f} ({max(rates):.2f})"


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
    print("| arm | steps | samples/s median (best) | synthetic val MAE/7 | synthetic val Spearman "
          "| dfd-real val MAE px | dfd-real val Spearman |")
    print("|---|---|---|---|---|---|---|")
    if args.baseline is not None:
        print("| " + " | ".join(["start", "0", ""] + errors(args.baseline)) + " |")
    arms = [p for p in args.root.iterdir() if (p / "metrics.jsonl").exists()]
    for arm in sorted(arms, key=lambda p: (len(p.name), p.name)):  # B, BD, BDS, BDCS
        step, rate = throughput(arm / "metrics.jsonl")
        print("| " + " | ".join([arm.name, str(step), rate] + errors(arm / "eval")) + " |")


if __name__ == "__main__":
    main()
