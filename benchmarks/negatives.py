"""What the guard's training negatives change: where it is confident, and what the defaults do.

For each guard seed and each kind of negatives, trains the mixture guard from scratch (vp space, as
benchmarks/calibration.py), samples 64 probe seeds without the guard (Euler ancestral, 50 steps),
and counts, per σ band of the trajectory, on how many samples that copied and that did not copy the
guard reads the x0 prediction confidently (p outside [0.01, 0.99]): confidence on
samples that never copy is what makes the guard push them. Then 1,000 fresh seeds with the guide
defaults: replicas and FD / the floor.

    CPSAMPLE_THREADS=1 .venv/bin/python benchmarks/negatives.py > benchmarks/results/negatives.txt
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.calibration import PROBE_SEEDS, MixtureBench, guide_of, sample_many  # noqa: E402
from cpsample_nodes.core import train_guard  # noqa: E402
from cpsample_nodes.core.metrics import REPLICA_L2_RATIO, calibrated_l2_ratio  # noqa: E402

BANDS = ((5.0, 15.0), (2.0, 5.0), (0.0, 2.0))  # σ of the trajectory: early, middle, late
SURE = 0.01  # confident: p outside [SURE, 1 − SURE]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guard-seeds", default="0,1,2")
    ap.add_argument("--negatives", default="gaussian,gaussian+blends")
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CPSAMPLE_THREADS", "2")))
    bench = MixtureBench("vp", args.samples, 50)
    sample = bench.sampler("euler_a")
    probes = list(range(PROBE_SEEDS, PROBE_SEEDS + 64))
    print(f"confident: p outside [{SURE}, {1 - SURE}] on the x0 prediction; per σ band: "
          "share of steps x samples confident, for the probes that copied | that did not")
    for kind in args.negatives.split(","):
        for gs in (int(s) for s in args.guard_seeds.split(",")):
            t0 = time.time()
            guard = train_guard(bench.train, bench.space, seed=gs, negatives=kind, heads=bench.heads)
            seen: list[tuple[float, torch.Tensor]] = []

            def watch(denoised, x, sigma):
                p = guard.probability(denoised, guard.space.sigma_min)
                seen.append((float(sigma[0]), (p < SURE) | (p > 1 - SURE)))
                return denoised

            final = sample(watch, probes)
            copied = calibrated_l2_ratio(final, bench.train, 5) < REPLICA_L2_RATIO
            bands = []
            for lo, hi in BANDS:
                conf = torch.stack([c for s, c in seen if lo < s <= hi]).float()  # [steps, probes]
                bands.append(f"σ {lo:g}-{hi:g}: {conf[:, copied].mean():.0%} | {conf[:, ~copied].mean():.0%}")
            m = bench.metrics(sample_many(sample, guide_of(guard, {}), args.samples))
            print(f"{kind:16} guard seed {gs}: {guard.info['steps']} steps, {time.time() - t0:.0f} s; "
                  f"{int(copied.sum())}/64 probes copy; confident " + "; ".join(bands)
                  + f"; defaults: replicas {m['replicas']:.1%}, FD {m['fd_ratio']:.2f} x floor", flush=True)


if __name__ == "__main__":
    main()
