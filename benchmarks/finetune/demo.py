"""Reduced-size fine-tune demo (a few minutes on a CPU from a fresh clone; seconds once cached).

    python -m benchmarks.finetune.demo

Trains a small digits diffusion model, fine-tunes it on 16 images until it copies them, trains the
CPSample guard on those 16 images, samples with and without the guard from the same seeds, prints the
metrics table and writes demo/out/compare.png (fine-tune images | unguarded samples beside their nearest
fine-tune image | guarded samples beside theirs; red frames mark replicas). Weights are cached in
benchmarks/finetune/cache/. Runs on two CPU threads where the machine has them (CPSAMPLE_THREADS sets
another count).
"""
from __future__ import annotations

import os
import sys

from .run import main

# Two threads: three quarters of the time of one on a 2-core CPU, and the very guard (and table) that
# docs/finetune.md records for two threads, on both machines measured. The guard runs to its step cap,
# and a capped guard differs with the thread count: a count taken from the machine would print other
# numbers on every core count.
DEMO_THREADS = 2


def demo_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(DEMO_THREADS, cores))


if __name__ == "__main__":
    os.environ.setdefault("CPSAMPLE_THREADS", str(demo_threads()))
    main(["--preset", "demo", *sys.argv[1:]])
