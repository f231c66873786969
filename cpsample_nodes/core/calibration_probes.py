"""Sampling the probes for calibration: the caller's sampler run under one setting on a chunk of seeds,
its model calls counted, its progress reported, paths recorded and reused (calibration_reuse), and copies
measured as Replication Check measures them."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .guard import Guard
from .calibration_reuse import Trace, KnownPaths
from .metrics import calibrated_l2_ratio
from .training import TrainingStopped

Tensor = torch.Tensor
GuideFn = Callable[[Tensor, Tensor, Tensor], Tensor]
SampleFn = Callable[[GuideFn | None, list[int]], Tensor]
DecodeFn = Callable[[Tensor], Tensor]
ProgressFn = Callable[[int, int, dict], None]

L2_K = 5  # calibrated ℓ2: nearest vs mean of the next 5 (clipped to N − 1), as Replication Check
# Guided runs keep their x0 predictions to replay from while all those kept hold less than this (CPU,
# float32): 32 SDXL probes at 30 steps need about 1 GB, 32 Flux probes at 1024 px about 4 GB.
REPLAY_MEMORY = 2 * 1024**3


class CalibrationStopped(TrainingStopped):
    """``should_stop()`` asked calibration to end (a cancel, not a failure)."""


class Replay:
    """The start of a batch's paths served from paths already sampled (calibration_reuse): for its first
    ``calls`` model calls every seed's x is the one a known path of it had (up to there the setting pushes
    as that path's did: not at all, outside its σ window or with p inside its gate, or with the same
    heads), so the model's x0 predictions are that path's and the model need not run. A sampler that sets
    ``replays = True`` finds this as ``guide.replay`` (None when nothing can be replayed): it calls
    ``begin(seeds)`` before each batch it runs and ``next()`` before every model call; where ``next()``
    returns the x0 predictions [B, ...], it uses them as that call's CFG result instead of running the
    model, and still hands them to the guide."""

    def __init__(self, prefixes: dict[int, list[Tensor]], calls: int) -> None:
        self.prefixes, self.calls = prefixes, calls
        self.rows: list[list[Tensor]] = []
        self.i, self.served_last = 0, False

    def begin(self, seeds: Sequence[int]) -> None:
        self.rows, self.i, self.served_last = [self.prefixes[int(s)] for s in seeds], 0, False

    def next(self) -> Tensor | None:
        i, self.i = self.i, self.i + 1
        self.served_last = i < self.calls
        return torch.stack(self.last()) if self.served_last else None

    def last(self) -> list[Tensor]:
        """The per-seed x0 predictions the last ``next()`` served."""
        return [r[self.i - 1] for r in self.rows]


class ProbeSampler:
    """The caller's ``sample(guide, seeds)`` as calibration runs it. ``calls``: model calls so far (one
    per image and step); ``calls_saved``: the calls reused samples would have cost; ``calls_replayed``:
    the calls served by ``Replay``; ``total``: the images the progress bar expects (the search raises it
    when it needs more)."""

    def __init__(self, guard: Guard, sample: SampleFn, latents: Tensor, decode: DecodeFn | None,
                 progress: ProgressFn | None, should_stop: Callable[[], bool] | None, total: int) -> None:
        self.guard, self.sample_fn, self.decode = guard, sample, decode
        self.progress, self.should_stop = progress, should_stop
        self.train = latents.detach().float().cpu()
        self.train_px = decoded(decode, self.train) if decode is not None else None
        self.k = max(1, min(L2_K, self.train.shape[0] - 1))
        self.paths = KnownPaths()
        self.replays = bool(getattr(sample, "replays", False))  # the sampler can take a Replay
        self.calls = self.calls_saved = self.calls_replayed = self.done = 0
        self.total = total

    def _guide(self, settings: dict[str, Any] | None, trace: Trace, replay: Replay | None) -> GuideFn:
        """The guide handed to the sampler: counts the model calls (those ``replay`` served apart) and
        traces the guard's p (each head's, where it guides). The unguarded run gets one that returns
        denoised unchanged, so its calls count the same way."""
        guard = self.guard

        def guide(denoised: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
            served = replay is not None and replay.served_last
            if served:
                self.calls_replayed += int(denoised.shape[0])
            else:
                self.calls += int(denoised.shape[0])
            if settings is None:
                out, p = denoised, guard.probability(denoised.detach().float(), guard.space.sigma_min)
            else:
                out, p = guard.guide_traced(denoised, x, sigma, **settings)  # p: [B, heads]
            trace.add(denoised, out, x, sigma, p, replay.last() if served else None)
            return out
        guide.replay = replay  # type: ignore[attr-defined]
        return guide

    def advance(self, count: int, what: str) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, {"setting": what, "model_calls": self.calls})

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total, {"setting": "done", "model_calls": self.calls})

    def run(self, settings: dict[str, Any] | None, chunk: list[int], what: str) -> Tensor:
        """Sample ``chunk`` under ``settings`` (None: unguarded), recording the paths."""
        if self.should_stop is not None and self.should_stop():
            raise CalibrationStopped(f"calibration stopped while sampling {what}")
        # runs keep their calls' x0 predictions where the sampler can replay them: the unguarded one always,
        # guided ones within REPLAY_MEMORY
        keep = self.replays and (settings is None or self.paths.kept_bytes() < REPLAY_MEMORY)
        trace = Trace(keep_denoised=keep)
        replay = self._replay(settings, chunk) if settings is not None else None
        out = checked_samples(self.sample_fn(self._guide(settings, trace, replay), list(chunk)), chunk, self.train)
        self.paths.add(trace.paths(chunk, out))
        if settings is not None:
            self.paths.add_guided(trace.guided(chunk, out, settings))
        self.advance(len(chunk), what)
        return out

    def _replay(self, settings: dict[str, Any], chunk: list[int]) -> Replay | None:
        """The calls every seed of ``chunk`` can take from a path already sampled under ``settings``."""
        if not self.replays:
            return None
        starts = {s: self.paths.known_start(s, settings) for s in chunk}
        calls = min(len(start) for start in starts.values())
        return Replay(starts, calls) if calls > 0 else None

    def sample(self, settings: dict[str, Any], chunk: list[int], what: str) -> tuple[Tensor, int]:
        """The samples of ``chunk`` under ``settings``: sampled, or reused where the seed's path under
        ``settings`` is one already sampled (the unguarded one where the gate stays shut all along it, or
        another gate's that opened exactly where this one would). Also returns how many were reused."""
        known = {s: p for s in chunk if (p := self.paths.reusable(s, settings)) is not None}
        todo = [s for s in chunk if s not in known]
        got = dict(zip(todo, self.run(settings, todo, what))) if todo else {}
        for s, path in known.items():
            got[s] = path.sample
            self.calls_saved += len(path.sigmas)
        if known:
            self.advance(len(known), what)
        return torch.stack([got[s] for s in chunk]), len(known)

    def ratios(self, x: Tensor) -> Tensor:
        """Calibrated ℓ2 ratio per sample (with a decoder: the smaller of latents and pixels)."""
        r = calibrated_l2_ratio(x, self.train, self.k)
        if self.train_px is not None:
            r = torch.minimum(r, calibrated_l2_ratio(decoded(self.decode, x), self.train_px, self.k))
        return r


def decoded(decode: DecodeFn, x: Tensor) -> Tensor:
    out = decode(x)
    if not isinstance(out, torch.Tensor) or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"decode must return one image per latent ({x.shape[0]}), got {got}")
    if not torch.isfinite(out).all():
        raise ValueError("decode returned NaN or infinite values")
    return out.detach().float().cpu()


def checked_samples(out: Any, chunk: Sequence[int], train: Tensor) -> Tensor:
    want = (len(chunk), *train.shape[1:])
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"sample must return a tensor of latents shaped {list(want)}, got {type(out).__name__}")
    if tuple(out.shape) != want:
        raise ValueError(f"sample returned latents shaped {list(out.shape)} for {len(chunk)} seeds; expected "
                         f"{list(want)} (one per seed, the training latents' channels and size)")
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).flatten(1).any(1).sum())
        raise ValueError(f"sample returned NaN or infinite values in {bad} of {len(chunk)} latents")
    return out.detach().float().cpu()
