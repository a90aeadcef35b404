"""The machine's state in one number: best-of-10 GFLOP/s of a 2048^2 fp32 matmul on N threads.

Shared machines drift; quote this beside a timing so figures from different days can be compared.

    python benchmarks/gemm_peak.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=2048)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a, b = torch.randn(args.n, args.n), torch.randn(args.n, args.n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    print(f"GEMM {2 * args.n ** 3 / best / 1e9:.0f} GFLOP/s ({args.n}^2 fp32, {args.threads} threads)")


if __name__ == "__main__":
    main()
