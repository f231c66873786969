"""Reusing paths: a gate that stays shut all along a seed's unguarded path leaves that seed unguarded, and a
gate α that opens exactly where a gate α' opened, with the same heads, along the path α' took, steps exactly
as α' did. Calibration records the guard's p along each path it samples and reuses the sample instead of
sampling the seed again (the same samples, fewer model calls). Where two settings push alike only for a
path's first calls, a sampler that replays (calibration_probes.Replay) takes the model's x0 predictions of
those calls, and of the first call where they part (the model sees the same x there), from the path already
sampled instead of running the model."""
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
        return next((i for i in range(len(self.sigmas)) if not self.shut_at(i, settings)), len(self.sigmas))

    def shut_at(self, i: int, settings: dict[str, Any]) -> bool:
        """Does the gate of ``settings`` stay shut at call ``i`` of this path (by REUSE_MARGIN)?"""
        if not inside(self.sigmas[i], settings.get("sigma_max")):
            return True  # outside the σ window the guard does not run
        if settings.get("guard_input", "denoised") != "denoised":
            return False  # the path recorded p on the x0 prediction
        margin = self.margins[i]
        return margin is not None and margin >= float(settings["alpha"]) + REUSE_MARGIN

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


# How a setting pushes where its gate opens; with the σ window, everything of the guide but the gate α:
# what must match for one setting's path to be another's.
PUSH_KEYS = ("scale", "max_step", "objective", "guard_input")
STEP_KEYS = PUSH_KEYS + ("sigma_max",)


def step_key(settings: dict[str, Any]) -> tuple:
    return tuple(settings.get(k) for k in STEP_KEYS)


def inside(sigma: float, top: float | None) -> bool:
    """Is ``sigma`` inside the σ window ``σ ≤ top`` (None: every step)?"""
    return top is None or sigma <= top * (1 + 1e-6)


def opens(q: float, alpha: float) -> bool:
    return q < alpha or q > 1 - alpha


def clear_of(q: float, alpha: float) -> bool:
    """Is the head's p far enough from the gate's bounds that batching cannot move it across?"""
    return abs(q - alpha) >= REUSE_MARGIN and abs(q - (1 - alpha)) >= REUSE_MARGIN


@dataclass
class GuidedPath:
    """A seed's path under one setting: σ and each head's p at every model call (None where the guard did
    not run), that setting's gate α and step key, and the sample it ends in."""
    sigmas: list[float]
    heads: list[list[float] | None]
    alpha: float
    key: tuple
    sample: Tensor
    denoised: list[Tensor] | None = None  # the x0 prediction at every call (kept where the sampler replays)

    def same_steps(self, settings: dict[str, Any]) -> bool:
        """Would ``settings`` have taken this path? Yes when it differs from the recorded setting in α alone
        and, at every call inside the σ window, opens the gate of exactly the heads the recorded α opened,
        each head's p at least REUSE_MARGIN from the new α's bounds: the same pushes, so the same next x."""
        return step_key(settings) == self.key and self.alike_calls(settings, None) == len(self.sigmas)

    def alike_calls(self, settings: dict[str, Any], unguarded: UnguardedPath | None) -> int:
        """How many calls from the start ``settings`` pushes exactly as this path's setting did (not at all,
        or with the same heads and the same push): up to there the two paths are one. Before this path's
        first push it is still ``unguarded`` (the seed's unguarded path, None if unknown), whose p tells
        where ``settings`` stays shut."""
        alpha, top = float(settings["alpha"]), settings.get("sigma_max")
        pushes_alike = tuple(settings.get(k) for k in PUSH_KEYS) == self.key[:len(PUSH_KEYS)]
        if unguarded is not None and len(unguarded.sigmas) != len(self.sigmas):
            unguarded = None  # not this path's start
        pushed = False  # has this path been pushed yet?
        for i, (sigma, heads) in enumerate(zip(self.sigmas, self.heads)):
            if not inside(sigma, self.key[-1]):  # the recorded setting did not guide here
                if inside(sigma, top) and (pushed or unguarded is None or not unguarded.shut_at(i, settings)):
                    return i
                continue
            if heads is None:
                return i
            was_open = [opens(q, self.alpha) for q in heads]
            if not inside(sigma, top):
                if any(was_open):
                    return i
                continue
            if any(not clear_of(q, alpha) or opens(q, alpha) != o for q, o in zip(heads, was_open)):
                return i
            if any(was_open):
                if not pushes_alike:
                    return i
                pushed = True
        return len(self.sigmas)


class Trace:
    """The model calls of one sampler call, in order: σ, each head's p (None where the guard did not run)
    and which items the guide left unchanged."""

    def __init__(self, keep_denoised: bool = False) -> None:
        self.calls: list[tuple[list[float], list[list[float]] | None, list[bool]]] = []
        self.keep = keep_denoised
        self.denoised: list[Tensor | list[Tensor]] = []  # each call's x0 predictions [B, ...], where kept

    def add(self, denoised: Tensor, out: Tensor, x: Tensor, sigma: Tensor | float, p: Tensor | None,
            replayed: list[Tensor] | None = None) -> None:
        """``p``: the guard's p per item [B] or per item and head [B, heads]; ``replayed``: the per-item
        tensors ``denoised`` was served from (kept as they are, not copied)."""
        b = int(denoised.shape[0])
        same = [True] * b if out is denoised else (out == denoised).flatten(1).all(1).tolist()
        heads = None if p is None else p.float().reshape(b, -1).tolist()
        self.calls.append((as_sigma(sigma, b, x).float().tolist(), heads, same))
        if self.keep:
            self.denoised.append(replayed if replayed is not None else denoised.detach().float().cpu().clone())

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
        return {chunk[j]: GuidedPath([c[0] for c in calls], [c[1] for c in calls], alpha, key, out[j],
                                     [c[3] for c in calls] if self.keep else None)
                for j, calls in self._groups(chunk)}


class KnownPaths:
    """Every seed's unguarded path seen so far, its paths under the settings of the current step key
    (scale, step cap, σ window, …: the gates α of one window), and two of those with their x0 predictions
    kept, to replay from: the latest (the nearest gentler gate: a window's gates are measured from gentle
    to strong, after the strongest) and the one under the window's strongest gate. A seed whose unguarded
    runs disagree is never reused."""

    def __init__(self) -> None:
        self.by_seed: dict[int, UnguardedPath] = {}
        self.untrusted: set[int] = set()
        self.guided: dict[int, list[GuidedPath]] = {}
        self.key: tuple | None = None
        self.latest: dict[int, GuidedPath] = {}
        self.strongest: dict[int, GuidedPath] = {}

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
            if path.denoised is not None:
                self._keep_to_replay(seed, path)

    def _keep_to_replay(self, seed: int, path: GuidedPath) -> None:
        before = (self.latest.get(seed), self.strongest.get(seed))
        self.latest[seed] = path
        strongest = before[1]
        if strongest is None or strongest.key != path.key or path.alpha >= strongest.alpha:
            self.strongest[seed] = path
        for old in before:
            if old is not None and old is not path and old is not self.strongest[seed]:
                old.denoised = None  # its sample can still be reused; its calls are no longer replayed

    def kept_bytes(self) -> int:
        """The memory the kept x0 predictions hold (a batch's tensor counts whole while a seed keeps a view of it)."""
        seen, total = set(), 0
        for path in (*self.by_seed.values(), *self.latest.values(), *self.strongest.values()):
            for t in path.denoised or ():
                storage = t.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
        return total

    def shut(self, seed: int, settings: dict[str, Any]) -> UnguardedPath | None:
        """The seed's path where the gate of ``settings`` stays shut all along it, else None."""
        path = self.by_seed.get(seed)
        return path if path is not None and path.shut(settings) else None

    def known_start(self, seed: int, settings: dict[str, Any]) -> list[Tensor]:
        """The x0 predictions ``settings`` would get from the model at the first calls of the seed's path,
        taken from the kept path that it follows longest (the unguarded one or a guided one): every call up
        to and including the first where it pushes otherwise (the model sees the same x there). Empty where
        no x0 predictions were kept."""
        if seed in self.untrusted:
            return []
        unguarded, start = self.by_seed.get(seed), []
        if unguarded is not None and unguarded.denoised is not None:
            start = unguarded.denoised[:unguarded.shut_calls(settings) + 1]
        for guided in (self.latest.get(seed), self.strongest.get(seed)):
            if guided is not None and guided.denoised is not None:
                longer = guided.denoised[:guided.alike_calls(settings, unguarded) + 1]
                start = longer if len(longer) > len(start) else start
        return start

    def reusable(self, seed: int, settings: dict[str, Any]) -> UnguardedPath | GuidedPath | None:
        """A path ``settings`` would take for this seed: its unguarded one where the gate stays shut, or
        one sampled under another gate α that opened exactly where this one would."""
        if seed in self.untrusted:
            return None
        shut = self.shut(seed, settings)
        if shut is not None:
            return shut
        return next((p for p in self.guided.get(seed, ()) if p.same_steps(settings)), None)
