"""Reduced-size fine-tune demo (a few minutes on a CPU from a fresh clone; seconds once cached).

    python -m benchmarks.finetune.demo

Trains a small digits diffusion model, fine-tunes it on 16 images until it copies them, trains the
CPSample guard on those 16 images, samples with and without the guard from the same seeds, prints the
metrics table and writes demo/out/compare.png (fine-tune images | unguarded samples beside their nearest
fine-tune image | guarded samples beside theirs; red frames mark replicas). Weights are cached in
benchmarks/finetune/cache/. Set CPSAMPLE_THREADS to use more than one CPU thread.
"""
from __future__ import annotations

import sys

from .run import main

if __name__ == "__main__":
    main(["--preset", "demo", *sys.argv[1:]])
