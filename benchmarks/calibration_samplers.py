"""Seeded samplers of the closed-form mixture in the form ``calibrate`` takes: ``sample(guide, seeds)``.

Each seed draws its own start noise and ancestral noise, so a seed's sample does not depend on
which other seeds share the batch (calibration samples seeds in chunks). They take calibration's replay
of a path's unguarded start (``replays``; cpsample_nodes/core/calibration_probes.Replay), as ComfyUI's does. vp: x = x0 + σε, as
benchmarks/mixture.py; flow: x = (1−σ)x0 + σε with ComfyUI's Euler / Euler-ancestral-RF steps.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from benchmarks.mixture import SHAPE, Mixture, karras_sigmas
from cpsample_nodes.core import NoiseSpace

GuideFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SAMPLERS = ("euler", "euler_a")


def schedule(space: NoiseSpace, steps: int) -> list[float]:
    """Karras schedule in vp σ; for flow the same noise-to-signal ratios, σ_f = σ/(1+σ)."""
    vp = karras_sigmas(steps, 0.0292, 14.6146)
    if space.kind == "vp":
        return vp
    return [s / (1.0 + s) for s in vp]


def seed_noise(seeds: Sequence[int], steps: int, shape: tuple = SHAPE) -> torch.Tensor:
    """[steps + 1, B, *shape]: the start noise and one ancestral draw per step, per seed."""
    return torch.stack([torch.randn(steps + 1, *shape, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds], 1)


def denoiser(mix: Mixture, space: NoiseSpace) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """x0 prediction of the mixture in the given space (flow: rescale to the vp form)."""
    if space.kind == "vp":
        return lambda x, s: mix.denoise(x.flatten(1), s).view_as(x)
    return lambda x, s: mix.denoise((x / (1 - s)).flatten(1), s / (1 - s)).view_as(x)


def mixture_sampler(mix: Mixture, space: NoiseSpace, steps: int, sampler: str, shape: tuple = SHAPE):
    """``sample(guide, seeds) -> [len(seeds), *shape]`` for ``calibrate`` and the evaluation."""
    sigmas = schedule(space, steps)
    s0 = sigmas[0]
    start = s0 if space.kind == "vp" else math.sqrt(s0**2 + (1 - s0) ** 2)
    return seeded_sampler(denoiser(mix, space), space.kind, sigmas, shape, sampler, start)


def seeded_sampler(den_fn: Callable[[torch.Tensor, float], torch.Tensor], kind: str, sigmas: Sequence[float],
                   shape: tuple, sampler: str, start: float):
    """Euler or Euler ancestral on ``sigmas`` (ending at 0) for a denoiser ``den_fn(x, σ)``, with each
    seed's own noise; the start latent is ``start`` × the seed's first draw."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    sigmas = [float(s) for s in sigmas]
    steps = len(sigmas) - 1

    def sample(guide: GuideFn | None, seeds: Sequence[int]) -> torch.Tensor:
        noise = seed_noise(seeds, steps, shape)
        x = noise[0] * start
        replay = getattr(guide, "replay", None)  # calibration's recorded start of these paths
        if replay is not None:
            replay.begin(seeds)
        for i in range(steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            den = replay.next() if replay is not None else None
            if den is None:
                den = den_fn(x, s)
            if guide is not None:
                den = guide(den, x, torch.full((x.shape[0],), s))
            if sampler == "euler" or s_next == 0:
                x = x + (x - den) / s * (s_next - s)
            elif kind == "vp":  # Euler ancestral (η = 1)
                s_up = min(s_next, math.sqrt(max(s_next**2 * (s**2 - s_next**2) / s**2, 0.0)))
                s_down = math.sqrt(max(s_next**2 - s_up**2, 0.0))
                x = x + (x - den) / s * (s_down - s) + noise[i + 1] * s_up
            else:  # ComfyUI's sample_euler_ancestral_RF, η = 1
                s_down = s_next * (s_next / s)
                a_next, a_down = 1 - s_next, 1 - s_down
                renoise = math.sqrt(max(s_next**2 - s_down**2 * a_next**2 / a_down**2, 0.0))
                r = s_down / s
                x = r * x + (1 - r) * den
                x = (a_next / a_down) * x + noise[i + 1] * renoise
        return x

    sample.replays = True  # type: ignore[attr-defined]
    return sample
