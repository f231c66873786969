"""Reusing unguarded paths: a gate that stays shut all along a seed's unguarded path leaves that seed
unguarded, so calibration records the guard's p along each path it sees unguarded and reuses the
unguarded sample instead of sampling the seed again (the same samples, fewer model calls)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .noise import as_sigma

Tensor = torch.Tensor

# A seed's unguarded sample is reused for a gate α only where p kept at least this far inside [α, 1−α]
# at every model call of the gate's σ window: batching can move the guard's p by a few float ulps.
REUSE_MARGIN = 1e-4


@dataclass
class UnguardedPath:
    """A seed's unguarded path as the guard saw it: σ and min(p, 1 − p) at every model call (None
    where the guard did not run), and the sample it ends in."""
    sigmas: list[float]
    margins: list[float | None]
    sample: Tensor

    def shut(self, settings: dict[str, Any]) -> bool:
        """Does the gate of ``settings`` stay shut all along this path? Then guiding never changes
        the seed's x0 prediction, and its sample is this one."""
        if settings.get("guard_input", "denoised") != "denoised":
            return False  # the path recorded p on the x0 prediction
        alpha, top = float(settings["alpha"]), settings.get("sigma_max")
        for sigma, margin in zip(self.sigmas, self.margins):
            if top is not None and sigma > top * (1 + 1e-6):
                continue  # outside the σ window the guard does not run
            if margin is None or margin < alpha + REUSE_MARGIN:
                return False
        return True

    def merge(self, other: "UnguardedPath") -> bool:
        """Add what another unguarded run saw of the same path; False when the two disagree on the
        number of model calls (a sampler that is not deterministic per seed)."""
        if len(other.sigmas) != len(self.sigmas):
            return False
        self.margins = [b if a is None else a if b is None else min(a, b)
                        for a, b in zip(self.margins, other.margins)]
        return True


class Trace:
    """The model calls of one sampler call, in order: σ, the guard's p (None where it did not run) and
    which items the guide left unchanged."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[float], list[float] | None, list[bool]]] = []

    def add(self, denoised: Tensor, out: Tensor, x: Tensor, sigma: Tensor | float, p: Tensor | None) -> None:
        b = int(denoised.shape[0])
        same = [True] * b if out is denoised else (out == denoised).flatten(1).all(1).tolist()
        self.calls.append((as_sigma(sigma, b, x).float().tolist(), None if p is None else p.float().tolist(), same))

    def paths(self, chunk: Sequence[int], out: Tensor) -> dict[int, UnguardedPath]:
        """The path of every seed the guide never changed. A host may split the seeds into batches run
        one after another, each for the same number of calls; a trace of any other shape gives none."""
        n, total = len(chunk), sum(len(c[0]) for c in self.calls)
        if n == 0 or not self.calls or total % n:
            return {}
        k, found, start, i = total // n, {}, 0, 0
        while i < len(self.calls):
            group = self.calls[i:i + k]
            b = len(group[0][0])
            if len(group) < k or any(len(c[0]) != b for c in group) or start + b > n:
                return {}
            for q in range(b):
                if all(c[2][q] for c in group):
                    margins = [None if c[1] is None else min(c[1][q], 1.0 - c[1][q]) for c in group]
                    found[chunk[start + q]] = UnguardedPath([c[0][q] for c in group], margins, out[start + q])
            start, i = start + b, i + k
        return found if start == n else {}


class UnguardedPaths:
    """Every seed's unguarded path seen so far. A seed whose runs disagree is never reused."""

    def __init__(self) -> None:
        self.by_seed: dict[int, UnguardedPath] = {}
        self.untrusted: set[int] = set()

    def add(self, found: dict[int, UnguardedPath]) -> None:
        for seed, path in found.items():
            if seed in self.untrusted:
                continue
            if seed not in self.by_seed:
                self.by_seed[seed] = path
            elif not self.by_seed[seed].merge(path):
                del self.by_seed[seed]
                self.untrusted.add(seed)

    def shut(self, seed: int, settings: dict[str, Any]) -> UnguardedPath | None:
        """The seed's path where the gate of ``settings`` stays shut all along it, else None."""
        path = self.by_seed.get(seed)
        return path if path is not None and path.shut(settings) else None
