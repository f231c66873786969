"""Where a guard's pushes send the copies: one direction for all, or spread out?

For each guard seed and number of heads, trains the mixture benchmark's guard (as
``benchmarks/calibration.py`` does), samples fresh seeds unguarded and with one gate on every step,
and reports: replicas and FD / floor (the benchmark's metrics); the largest eigenvalue of the
samples' covariance against the ideal sampler's (a push every copy shares shows up as one large
eigenvalue); and how alike the pushes are (the norm of the mean push over the mean push norm, over
the samples the guard moved: 1 when every moved sample went the same way).

    python benchmarks/push_spread.py --bench mixture-vp --guard-seeds 0,1,2,3,4,5 --heads 1,3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import machine  # noqa: E402
from benchmarks.calibration import MixtureBench, guide_of, sample_many  # noqa: E402


def top_eigenvalue(x: torch.Tensor) -> float:
    flat = x.flatten(1).double()
    return float(torch.linalg.eigvalsh(torch.cov(flat.T))[-1])


def push_alignment(guided: torch.Tensor, base: torch.Tensor) -> tuple[float, int]:
    """‖mean push‖ / mean ‖push‖ over the samples the guard moved, and how many it moved."""
    d = (guided - base).flatten(1).double()
    moved = d.norm(dim=1) > 1e-6
    if not bool(moved.any()):
        return 0.0, 0
    d = d[moved]
    return float(d.mean(0).norm() / d.norm(dim=1).mean()), int(moved.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", choices=["mixture-vp", "mixture-flow"], default="mixture-vp")
    ap.add_argument("--guard-seeds", default="0,1,2")
    ap.add_argument("--heads", default="1,3", help="numbers of heads to train each guard seed with")
    ap.add_argument("--sampler", default="euler_a")
    ap.add_argument("--alpha", type=float, default=0.4, help="the gate, on every step at the default scale")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CPSAMPLE_THREADS", "2")))
    print(f"machine: {machine.describe()}", flush=True)
    bench = MixtureBench(args.bench.split("-")[1], args.samples, 50)
    sample = bench.sampler(args.sampler)
    base = sample_many(sample, None, args.samples)
    m = bench.metrics(base)
    rows = []
    print(f"ideal sampler: top eigenvalue {top_eigenvalue(bench.reference):.2f}; unguarded: replicas "
          f"{m['replicas']:.1%}, FD {m['fd_ratio']:.3f} x, top eigenvalue {top_eigenvalue(base):.2f}", flush=True)
    print(f"{'guard':>6}{'heads':>6}{'steps':>7}{'replicas':>10}{'FD / floor':>12}{'top eig':>9}{'alike':>7}{'moved':>7}")
    for seed in (int(s) for s in args.guard_seeds.split(",")):
        for heads in (int(h) for h in args.heads.split(",")):
            bench.heads = heads
            t0 = time.time()
            guard = bench.guard(seed)
            x = sample_many(sample, guide_of(guard, {"alpha": args.alpha}), args.samples)
            m = bench.metrics(x)
            alike, moved = push_alignment(x, base)
            row = {"guard_seed": seed, "heads": heads, "steps": guard.info["steps"], "replicas": m["replicas"],
                   "fd_ratio": m["fd_ratio"], "top_eigenvalue": top_eigenvalue(x), "alike": alike, "moved": moved,
                   "seconds": round(time.time() - t0, 1)}
            rows.append(row)
            print(f"{seed:>6}{heads:>6}{row['steps']:>7}{m['replicas']:>10.1%}{m['fd_ratio']:>12.3f}"
                  f"{row['top_eigenvalue']:>9.2f}{alike:>7.3f}{moved:>7}", flush=True)
            if args.json:
                args.json.write_text(json.dumps({"command": "python benchmarks/push_spread.py " + " ".join(sys.argv[1:]),
                                                 "machine": machine.info(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
