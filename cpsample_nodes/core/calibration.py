"""Calibration: find the gentlest guard settings that stop the user's own model from copying.

The right gate (α), σ window and strength differ from model to model (docs/protection.md), so the
guard measures them on the caller's sampler: it samples probe seeds without the guard, counts copies
the way Replication Check does (calibrated ℓ2 ratio against the training latents, and on decoded
pixels when a decoder is given), then tries σ windows from narrow to every step, and every gate α in
a window: of the settings that cut the copies to the target (with a margin for the probes' sampling
error), the one that costs least wins, the gentlest on a tie. The cost: the probes it spoils, plus
every probe that did not copy counted by how far the guard moved it (relative ℓ2 change, at most 1),
since a guard should leave alone what the model draws on its own. A wider window is tried only while
the best so far spoils more than one probe (moved non-copies alone do not widen it). Where nothing
passes at the default scale, the same ladder is tried at stronger scales. A setting becomes the
choice only after it passes again on as many confirmation seeds: the best of many settings measured
on the same probes looks better on them than it is. Confirmation waits for the end of a window and
starts with the setting that costs least, so a window whose gates keep improving on each other costs
one confirmation run, not one per improvement. A gate that stays shut all along a seed's unguarded
path leaves that path unguarded: calibration records the guard's p along each path it sees unguarded
and reuses the unguarded sample instead of sampling the seed again (the same samples, fewer calls).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from .guard import DEFAULT_SCALE, Guard
from .metrics import REPLICA_L2_RATIO, calibrated_l2_ratio
from .noise import as_sigma
from .training import TrainingStopped

Tensor = torch.Tensor
GuideFn = Callable[[Tensor, Tensor, Tensor], Tensor]
SampleFn = Callable[[GuideFn | None, list[int]], Tensor]
DecodeFn = Callable[[Tensor], Tensor]

MIN_PROBES = 8          # fewer seeds cannot tell a 10x cut from chance
CHUNK = 8               # seeds per sampler call: the unit of early abandonment
L2_K = 5                # calibrated ℓ2: nearest vs mean of the next 5 (clipped to N − 1), as Replication Check
# The ladder. Windows are noise-to-signal ratios (σ itself for vp, σ/(1−σ) for flow), narrow to all
# steps: a narrow window only touches the late steps, where each push is at most max_step·σ.
WINDOWS: tuple[float | None, ...] = (1.0, 2.0, 4.0, None)
ALPHAS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
# Strengths, tried in turn only while no setting of the gentler one passes: some guards' gradients are
# too small at a copy for the step cap to bind (docs/protection.md, "Calibration").
SCALES: tuple[float, ...] = (DEFAULT_SCALE, 3 * DEFAULT_SCALE, 10 * DEFAULT_SCALE, 30 * DEFAULT_SCALE,
                             100 * DEFAULT_SCALE)
MAX_STEP = 1.0
# Once the best passing setting spoils at most this many probes (with widen_on_spoil=False: costs, i.e.
# spoiled plus moved non-copies; see _Reference for "spoiled"), no wider σ window is tried: a wider
# window can still do better on quality (DreamBooth-style digits: every step guided drew better-formed
# digits than σ ≤ 2, which spoiled 2 of 64 probes).
SPOIL_STOP = 1
# The ranking's words for count_copies=False, the default: a probe that still copies is the target's
# to bound, not counted as spoiled as well (docs/protection.md, "Copies left to the target: adopted").
COPIES_LEFT = "; copies not counted as spoiled"
SPOIL_MARGIN = 1.0      # the natural range is widened by its own width on each side: gross failures only
# A setting passes when the copy rate on new seeds is below the target with this confidence (one-
# sided binomial bound on its probe count): a setting that just reaches the target on the probes
# misses it on fresh seeds half the time (digits: 5 of 64 probes allowed, 9.4 % of fresh seeds copied).
CONFIDENCE = 0.8
# A guard whose chosen setting still spoils more than this share of the probes is called weak: in the
# calibration tables 4 of the 5 mixture calibrations above it missed FD ≤ 1.2 × (1.32–1.66 ×; the fifth
# 1.12 ×), and no digits calibration came near it (at most 3.1 %) (docs/protection.md, "Another
# machine, other guards").
WEAK_SPOIL = 0.1
# What the hosts tell users a probe costs: images sampled per probe over a whole calibration, from the
# 36 calibrations of docs/protection.md, "Reusing unguarded paths: adopted" (296-1,379 images for 64
# probes; 4-34 per probe before samples were reused); three-head guards, the default, 285-1,337.
PROBE_COST_NOTE = ("Each probe costs about 5-22 images of sampling over the whole calibration (measured on "
                   "the benchmarks), so 32 probes take about 150-690 images at your steps.")


# A seed's unguarded sample is reused for a gate α only where p kept at least this far inside [α, 1−α]
# at every model call of the gate's σ window: batching can move the guard's p by a few float ulps.
REUSE_MARGIN = 1e-4
# Reusing samples changes which seeds share a batch from one setting to the next, and batching rounds
# differently: two settings that move the probes alike then differ in cost by ~1e-7, not 0. Costs are
# compared at this many decimals, so such a tie still goes to the setting considered first.
COST_DECIMALS = 4


class CalibrationStopped(TrainingStopped):
    """``should_stop()`` asked calibration to end (a cancel, not a failure)."""


def window_sigma(guard: Guard, ratio: float | None) -> float | None:
    """σ_max in the guard's space for a noise-to-signal ratio (None: every step)."""
    if ratio is None:
        return None
    return float(ratio) if guard.space.kind == "vp" else float(ratio / (1.0 + ratio))


def ladder(guard: Guard, scale: float = DEFAULT_SCALE) -> list[list[dict[str, Any]]]:
    """Candidate settings at one scale, one list per σ window (narrow first), α ascending within a window."""
    return [[{"scale": float(scale), "alpha": a, "max_step": MAX_STEP, "sigma_max": window_sigma(guard, w)}
             for a in ALPHAS] for w in WINDOWS]


def describe(settings: dict[str, Any]) -> str:
    window = "all steps" if settings.get("sigma_max") is None else f"σ ≤ {settings['sigma_max']:.3g}"
    scale = settings.get("scale", DEFAULT_SCALE)
    strength = "" if scale == DEFAULT_SCALE else f", scale {scale:g}"
    return f"α {settings['alpha']:g}, {window}{strength}"


@dataclass
class _Reference:
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
    def of(cls, natural: Tensor, new_ratios: Tensor) -> "_Reference":
        s = cls.stats(natural)
        lo, hi = s.amin(0), s.amax(0)
        pad = SPOIL_MARGIN * (hi - lo)
        return cls(lo - pad, hi + pad, float(new_ratios.min()) if new_ratios.numel() else 0.0)

    def spoiled(self, x: Tensor, ratios: Tensor) -> Tensor:
        s = self.stats(x)
        return ((s < self.lo) | (s > self.hi)).any(1) | (ratios < self.near)


@dataclass
class _Row:
    """One setting's measurements so far, seed by seed (in the probe order)."""
    settings: dict[str, Any]
    copies: dict[int, bool] = field(default_factory=dict)
    spoiled: dict[int, bool] = field(default_factory=dict)
    change: dict[int, float] = field(default_factory=dict)
    samples: dict[int, Tensor] = field(default_factory=dict)
    model_calls: int = 0
    reused: int = 0  # samples taken from an unguarded path the gate never touched, not sampled again
    seconds: float = 0.0
    abandoned: str = ""  # why it stopped early ("" = measured on every probe it was given)
    set_aside: bool = False  # abandoned because a passing setting cost less (resumed if that one fails)
    order: int = 0  # when it is considered: of two settings that cost the same, the earlier wins
    confirm_copies: dict[int, bool] = field(default_factory=dict)  # on the confirmation seeds
    confirmed: bool | None = None  # None: never put to the confirmation seeds

    def n_copies(self) -> int:
        return sum(self.copies.values())

    def n_spoiled(self) -> int:
        return sum(self.spoiled.values())

    def moved(self) -> float:
        """The probes that did not copy, each counted by how far the guide moved it (relative ℓ2
        change, at most 1), leaving out those already spoiled."""
        return sum(min(1.0, c) for i, c in self.change.items() if not self.spoiled.get(i, False))


@dataclass
class _Path:
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

    def merge(self, other: "_Path") -> bool:
        """Add what another unguarded run saw of the same path; False when the two disagree on the
        number of model calls (a sampler that is not deterministic per seed)."""
        if len(other.sigmas) != len(self.sigmas):
            return False
        self.margins = [b if a is None else a if b is None else min(a, b)
                        for a, b in zip(self.margins, other.margins)]
        return True


class _Trace:
    """The model calls of one sampler call, in order: σ, the guard's p (None where it did not run) and
    which items the guide left unchanged."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[float], list[float] | None, list[bool]]] = []

    def add(self, denoised: Tensor, out: Tensor, x: Tensor, sigma: Tensor | float, p: Tensor | None) -> None:
        b = int(denoised.shape[0])
        same = [True] * b if out is denoised else (out == denoised).flatten(1).all(1).tolist()
        self.calls.append((as_sigma(sigma, b, x).float().tolist(), None if p is None else p.float().tolist(), same))

    def paths(self, chunk: Sequence[int], out: Tensor) -> dict[int, _Path]:
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
                    found[chunk[start + q]] = _Path([c[0][q] for c in group], margins, out[start + q])
            start, i = start + b, i + k
        return found if start == n else {}


@dataclass
class Calibration:
    """What ``calibrate`` found. ``settings`` go to ``guard.guide(denoised, x, sigma, **settings)``.

    ``rows``: one dict per setting tried, in the order tried. ``unguarded`` / ``calibrated``: the
    probe samples [n, C, H, W] without the guard and with the chosen settings (None when nothing
    was calibrated); ``copied`` / ``calibrated_copied``: which probes were copies."""
    settings: dict[str, Any]
    rows: list[dict[str, Any]]
    seeds: list[int]
    unguarded_rate: float
    calibrated_rate: float
    reached: bool
    no_copies: bool
    target: float
    model_calls: int
    seconds: float
    sampler: str | None
    unguarded: Tensor
    copied: Tensor
    allowed: int = 0        # copies among the probes a passing setting may leave
    calibrated: Tensor | None = None
    calibrated_copied: Tensor | None = None
    spoiled_rate: float = 0.0  # share of probes the chosen settings spoil (see _Reference)
    confirm_seeds: list[int] = field(default_factory=list)
    confirm_copies: int | None = None  # the chosen setting's copies on confirm_seeds (None: not confirmed)
    confirm_allowed: int = 0           # copies allowed over probes and confirmation seeds together
    ranking: str = "spoiled+moved"     # what a setting's cost counted ("spoiled": spoiled probes alone)
    reused: int = 0       # samples reused from unguarded paths a gate never touched, not sampled again
    calls_saved: int = 0  # the model calls sampling them again would have taken

    @property
    def probes(self) -> int:
        return len(self.seeds)

    @property
    def weak_guard(self) -> bool:
        """The model copies and the guard missed the target, needed a stronger push than the default
        scale, or spoils more than ``WEAK_SPOIL`` of the probes even with the chosen setting. In the
        calibration table the calibrations that raised the scale were guards that stopped training at a
        weak moment (docs/protection.md, "Where the weak guards come from"), and 4 of the 5 that spoiled
        over a tenth of the probes missed the quality goal."""
        return bool(self.weak_reasons())

    def weak_reasons(self) -> list[str]:
        """Why this guard is weak on this model, in words (empty: it is not)."""
        if self.no_copies:
            return []
        if not self.reached:
            return ["no setting reached the target"]
        reasons = []
        scale = float(self.settings.get("scale", DEFAULT_SCALE))
        if scale > DEFAULT_SCALE:
            reasons.append(f"it needed {scale / DEFAULT_SCALE:g}x the standard push")
        if self.spoiled_rate > WEAK_SPOIL:
            reasons.append(f"even the chosen setting spoils {self.spoiled_rate:.1%} of the probes")
        return reasons

    def summary(self) -> dict[str, Any]:
        """The JSON-able record stored in ``guard.info["calibration"]`` (nothing per image)."""
        return {
            "version": 1,
            "settings": dict(self.settings),
            "unguarded_rate": round(self.unguarded_rate, 6),
            "calibrated_rate": round(self.calibrated_rate, 6),
            "reached": self.reached,
            "spoiled_rate": round(self.spoiled_rate, 6),
            "no_copies": self.no_copies,
            "probes": self.probes,
            "target": self.target,
            "allowed_copies": self.allowed,
            "confidence": CONFIDENCE,
            "confirm_seeds": len(self.confirm_seeds),
            "confirm_copies": self.confirm_copies,
            "ranking": self.ranking,
            "sampler": self.sampler,
            "model_calls": self.model_calls,
            "model_calls_saved": self.calls_saved,
            "seconds": round(self.seconds, 2),
            "tried": [{"settings": r["settings"], "copies": r["copies"], "evaluated": r["evaluated"],
                       "spoiled": r["spoiled"], "confirm": r.get("confirm"), "outcome": r["outcome"]}
                      for r in self.rows],
        }

    def report(self) -> str:
        n = self.probes
        u = int(self.copied.sum())
        lines = [f"calibration on {n} probe seeds" + (f" ({self.sampler})" if self.sampler else "") + ":",
                 f"unguarded: {u} of {n} probes copy a training image ({self.unguarded_rate:.1%})"]
        if self.no_copies:
            lines.append(f"no copies among {n} probes: nothing to calibrate; keeping the gentlest setting "
                         f"({describe(self.settings)})")
        else:
            noun = "copy" if self.allowed == 1 else "copies"
            lines.append(f"target: at most {self.allowed} {noun} of {n}, so that with {CONFIDENCE:.0%} "
                         f"confidence new seeds copy at most {self.target:g} x the unguarded rate "
                         f"({self.target * self.unguarded_rate:.1%})" + (
                             "" if allowed_copies(u, n, self.target) >= 0 else
                             f"; {n} probes cannot show that for {u} copies, so none is allowed"))
            if self.confirm_seeds:
                lines.append(f"a setting that passes must pass again on {len(self.confirm_seeds)} confirmation "
                             f"seeds: at most {self.confirm_allowed} copies over all "
                             f"{n + len(self.confirm_seeds)} seeds")
            lines.append("change: the mean relative change of the probes that did not copy; cost: the spoiled "
                         "probes" + (" plus each probe that did not copy, counted by its change (at most 1)"
                                     if self.ranking.startswith("spoiled+moved") else " alone") +
                         ("" if self.ranking.endswith(COPIES_LEFT) else ", a copy counted as spoiled") +
                         "; the passing setting that costs least is chosen")
            head = (f"{'setting':<34}{'copies':>8}{'confirm':>9}{'spoiled':>9}{'change':>8}{'cost':>7}"
                    f"{'calls':>8}  outcome")
            lines += [head, "-" * len(head)]
            for r in self.rows:
                ch = "" if r["change_noncopy"] is None else f"{r['change_noncopy']:.3f}"
                cost = "" if r.get("cost") is None else f"{r['cost']:.1f}"
                copies = f"{r['copies']}/{r['evaluated']}"
                conf = r.get("confirm") or ""
                lines.append(f"{r['label']:<34}{copies:>8}{conf:>9}{r['spoiled']:>9}{ch:>8}{cost:>7}"
                             f"{r['model_calls']:>8}  {r['outcome']}")
            verdict = "reaches the target" if self.reached else "MISSES the target (best found)"
            if self.confirm_copies is not None:
                lines.append(f"confirmed: {self.confirm_copies} copies on {len(self.confirm_seeds)} further seeds")
            lines.append(f"chosen: {describe(self.settings)}: {self.calibrated_rate:.1%} copies "
                         f"(unguarded {self.unguarded_rate:.1%}), {verdict}; spoils {self.spoiled_rate:.1%} "
                         f"of the probes (near copies, or std, mean, max |x| or high-frequency share outside the natural range)")
            if self.weak_guard:
                lines.append("this guard is weak on this model: " + "; ".join(self.weak_reasons()) +
                             ". A guard trained again with another seed is often stronger and protects with "
                             "gentler settings.")
        lines.append(f"{self.model_calls} model calls, {self.seconds:.1f} s" + (
            f"; {self.calls_saved} more saved by reusing {self.reused} unguarded samples where the gate "
            f"stayed shut" if self.calls_saved else ""))
        return "\n".join(lines)


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
    return _allowed_at(target * unguarded_copies / n, n)


def _allowed_at(goal: float, n: int) -> int:
    """The most copies among ``n`` seeds that still show a copy rate of at most ``goal``; −1 for none."""
    k = -1
    while k + 1 <= n and upper_rate(k + 1, n) <= goal + 1e-12:
        k += 1
    return k


def calibrate(guard: Guard, sample: SampleFn, latents: Tensor, seeds: Iterable[int] = range(64), *,
              decode: DecodeFn | None = None, target_ratio: float = 0.1,
              progress: Callable[[int, int, dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None,
              sampler_description: str | None = None,
              confirm_seeds: Iterable[int] | None = None, count_moved: bool = True,
              widen_on_spoil: bool = True, confirm_each: bool = False,
              count_copies: bool = False, reuse_unguarded: bool = True) -> Calibration:
    """Choose ``guard.guide`` settings on the caller's own sampler and store them in ``guard.info``.

    ``sample(guide, seeds)`` returns the final clean latents [len(seeds), C, H, W], deterministic per
    seed; ``guide`` is None or ``guide(denoised, x, sigma) -> denoised`` applied after every model
    call. ``latents``: the training latents [N, C, H, W] the guard was trained on. ``decode``
    (optional) maps latents to images, so copies are counted on pixels as well. The target: at most
    ``target_ratio`` × the unguarded copies. ``confirm_seeds``: the seeds a passing setting must pass
    on again, over probes and these together, before it is chosen (None: as many as the probes,
    following the largest probe seed; empty: no confirmation). ``count_moved`` (default True): rank
    settings by spoiled probes plus the probes that did not copy, each counted by how far the guide
    moved it; False ranks by spoiled probes alone, as calibrations before 2026-12 did (the older
    tables of docs/protection.md). ``widen_on_spoil`` (default True): try a wider σ window only while
    the best setting spoils more than ``SPOIL_STOP`` probes, whatever it moves (the choice is still
    ranked by the cost); False widens while the best costs more than that, as the first calibrations
    that counted moved probes did. ``confirm_each`` (default False): put each setting that beats the
    best so far to the confirmation seeds at once, as calibrations before 2026-12-02 did, instead of
    once per window, least costly first; the choice is the same, the model calls more.
    ``count_copies`` (default False): a probe that still copies is left to the target, which bounds
    copies already, so the cost, the abandoning and the widening see only the samples the guide
    spoiled; True counts it as spoiled as well (it lies under the near-copy line), as calibrations
    before 2026-12-02 did: a copy the target allows then costs a setting a whole probe more.
    ``reuse_unguarded`` (default True): record the guard's p along every path sampled unguarded (the
    probes' unguarded run, and each seed a guided run left unchanged) and, for a setting whose gate
    stays shut all along a seed's path, reuse that sample instead of sampling it again: the same
    choice and rows, fewer model calls (``Calibration.calls_saved``). The unguarded run then costs a
    guard forward per model call. False samples every seed of every setting, as calibrations before
    2026-12-03 did.
    ``progress(done, total, stats)``
    counts sampled images; ``should_stop()`` returning True raises ``CalibrationStopped``.
    """
    started = time.monotonic()
    seeds = _check_args(guard, latents, seeds, target_ratio)
    confirm = _confirmation_seeds(seeds, confirm_seeds)
    train = latents.detach().float().cpu()
    train_px = _decoded(decode, train) if decode is not None else None
    k = max(1, min(L2_K, train.shape[0] - 1))
    calls = [0]
    paths: dict[int, _Path] = {}   # unguarded paths seen so far, by seed (reuse_unguarded)
    untrusted: set[int] = set()    # seeds whose paths disagreed: never reused
    calls_saved = [0]              # what sampling the reused seeds again would have cost
    n, m = len(seeds), len(confirm)
    per_scale = n * sum(len(w) for w in ladder(guard))
    total = [n + per_scale + m]  # grows when a stronger scale or another confirmation is needed
    done = [0]

    def counting(settings: dict[str, Any] | None, trace: _Trace | None) -> GuideFn:
        def guide(denoised: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
            calls[0] += int(denoised.shape[0])  # one model call per image and step
            if trace is None:
                return denoised if settings is None else guard.guide(denoised, x, sigma, **settings)
            if settings is None:
                out, p = denoised, guard.probability(denoised.detach().float(), guard.space.sigma_min)
            else:
                out, p = guard.guide_traced(denoised, x, sigma, **settings)
            trace.add(denoised, out, x, sigma, p)
            return out
        return guide

    def advance(count: int, what: str) -> None:
        done[0] += count
        if progress is not None:
            progress(min(done[0], total[0]), total[0], {"setting": what, "model_calls": calls[0]})

    def run(settings: dict[str, Any] | None, chunk: list[int], what: str) -> Tensor:
        if should_stop is not None and should_stop():
            raise CalibrationStopped(f"calibration stopped while sampling {what}")
        # The unguarded run gets a guide that returns denoised unchanged: the samples are those of
        # no guide, and the model calls are counted the same way as for the guided runs.
        trace = _Trace() if reuse_unguarded else None
        out = sample(counting(settings, trace), list(chunk))
        out = _check_samples(out, chunk, train)
        if trace is not None:
            for seed, path in trace.paths(chunk, out).items():
                if seed in untrusted:
                    continue
                if seed not in paths:
                    paths[seed] = path
                elif not paths[seed].merge(path):
                    del paths[seed]
                    untrusted.add(seed)
        advance(len(chunk), what)
        return out

    def sample_or_reuse(settings: dict[str, Any], chunk: list[int], what: str) -> tuple[Tensor, int]:
        """The samples of ``chunk`` under ``settings``: sampled, or the unguarded sample of a seed whose
        gate stays shut all along its path. Also returns how many were reused."""
        shut = [s for s in chunk if s in paths and paths[s].shut(settings)]
        todo = [s for s in chunk if s not in shut]
        got = dict(zip(todo, run(settings, todo, what))) if todo else {}
        for s in shut:
            got[s] = paths[s].sample
            calls_saved[0] += len(paths[s].sigmas)
        if shut:
            advance(len(shut), what)
        return torch.stack([got[s] for s in chunk]), len(shut)

    def ratios_of(x: Tensor) -> Tensor:
        """Calibrated ℓ2 ratio per sample (with a decoder: the smaller of latents and pixels)."""
        r = calibrated_l2_ratio(x, train, k)
        if train_px is not None:
            r = torch.minimum(r, calibrated_l2_ratio(_decoded(decode, x), train_px, k))
        return r

    # 1. the unguarded run, shared by every setting
    base = torch.cat([run(None, seeds[i:i + CHUNK], "unguarded") for i in range(0, n, CHUNK)])
    base_ratio = ratios_of(base)
    copied = base_ratio < REPLICA_L2_RATIO
    u = int(copied.sum())
    unguarded_calls = calls[0]
    gentlest = ladder(guard)[0][0]
    if u == 0:
        cal = Calibration(dict(gentlest), [], list(seeds), 0.0, 0.0, True, True, target_ratio, calls[0],
                          time.monotonic() - started, sampler_description, base, copied, 0,
                          ranking=_ranking(count_moved, widen_on_spoil, count_copies))
        _store(guard, cal)
        if progress is not None:
            progress(total[0], total[0], {"setting": "done", "model_calls": calls[0]})
        return cal

    allowed = max(0, allowed_copies(u, n, target_ratio))
    # over probes and confirmation seeds together: the same goal, with the margin of n + m seeds
    pooled = max(allowed, _allowed_at(target_ratio * u / n, n + m)) if m else allowed
    reference = _Reference.of(torch.cat([train, base]), base_ratio[~copied])
    # Copy seeds first: a setting that cannot remove them is abandoned after a chunk or two.
    order = [i for i in range(n) if copied[i]] + [i for i in range(n) if not copied[i]]
    rows: list[_Row] = []
    best: list[_Row] = []  # the passing, confirmed setting that costs least so far
    # Passed the probes, not yet confirmed: a window's gates are confirmed once, at its end, starting
    # with the one that costs least, rather than each time a gate beats the best so far.
    pending: list[_Row] = []

    def cost(row: _Row) -> float:
        """What a setting costs: spoiled probes, plus (count_moved) the moved non-copies."""
        value = row.n_spoiled() + (row.moved() if count_moved else 0.0)
        return round(value, COST_DECIMALS) if reuse_unguarded else value

    def rank(row: _Row) -> tuple[float, int]:
        """Cost first; of two that cost the same, the one considered first wins."""
        return cost(row), row.order

    def beats(a: _Row, b: _Row) -> bool:
        """Does ``a`` rank before ``b``? Costs only grow as probes are added, so a setting that
        part-measured no longer beats ``a`` never will."""
        return rank(a) < rank(b)

    def bar() -> _Row | None:
        """The setting to beat: the least costly of the confirmed best and the pending ones."""
        return min(best + pending, key=rank, default=None)

    def measure(row: _Row, chunk: list[int], what: str) -> tuple[Tensor, Tensor]:
        t0, c0 = time.monotonic(), calls[0]
        x, reused = sample_or_reuse(row.settings, chunk, what)
        row.model_calls += calls[0] - c0
        row.reused += reused
        row.seconds += time.monotonic() - t0
        ratio = ratios_of(x)
        return x, ratio

    def evaluate(row: _Row, full: bool = False) -> bool:
        """Sample the seeds this row still lacks; stop once it can no longer reach the copy target
        or beat the best passing setting so far (unless ``full``). True when every probe was measured."""
        todo = [i for i in order if i not in row.copies]
        for j in range(0, len(todo), CHUNK):
            if not full and row.n_copies() > allowed:
                row.abandoned = "too many copies"
                return False
            ahead = bar()
            if not full and ahead is not None and beats(ahead, row):
                worse = "spoils or moves" if count_moved else "spoils"
                row.abandoned, row.set_aside = f"{worse} more than {describe(ahead.settings)}", True
                return False
            idx = todo[j:j + CHUNK]
            x, ratio = measure(row, [seeds[i] for i in idx], describe(row.settings))
            flags, bad = ratio < REPLICA_L2_RATIO, reference.spoiled(x, ratio)
            for q, i in enumerate(idx):
                row.copies[i] = bool(flags[q])
                row.spoiled[i] = bool(bad[q]) and (count_copies or not row.copies[i])
                row.samples[i] = x[q]
                if not copied[i]:
                    row.change[i] = float((x[q] - base[i]).norm() / base[i].norm().clamp_min(1e-12))
        row.abandoned, row.set_aside = "", False
        return True

    def confirmed(row: _Row) -> bool:
        """Does the row pass again with the confirmation seeds added? Stops once it cannot."""
        if m == 0:
            return True
        if row.confirmed is None:
            if any(r.confirmed is not None for r in rows):
                total[0] += m  # the first confirmation was counted in total from the start
            row.confirmed = True
            for j in range(0, m, CHUNK):
                chunk = confirm[j:j + CHUNK]
                _, ratio = measure(row, chunk, "confirming " + describe(row.settings))
                for seed, flag in zip(chunk, (ratio < REPLICA_L2_RATIO).tolist()):
                    row.confirm_copies[seed] = bool(flag)
                if row.n_copies() + sum(row.confirm_copies.values()) > pooled:
                    row.confirmed = False
                    break
        return row.confirmed

    def consider(row: _Row) -> None:
        """Keep row for confirmation if it passes on every probe and beats the best so far."""
        if len(row.copies) == n and row.n_copies() <= allowed and (not best or beats(row, best[0])):
            if not confirm_each:
                pending.append(row)
            elif confirmed(row):
                best[:] = [row]

    def settle() -> None:
        """Confirm the pending settings, least costly first, until one passes (it becomes the best)
        or none is left. When one fails, the settings set aside because it cost less are measured
        further: the choice is the one confirming each new best at once would make, with fewer
        confirmation runs (one per window where every confirmation passes)."""
        while pending:  # each beat the best when it was added, and the best changes only here
            first = min(pending, key=rank)
            pending.remove(first)
            if confirmed(first):
                best[:] = [first]
                pending.clear()
                return
            for row in rows:
                if row.set_aside and evaluate(row):
                    consider(row)

    considered = 0
    for s_i, scale in enumerate(SCALES):
        if s_i:
            total[0] += per_scale  # nothing passed at the gentler scale
        for window in ladder(guard, scale):
            # Test the window with its strongest α first: if even that cannot reach the target, the
            # gentler gates of the same window will not either, and the window is skipped. It is
            # considered after them (its order), so it is kept only if it costs less than every one.
            first = considered  # this window's gates are considered first .. first + len(window) - 1
            considered += len(window)
            strongest = _Row(window[-1], order=first + len(window) - 1)
            rows.append(strongest)
            evaluate(strongest)
            if strongest.n_copies() > allowed:
                continue
            # Every gate of a window that can pass is measured: the gentlest passing gate may leave
            # copies pushed just past the line (near copies) that a stronger one moves away.
            for i, settings in enumerate(window[:-1]):
                row = _Row(settings, order=first + i)
                rows.append(row)
                evaluate(row)
                consider(row)
            consider(strongest)
            settle()
            # A wider window is tried only while the best setting still spoils (not widen_on_spoil:
            # costs) more than one probe: relative change compares the gates of one window better than
            # it compares windows, so moved non-copies alone do not send the search wider.
            if best and (best[0].n_spoiled() if widen_on_spoil else cost(best[0])) <= SPOIL_STOP:
                break
        if best:
            break

    chosen = best[0] if best else None
    reached = chosen is not None
    if chosen is None:
        # Nothing reached the target: measure the most promising setting on every probe and say so.
        chosen = min(rows, key=lambda r: (r.n_copies() / max(1, len(r.copies)),
                                          r.n_spoiled() / max(1, len(r.copies))))
        evaluate(chosen, full=True)
    flags = torch.tensor([chosen.copies[i] for i in range(n)])
    cal = Calibration(dict(chosen.settings), [_row_dict(r, r is chosen, allowed, n, cost(r)) for r in rows],
                      list(seeds), u / n, float(flags.double().mean()), reached, False, target_ratio,
                      calls[0], time.monotonic() - started, sampler_description, base, copied, allowed,
                      torch.stack([chosen.samples[i] for i in range(n)]), flags, chosen.n_spoiled() / n,
                      list(confirm), sum(chosen.confirm_copies.values()) if chosen.confirmed else None, pooled,
                      _ranking(count_moved, widen_on_spoil, count_copies), sum(r.reused for r in rows), calls_saved[0])
    cal.rows.insert(0, {"label": "unguarded", "settings": None, "copies": u, "evaluated": n, "copy_rate": u / n,
                        "spoiled": int(reference.spoiled(base, base_ratio).sum()), "change_noncopy": None,
                        "cost": None, "confirm": None, "model_calls": unguarded_calls, "reused": 0, "seconds": None,
                        "outcome": "measured"})
    _store(guard, cal)
    if progress is not None:
        progress(total[0], total[0], {"setting": "done", "model_calls": calls[0]})
    return cal


def _ranking(count_moved: bool, widen_on_spoil: bool, count_copies: bool = False) -> str:
    copies = "" if count_copies else COPIES_LEFT
    if not count_moved:  # the cost is the spoiled probes: both widening rules are the same
        return "spoiled" + copies
    return "spoiled+moved" + ("; windows widened on spoiled" if widen_on_spoil else "") + copies


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


def _row_dict(row: _Row, chosen: bool, allowed: int, n: int, cost: float) -> dict[str, Any]:
    evaluated = len(row.copies)
    changes = list(row.change.values())
    confirm_copies = sum(row.confirm_copies.values())
    if chosen:
        outcome = "chosen"
    elif row.abandoned:
        outcome = "abandoned: " + row.abandoned
    elif row.n_copies() > allowed:
        outcome = "too many copies"
    elif row.confirmed is False:
        outcome = f"failed confirmation ({confirm_copies} copies on {len(row.confirm_copies)} new seeds)"
    else:
        outcome = "passed" if evaluated == n else "not finished"
    return {
        "label": describe(row.settings),
        "settings": dict(row.settings),
        "copies": row.n_copies(),
        "evaluated": evaluated,
        # over the probes measured; copy seeds come first, so a partial rate overstates the full one
        "copy_rate": row.n_copies() / max(1, evaluated),
        "complete": evaluated == n,
        "spoiled": row.n_spoiled(),
        "change_noncopy": (sum(changes) / len(changes)) if changes else None,
        "cost": round(cost, 3),  # what the ranking counted, over the probes measured
        # copies on the confirmation seeds measured (None when the row was never confirmed)
        "confirm": f"{confirm_copies}/{len(row.confirm_copies)}" if row.confirm_copies else None,
        "model_calls": row.model_calls,
        "reused": row.reused,
        "seconds": round(row.seconds, 2),
        "outcome": outcome,
    }


def _store(guard: Guard, cal: Calibration) -> None:
    info = dict(guard.info)
    info["calibration"] = cal.summary()
    guard.info = info


def _decoded(decode: DecodeFn, x: Tensor) -> Tensor:
    out = decode(x)
    if not isinstance(out, torch.Tensor) or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"decode must return one image per latent ({x.shape[0]}), got {got}")
    if not torch.isfinite(out).all():
        raise ValueError("decode returned NaN or infinite values")
    return out.detach().float().cpu()


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


def _check_samples(out: Any, chunk: Sequence[int], train: Tensor) -> Tensor:
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
