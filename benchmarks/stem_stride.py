"""Stem stride 2 vs 4 on SD1.5-sized latents (4×64×64): time to memorise and the gate it leaves.

For each stride, trains a guard on 64 smooth random latents (as in training_cost.py) with 256
other smooth latents as negatives (the role of class images), then reports, per σ, the share of
latents whose p lies outside [α, 1−α] (α 0.01), i.e. where guidance would act: on the training
latents (should be ~1 at small σ), on 64 latents never seen (should be ~0), and on blends
w·train + (1−w)·unseen (a near-copy at w 0.9 should still be caught).

    .venv/bin/python benchmarks/stem_stride.py > benchmarks/results/stem_stride.txt
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_cost import smooth_latents  # noqa: E402

from cpsample_nodes.core import GuardConfig, NoiseSpace, train_guard  # noqa: E402

SIGMAS = (0.03, 0.1, 0.3, 1.0, 2.0, 4.0, 8.0)
ALPHA = 0.01


def gate_table(guard, space: NoiseSpace, sets: dict[str, torch.Tensor]) -> list[str]:
    g = torch.Generator().manual_seed(5)
    rows = []
    for name, x0 in sets.items():
        cells = []
        for s in SIGMAS:
            sig = torch.full((x0.shape[0],), s)
            with torch.no_grad():
                p = guard.probability(space.noise(x0, sig, torch.randn(x0.shape, generator=g)), sig)
            cells.append(f"{float(((p < ALPHA) | (p > 1 - ALPHA)).float().mean()):.2f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    space = NoiseSpace.vp()
    train, unseen, negatives = (smooth_latents(n, 4, 64, seed=s) for n, s in ((64, 0), (64, 1), (256, 2)))
    sets = {"training latents": train, "unseen latents": unseen, "blend 0.9 train": 0.9 * train + 0.1 * unseen,
            "blend 0.7 train": 0.7 * train + 0.3 * unseen, "blend 0.5": 0.5 * train + 0.5 * unseen}
    print(f"# stem stride 2 vs 4, 64 x 4x64x64, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load before {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for stride in (4, 2):
        t0 = time.monotonic()
        guard = train_guard(train, space=space, seed=0, negatives=negatives,
                            config=GuardConfig(in_channels=4, stem_stride=stride, heads=1))  # one head, as measured
        print(f"\n## stride {stride}: {time.monotonic() - t0:.1f} s, {guard.info['steps']} steps, "
              f"memorised {guard.info['memorised']}, train margin {guard.info['train_margin']}")
        print(f"share gated (p outside [{ALPHA}, {1 - ALPHA}]) at sigma:")
        print("| latents | " + " | ".join(str(s) for s in SIGMAS) + " |")
        print("|---" * (len(SIGMAS) + 1) + "|")
        print("\n".join(gate_table(guard, space, sets)), flush=True)


if __name__ == "__main__":
    main()
