"""Reusing paths: a gate that stays shut all along a seed's unguarded path leaves that seed unguarded, and a
gate α that opens exactly where a gate α' opened, with the same heads, along the path α' took, steps exactly
as α' did. Calibration records the guard's p along each path it samples and reuses the sample instead of
sampling the seed again (the same samples, fewer model calls). Where the gate stays shut only for a
path's first calls, a sampler that replays (calibration_probes.Replay) takes those calls' x0 predictions
from the unguarded path instead of running the model."""
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
    denoised: list[Tensor] | None = None  # the x0 prediction at every call (kept where the sampler replays)

    def shut_calls(self, settings: dict[str, Any]) -> int:
        """How many calls from the start the gate of ``settings`` stays shut along this path: up to there
        the guided path is this one."""
        if settings.get("guard_input", "denoised") != "denoised":
            return 0  # the path recorded p on the x0 prediction
        alpha, top = float(settings["alpha"]), settings.get("sigma_max")
        for i, (sigma, margin) in enumerate(zip(self.sigmas, self.margins)):
            if top is not None and sigma > top * (1 + 1e-6):
                continue  # outside the σ window the guard does not run
            if margin is None or margin < alpha + REUSE_MARGIN:
                return i
        return len(self.sigmas)

    def shut(self, settings: dict[str, Any]) -> bool:
        """Does the gate of ``settings`` stay shut all along this path? Then guiding never changes
        the seed's x0 prediction, and its sample is this one."""
        return (settings.get("guard_input", "denoised") == "denoised"
                and self.shut_calls(settings) == len(self.sigmas))

    def merge(self, other: "UnguardedPath") -> bool:
        """Add what another unguarded run saw of the same path; False when the two disagree on the
        number of model calls (a sampler that is not deterministic per seed)."""
        if len(other.sigmas) != len(self.sigmas):
            return False
        self.margins = [b if a is None else a if b is None else min(a, b)
                        for a, b in zip(self.margins, other.margins)]
        return True


# What must match for one setting's path to be another's: everything of the guide but the gate α.
STEP_KEYS = ("scale", "max_step", "sigma_max", "objective", "guard_input")


def step_key(settings: dict[str, Any]) -> tuple:
    return tuple(settings.get(k) for k in STEP_KEYS)


@dataclass
class GuidedPath:
    """A seed's path under one setting: σ and each head's p at every model call (None where the guard did
    not run), that setting's gate α and step key, and the sample it ends in."""
    sigmas: list[float]
    heads: list[list[float] | None]
    alpha: float
    key: tuple
    sample: Tensor

    def same_steps(self, settings: dict[str, Any]) -> bool:
        """Would ``settings`` have taken this path? Yes when it differs from the recorded setting in α alone
        and, at every call inside the σ window, opens the gate of exactly the heads the recorded α opened,
        each head's p at least REUSE_MARGIN from the new α's bounds: the same pushes, so the same next x."""
        if step_key(settings) != self.key:
            return False
        alpha, top = float(settings["alpha"]), settings.get("sigma_max")
        for sigma, heads in zip(self.sigmas, self.heads):
            if top is not None and sigma > top * (1 + 1e-6):
                continue  # outside the σ window neither setting guides
            if heads is None:
                return False
            for q in heads:
                if not (abs(q - alpha) >= REUSE_MARGIN and abs(q - (1 - alpha)) >= REUSE_MARGIN):
                    return False
                if (q < alpha or q > 1 - alpha) != (q < self.alpha or q > 1 - self.alpha):
                    return False
        return True


class Trace:
    """The model calls of one sampler call, in order: σ, each head's p (None where the guard did not run)
    and which items the guide left unchanged."""

    def __init__(self, keep_denoised: bool = False) -> None:
        self.calls: list[tuple[list[float], list[list[float]] | None, list[bool]]] = []
        self.keep = keep_denoised
        self.denoised: list[Tensor] = []  # each call's x0 predictions [B, ...], where kept

    def add(self, denoised: Tensor, out: Tensor, x: Tensor, sigma: Tensor | float, p: Tensor | None) -> None:
        """``p``: the guard's p per item [B] or per item and head [B, heads]."""
        b = int(denoised.shape[0])
        same = [True] * b if out is denoised else (out == denoised).flatten(1).all(1).tolist()
        heads = None if p is None else p.float().reshape(b, -1).tolist()
        self.calls.append((as_sigma(sigma, b, x).float().tolist(), heads, same))
        if self.keep:
            self.denoised.append(denoised.detach().float().cpu().clone())

    def _groups(self, chunk: Sequence[int]):
        """(index in chunk, its calls) per seed. A host may split the seeds into batches run one after
        another, each for the same number of calls; a trace of any other shape gives none."""
        n, total = len(chunk), sum(len(c[0]) for c in self.calls)
        if n == 0 or not self.calls or total % n:
            return []
        k, found, start, i = total // n, [], 0, 0
        while i < len(self.calls):
            group = self.calls[i:i + k]
            dens = self.denoised[i:i + k] if self.keep else [None] * len(group)
            b = len(group[0][0])
            if len(group) < k or any(len(c[0]) != b for c in group) or start + b > n:
                return []
            found += [(start + q, [(c[0][q], None if c[1] is None else c[1][q], c[2][q],
                                    None if d is None else d[q]) for c, d in zip(group, dens)])
                      for q in range(b)]
            start, i = start + b, i + k
        return found if start == n else []

    def paths(self, chunk: Sequence[int], out: Tensor) -> dict[int, UnguardedPath]:
        """The path of every seed the guide never changed."""
        return {chunk[j]: UnguardedPath([c[0] for c in calls],
                                        [None if c[1] is None else min(min(q, 1.0 - q) for q in c[1]) for c in calls],
                                        out[j], [c[3] for c in calls] if self.keep else None)
                for j, calls in self._groups(chunk) if all(c[2] for c in calls)}

    def guided(self, chunk: Sequence[int], out: Tensor, settings: dict[str, Any]) -> dict[int, GuidedPath]:
        """The path of every seed under ``settings``."""
        alpha, key = float(settings["alpha"]), step_key(settings)
        return {chunk[j]: GuidedPath([c[0] for c in calls], [c[1] for c in calls], alpha, key, out[j])
                for j, calls in self._groups(chunk)}


class KnownPaths:
    """Every seed's unguarded path seen so far, and its paths under the settings of the current step key
    (scale, step cap, σ window, …: the gates α of one window). A seed whose runs disagree is never reused."""

    def __init__(self) -> None:
        self.by_seed: dict[int, UnguardedPath] = {}
        self.untrusted: set[int] = set()
        self.guided: dict[int, list[GuidedPath]] = {}
        self.key: tuple | None = None

    def add(self, found: dict[int, UnguardedPath]) -> None:
        for seed, path in found.items():
            if seed in self.untrusted:
                continue
            if seed not in self.by_seed:
                self.by_seed[seed] = path
            elif not self.by_seed[seed].merge(path):
                del self.by_seed[seed]
                self.untrusted.add(seed)

    def add_guided(self, found: dict[int, GuidedPath]) -> None:
        for seed, path in found.items():
            if path.key != self.key:  # a new window or push: the old one's paths can serve no setting of it
                self.guided, self.key = {}, path.key
            self.guided.setdefault(seed, []).append(path)

    def shut(self, seed: int, settings: dict[str, Any]) -> UnguardedPath | None:
        """The seed's path where the gate of ``settings`` stays shut all along it, else None."""
        path = self.by_seed.get(seed)
        return path if path is not None and path.shut(settings) else None

    def unguarded_start(self, seed: int, settings: dict[str, Any]) -> list[Tensor]:
        """The x0 predictions of the seed's unguarded path for as long as the gate of ``settings`` stays
        shut along it (empty where none were kept)."""
        path = None if seed in self.untrusted else self.by_seed.get(seed)
        if path is None or path.denoised is None:
            return []
        return path.denoised[:path.shut_calls(settings)]

    def reusable(self, seed: int, settings: dict[str, Any]) -> UnguardedPath | GuidedPath | None:
        """A path ``settings`` would take for this seed: its unguarded one where the gate stays shut, or
        one sampled under another gate α that opened exactly where this one would."""
        if seed in self.untrusted:
            return None
        shut = self.shut(seed, settings)
        if shut is not None:
            return shut
        return next((p for p in self.guided.get(seed, ()) if p.same_steps(settings)), None)
