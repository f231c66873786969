"""Calibration's statistics: how many copies a setting may leave, and what counts as a spoiled sample."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

# A setting passes when the copy rate on new seeds is below the target with this confidence (one-
# sided binomial bound on its probe count): a setting that just reaches the target on the probes
# misses it on fresh seeds half the time (digits: 5 of 64 probes allowed, 9.4 % of fresh seeds copied).
CONFIDENCE = 0.8
SPOIL_MARGIN = 1.0  # the natural range is widened by its own width on each side: gross failures only


def upper_rate(copies: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided upper confidence bound of a copy rate seen as ``copies`` of ``n`` (Clopper-Pearson)."""
    if copies >= n:
        return 1.0

    def at_most(p: float) -> float:  # P(Binomial(n, p) <= copies), in logs so large n cannot overflow
        lp, lq = math.log(p), math.log1p(-p)
        return sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
                   for i in range(copies + 1))

    lo, hi = copies / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at_most(mid) > 1 - confidence else (lo, mid)
    return hi


def allowed_copies(unguarded_copies: int, n: int, target: float) -> int:
    """The most copies among ``n`` probes that still show, with ``CONFIDENCE``, a copy rate of at
    most ``target`` × the unguarded one; −1 when not even zero copies would show it."""
    return allowed_at(target * unguarded_copies / n, n)


def allowed_at(goal: float, n: int) -> int:
    """The most copies among ``n`` seeds that still show a copy rate of at most ``goal``; −1 for none."""
    k = -1
    while k + 1 <= n and upper_rate(k + 1, n) <= goal + 1e-12:
        k += 1
    return k


@dataclass
class Reference:
    """Per-sample statistics of natural latents (training latents and the unguarded samples): a
    guided sample outside their widened range is spoiled: washed out (std), blown up (max |x|),
    shifted (mean) or speckled (high-frequency share). So is a *near copy*: a sample whose
    calibrated ℓ2 ratio is below every unguarded sample that did not copy, i.e. a copy pushed just
    past the replica line rather than turned into something the model draws on its own."""
    lo: Tensor
    hi: Tensor
    near: float = 0.0

    @staticmethod
    def stats(x: Tensor) -> Tensor:
        x = x.double()
        flat = x.flatten(1)
        var = flat.var(1).clamp_min(1e-12)
        hf = torch.zeros_like(var)
        if x.dim() == 4 and x.shape[-1] > 1:
            hf = hf + (x[..., 1:] - x[..., :-1]).pow(2).flatten(1).mean(1)
        if x.dim() == 4 and x.shape[-2] > 1:
            hf = hf + (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1)
        return torch.stack([flat.std(1), flat.mean(1), flat.abs().amax(1), hf / var], 1)

    @classmethod
    def of(cls, natural: Tensor, new_ratios: Tensor) -> "Reference":
        s = cls.stats(natural)
        lo, hi = s.amin(0), s.amax(0)
        pad = SPOIL_MARGIN * (hi - lo)
        return cls(lo - pad, hi + pad, float(new_ratios.min()) if new_ratios.numel() else 0.0)

    def spoiled(self, x: Tensor, ratios: Tensor) -> Tensor:
        s = self.stats(x)
        return ((s < self.lo) | (s > self.hi)).any(1) | (ratios < self.near)
