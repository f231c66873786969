"""Why Jain et al.'s dynamic transition never fired here: the CFG gap along the sampling path.

    CPSAMPLE_THREADS=1 .cache/comfyui/venv/bin/python -m benchmarks.lora.gap > benchmarks/results/lora/gap_euler_cfg5.txt

Prints, per step of Euler at CFG 5 on the trigger (16 seeds, 20000-20015, outside the evaluation set),
the mean over seeds of ‖ε_c − ε_∅‖ (RMS, what fixes.DynamicTransition watches) and of the same gap in
x0 space, ‖D_c − D_∅‖ = σ·‖ε_c − ε_∅‖.
"""
from __future__ import annotations

import os

import torch

from . import pipeline as P
from .comfy_sampling import make_sampler
from .model import NULL, TRIGGER


class _Record:
    """A CFG policy that keeps the user's scale and records the gaps."""

    def __init__(self, scale: float):
        self.scale, self.rows = scale, []

    def needs_uncond(self, sigma: torch.Tensor) -> bool:
        return True

    def __call__(self, c, u, x, sigma, state):
        s = sigma.reshape(-1, 1, 1, 1)
        eps_gap = ((u - c) / s).flatten(1).pow(2).mean(1).sqrt().mean()
        x0_gap = (u - c).flatten(1).pow(2).mean(1).sqrt().mean()
        self.rows.append((float(sigma.reshape(-1)[0]), float(eps_gap), float(x0_gap)))
        return torch.full((x.shape[0],), self.scale)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("CPSAMPLE_THREADS", "1")))
    cfg = P.FULL
    sp = P.get_split(cfg)
    model = P.get_lora(cfg, sp)
    rec = _Record(5.0)
    make_sampler(model, TRIGGER, NULL, "euler", 5.0, cfg.sample_steps, policy=rec)(None, list(range(20000, 20016)))
    print("Euler, CFG 5, trigger prompt, 16 seeds (20000-20015): mean gap per step")
    print(f"{'sigma':>8} {'eps gap':>9} {'x0 gap':>8}")
    for s, ge, gx in rec.rows:
        print(f"{s:8.3f} {ge:9.3f} {gx:8.3f}")


if __name__ == "__main__":
    main()
