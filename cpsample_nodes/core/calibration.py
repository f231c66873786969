"""Calibration: find the gentlest guard settings that stop the user's own model from copying.

The right gate (α), σ window and strength differ from model to model (docs/protection.md), so the
guard measures them on the caller's sampler: it samples probe seeds without the guard, counts copies
the way Replication Check does (calibrated ℓ2 ratio against the training latents, and on decoded
pixels when a decoder is given), then tries σ windows from narrow to every step, and every gate α in
a window: of the settings that cut the copies to the target (with a margin for the probes' sampling
error), the one that costs least wins, the gentlest on a tie. The cost: the probes it spoils, plus
every probe that did not copy counted by how far the guard moved it (relative ℓ2 change, at most 1),
since a guard should leave alone what the model draws on its own; a probe that still copies is left
to the target. A wider window is tried only while the best so far spoils more than one probe (moved
non-copies alone do not widen it). Where nothing passes at the default push, or the best spoils more
than a tenth of the probes, the same ladder is tried at stronger ones (a larger scale and a doubled
step cap), while each finds a better setting; a setting that spoils more than a tenth is measured on
only where it might still be chosen. Settings are measured on the probes that earlier settings failed
on first, in batches of the fewest probes that could end them. A setting becomes the choice only
after it passes again on as many confirmation seeds: the best of many settings measured on the same
probes looks better on them than it is. Confirmation waits for the end of a window and starts with
the setting that costs least, so a window whose gates keep improving on each other costs one
confirmation run, not one per improvement.
A gate that stays shut all along a seed's unguarded path leaves that path unguarded: calibration
reuses the unguarded sample instead of sampling the seed again (the same samples, fewer calls); where a
setting pushes as a path already sampled did only for its first calls (not at all, or with the same
heads), a sampler that replays takes those calls from that path.

The pieces: ``calibration_ladder`` (the settings tried), ``calibration_probes`` (sampling and counting
copies), ``calibration_reuse`` (unguarded paths), ``calibration_stats`` (the copy target's margin and
what counts as spoiled), ``calibration_search`` (the search) and ``calibration_report`` (the result).
docs/calibration.md lists the rules and the tests that check each.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import torch

from .calibration_ladder import ALPHAS, MAX_STEP, STRENGTHS, WINDOWS, describe, ladder, window_sigma  # noqa: F401
from .calibration_probes import (L2_K, CalibrationStopped, DecodeFn, ProbeSampler, ProgressFn,  # noqa: F401
                                 SampleFn)
from .calibration_report import RANKING, WEAK_SPOIL, Calibration  # noqa: F401
from .calibration_reuse import REUSE_MARGIN  # noqa: F401
from .calibration_search import CHUNK, SPOIL_STOP, Search, row_dict  # noqa: F401
from .calibration_stats import CONFIDENCE, Reference, allowed_at, allowed_copies, upper_rate  # noqa: F401
from .guard import Guard
from .metrics import REPLICA_L2_RATIO

Tensor = torch.Tensor

MIN_PROBES = 8  # fewer seeds cannot tell a 10x cut from chance
# What the hosts tell users a probe costs: images sampled per probe over a whole calibration, as a
# multiple of the probes' own run: 3.2-7.7 on the digits and 4.8-13.0 on the mixture (the as-shipped
# table's 24 calibrations, calibration/search/) and 3.1-7.8 on the prompted LoRA benchmark (docs/protection.md).
PROBE_COST_NOTE = ("Each probe costs about 3-13 images of sampling over the whole calibration (measured on "
                   "the benchmarks), so 32 probes take about 100-420 images at your steps.")


def calibrate(guard: Guard, sample: SampleFn, latents: Tensor, seeds: Iterable[int] = range(64), *,
              decode: DecodeFn | None = None, target_ratio: float = 0.1, progress: ProgressFn | None = None,
              should_stop: Callable[[], bool] | None = None, sampler_description: str | None = None,
              confirm_seeds: Iterable[int] | None = None) -> Calibration:
    """Choose ``guard.guide`` settings on the caller's own sampler and store them in ``guard.info``.

    ``sample(guide, seeds)`` returns the final clean latents [len(seeds), C, H, W], deterministic per
    seed; ``guide`` is ``guide(denoised, x, sigma) -> denoised``, applied after every model call.
    ``latents``: the training latents [N, C, H, W] the guard was trained on. ``decode`` (optional) maps
    latents to images, so copies are counted on pixels as well. The target: at most ``target_ratio`` ×
    the unguarded copies. ``confirm_seeds``: the seeds a passing setting must pass on again, over probes
    and these together, before it is chosen (None: as many as the probes, following the largest probe
    seed; empty: no confirmation). ``progress(done, total, stats)`` counts sampled images;
    ``should_stop()`` returning True raises ``CalibrationStopped``.
    """
    started = time.monotonic()
    seeds = _check_args(guard, latents, seeds, target_ratio)
    confirm = _confirmation_seeds(seeds, confirm_seeds)
    n, m = len(seeds), len(confirm)
    per_scale = n * sum(len(w) for w in ladder(guard))
    probes = ProbeSampler(guard, sample, latents, decode, progress, should_stop, total=n + per_scale + m)
    base = torch.cat([probes.run(None, seeds[i:i + CHUNK], "unguarded") for i in range(0, n, CHUNK)])
    ratios = probes.ratios(base)
    copied = ratios < REPLICA_L2_RATIO
    u, unguarded_calls = int(copied.sum()), probes.calls
    found = dict(settings=dict(ladder(guard)[0][0]), seeds=list(seeds), unguarded=base, copied=copied,
                 unguarded_rate=u / n, target=target_ratio, sampler=sampler_description)
    if u == 0:  # nothing to calibrate: the gentlest setting
        cal = Calibration(**found, rows=[], calibrated_rate=0.0, reached=True, no_copies=True,
                          model_calls=probes.calls, seconds=time.monotonic() - started)
    else:
        allowed = max(0, allowed_copies(u, n, target_ratio))
        # over probes and confirmation seeds together: the same goal, with the margin of n + m seeds
        pooled = max(allowed, allowed_at(target_ratio * u / n, n + m)) if m else allowed
        search = Search(guard, probes, seeds, confirm, base, ratios, allowed, pooled)
        chosen = search.run()
        reached = chosen is not None
        if chosen is None:  # nothing reached the target: say so, with the most promising setting
            chosen = search.most_promising()
        flags = torch.tensor([chosen.copies[i] for i in range(n)])
        if chosen.settings["scale"] > STRENGTHS[0][0]:
            found["push_limit"] = push_limit(guard, base[copied])
        found.update(settings=dict(chosen.settings), calibrated_rate=float(flags.double().mean()),
                     calibrated=torch.stack([chosen.samples[i] for i in range(n)]), calibrated_copied=flags,
                     spoiled_rate=chosen.n_spoiled() / n)
        unguarded_row = _unguarded_row(u, n, int(search.reference.spoiled(base, ratios).sum()), unguarded_calls)
        cal = Calibration(**found, rows=[unguarded_row] + [row_dict(r, r is chosen, allowed, n) for r in search.rows],
                          reached=reached, no_copies=False, allowed=allowed, model_calls=probes.calls,
                          seconds=time.monotonic() - started, confirm_seeds=list(confirm), confirm_allowed=pooled,
                          confirm_copies=sum(chosen.confirm_copies.values()) if chosen.confirmed else None,
                          reused=sum(r.reused for r in search.rows), calls_saved=probes.calls_saved,
                          calls_replayed=probes.calls_replayed)
    guard.info = {**guard.info, "calibration": cal.summary()}
    probes.finish()
    return cal


def push_limit(guard: Guard, copies: Tensor) -> str:
    """Why the standard push was not enough, read at the copies the model drew: "gradient" when the
    guard's own push there stays under the standard step cap (the guard is weak: a larger scale is what
    helps), "cap" when it reaches the cap (the model pulls harder than the cap lets the guard push back,
    as with CFG). Read at the narrowest window's σ, the median over the copies."""
    sigma = window_sigma(guard, WINDOWS[0])
    scale, cap = STRENGTHS[0]
    x = copies.to(torch.float32)
    pushed = guard.guide(x, x, sigma, scale=scale, alpha=0.5, max_step=None)
    rms = (pushed - x).flatten(1).pow(2).mean(1).sqrt()
    bound = cap * float(guard.space.push_bound(torch.tensor(sigma)))
    return "cap" if float(rms.median()) >= bound else "gradient"


def _unguarded_row(copies: int, n: int, spoiled: int, model_calls: int) -> dict[str, Any]:
    return {"label": "unguarded", "settings": None, "copies": copies, "evaluated": n, "copy_rate": copies / n,
            "spoiled": spoiled, "change_noncopy": None, "cost": None, "confirm": None, "model_calls": model_calls,
            "reused": 0, "seconds": None, "outcome": "measured"}


def _seed_list(values: Iterable[int], name: str) -> list[int]:
    try:
        seeds = [int(s) for s in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be integers, got {values!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{name} must be distinct (a repeated seed repeats its sample)")
    return seeds


def _confirmation_seeds(seeds: list[int], confirm_seeds: Iterable[int] | None) -> list[int]:
    if confirm_seeds is None:
        start = max(seeds) + 1
        return list(range(start, start + len(seeds)))
    confirm = _seed_list(confirm_seeds, "confirm_seeds")
    overlap = sorted(set(confirm) & set(seeds))
    if overlap:
        raise ValueError(f"confirm_seeds must be new seeds, not probes; shared: {overlap[:5]}")
    return confirm


def _check_args(guard: Guard, latents: Tensor, seeds: Iterable[int], target_ratio: float) -> list[int]:
    if not isinstance(latents, torch.Tensor) or latents.dim() != 4:
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents must be the training latents shaped [N, C, H, W], got {got}")
    if latents.shape[1] != guard.latent_channels:
        raise ValueError(f"this guard takes {guard.latent_channels}-channel latents, the training latents "
                         f"have {latents.shape[1]} channels")
    if latents.shape[0] < 2:
        raise ValueError(f"need at least 2 training latents to tell a copy apart, got {latents.shape[0]}")
    if not torch.isfinite(latents).all():
        raise ValueError("the training latents contain NaN or infinite values")
    seeds = _seed_list(seeds, "seeds")
    if len(seeds) < MIN_PROBES:
        raise ValueError(f"calibration needs at least {MIN_PROBES} probe seeds to measure a copy rate, "
                         f"got {len(seeds)}")
    if isinstance(target_ratio, bool) or not isinstance(target_ratio, (int, float)) or not 0 <= target_ratio < 1:
        raise ValueError(f"target_ratio must lie in [0, 1), got {target_ratio!r}")
    return seeds
