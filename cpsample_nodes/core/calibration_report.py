"""What ``calibrate`` found: the ``Calibration`` result, the record stored in the guard file, and its
report for people."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .calibration_ladder import describe
from .calibration_stats import CONFIDENCE, allowed_copies
from .guard import DEFAULT_SCALE

Tensor = torch.Tensor

# A guard whose chosen setting still spoils more than this share of the probes is called weak: in the
# calibration tables 4 of the 5 mixture calibrations above it missed FD ≤ 1.2 × (1.32–1.66 ×; the fifth
# 1.12 ×), and no digits calibration came near it (at most 3.1 %) (docs/protection.md, "Another
# machine, other guards").
WEAK_SPOIL = 0.1
# What a setting's cost counts, as stored in guard files (``info["calibration"]["ranking"]``). Files
# calibrated before 2026-12-03 may name an older rule there; the settings they hold apply all the same.
RANKING = "spoiled+moved; windows widened on spoiled; copies not counted as spoiled"
SPOILED_MEANS = "near copies, or std, mean, max |x| or high-frequency share outside the natural range"


@dataclass(kw_only=True)
class Calibration:
    """What ``calibrate`` found. ``settings`` go to ``guard.guide(denoised, x, sigma, **settings)``.

    ``rows``: one dict per setting tried, in the order tried, after the unguarded row.
    ``unguarded`` / ``calibrated``: the probe samples [n, C, H, W] without the guard and with the
    chosen settings (None when nothing was calibrated); ``copied`` / ``calibrated_copied``: which
    probes were copies."""
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
    spoiled_rate: float = 0.0  # share of probes the chosen settings spoil (calibration_stats.Reference)
    confirm_seeds: list[int] = field(default_factory=list)
    confirm_copies: int | None = None  # the chosen setting's copies on confirm_seeds (None: not confirmed)
    confirm_allowed: int = 0           # copies allowed over probes and confirmation seeds together
    reused: int = 0       # samples reused from paths already sampled (calibration_reuse), not sampled again
    calls_saved: int = 0  # the model calls sampling them again would have taken
    calls_replayed: int = 0  # model calls served from the starts of paths already sampled (calibration_probes.Replay)
    # why the chosen setting needed more than the standard push (calibration.push_limit): "gradient"
    # (the guard is weak) or "cap" (the model pulls hard); None when the standard push was enough
    push_limit: str | None = None

    @property
    def probes(self) -> int:
        return len(self.seeds)

    @property
    def weak_guard(self) -> bool:
        """The model copies and the guard missed the target, needed a stronger push because its own
        gradient at the copies is small (``push_limit`` "gradient"), or spoils more than ``WEAK_SPOIL``
        of the probes even with the chosen setting. In the calibration table the calibrations that raised
        the scale were guards that stopped training at a weak moment (docs/protection.md, "Where the weak
        guards come from"), and 4 of the 5 that spoiled over a tenth of the probes missed the quality goal.
        A push raised because the model pulls hard (``push_limit`` "cap", CFG) is not the guard's fault."""
        return bool(self.weak_reasons())

    def weak_reasons(self) -> list[str]:
        """Why this guard is weak on this model, in words (empty: it is not)."""
        if self.no_copies:
            return []
        if not self.reached:
            return ["no setting reached the target"]
        reasons = []
        if self.push_limit == "gradient":  # set only where a stronger push was chosen
            scale = float(self.settings.get("scale", DEFAULT_SCALE))
            reasons.append(f"it needed {scale / DEFAULT_SCALE:g}x the standard push")
        if self.spoiled_rate > WEAK_SPOIL:
            reasons.append(f"even the chosen setting spoils {self.spoiled_rate:.1%} of the probes")
        return reasons

    def summary(self) -> dict[str, Any]:
        """The JSON-able record stored in ``guard.info["calibration"]`` (nothing per image). Its keys are
        those of every earlier version: hosts read ``settings`` and show the scalars."""
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
            "ranking": RANKING,
            "sampler": self.sampler,
            "model_calls": self.model_calls,
            "model_calls_saved": self.calls_saved,
            "model_calls_replayed": self.calls_replayed,
            "push_limit": self.push_limit,
            "seconds": round(self.seconds, 2),
            "tried": [{"settings": r["settings"], "copies": r["copies"], "evaluated": r["evaluated"],
                       "spoiled": r["spoiled"], "confirm": r.get("confirm"), "outcome": r["outcome"]}
                      for r in self.rows],
        }

    def report(self) -> str:
        n, u = self.probes, int(self.copied.sum())
        lines = [f"calibration on {n} probe seeds" + (f" ({self.sampler})" if self.sampler else "") + ":",
                 f"unguarded: {u} of {n} probes copy a training image ({self.unguarded_rate:.1%})"]
        if self.no_copies:
            lines.append(f"no copies among {n} probes: nothing to calibrate; keeping the gentlest setting "
                         f"({describe(self.settings)})")
        else:
            lines += self._rules(u) + _table(self.rows) + self._verdict()
        lines.append(f"{self.model_calls} model calls, {self.seconds:.1f} s" + (
            f"; {self.calls_saved} more saved by reusing {self.reused} samples whose path was already "
            f"sampled (unguarded where the gate stayed shut, or under a gate that opened alike)"
            if self.calls_saved else "") + (
            f"; {self.calls_replayed} taken from paths already sampled, up to where a setting pushed otherwise"
            if self.calls_replayed else ""))
        return "\n".join(lines)

    def _rules(self, u: int) -> list[str]:
        """The report's lines on the target, the confirmation and the cost."""
        n = self.probes
        noun = "copy" if self.allowed == 1 else "copies"
        lines = [f"target: at most {self.allowed} {noun} of {n}, so that with {CONFIDENCE:.0%} confidence new "
                 f"seeds copy at most {self.target:g} x the unguarded rate ({self.target * self.unguarded_rate:.1%})"
                 + ("" if allowed_copies(u, n, self.target) >= 0 else
                    f"; {n} probes cannot show that for {u} copies, so none is allowed")]
        if self.confirm_seeds:
            lines.append(f"a setting that passes must pass again on {len(self.confirm_seeds)} confirmation "
                         f"seeds: at most {self.confirm_allowed} copies over all {n + len(self.confirm_seeds)} seeds")
        lines.append("change: the mean relative change of the probes that did not copy; cost: the spoiled probes "
                     "plus each probe that did not copy, counted by its change (at most 1); the passing setting "
                     "that costs least is chosen")
        return lines

    def _verdict(self) -> list[str]:
        """The report's lines on the choice, and on a weak guard."""
        lines = []
        verdict = "reaches the target" if self.reached else "MISSES the target (best found)"
        if self.confirm_copies is not None:
            lines.append(f"confirmed: {self.confirm_copies} copies on {len(self.confirm_seeds)} further seeds")
        lines.append(f"chosen: {describe(self.settings)}: {self.calibrated_rate:.1%} copies (unguarded "
                     f"{self.unguarded_rate:.1%}), {verdict}; spoils {self.spoiled_rate:.1%} of the probes "
                     f"({SPOILED_MEANS})")
        if self.push_limit == "cap":
            lines.append(f"the standard step cap was not enough (nothing passed under it, or only by spoiling "
                         f"over {WEAK_SPOIL:.0%} of the probes): this model pulls its samples to the copies "
                         f"harder than that (as with CFG), so the chosen setting allows a step cap of "
                         f"{self.settings.get('max_step'):g}")
        if self.weak_guard:
            lines.append("this guard is weak on this model: " + "; ".join(self.weak_reasons()) +
                         ". A guard trained again with another seed is often stronger and protects with "
                         "gentler settings.")
        return lines


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per setting tried: copies, confirmation, spoiled, change, cost, calls and outcome."""
    head = f"{'setting':<34}{'copies':>8}{'confirm':>9}{'spoiled':>9}{'change':>8}{'cost':>7}{'calls':>8}  outcome"
    lines = [head, "-" * len(head)]
    for r in rows:
        ch = "" if r["change_noncopy"] is None else f"{r['change_noncopy']:.3f}"
        cost = "" if r.get("cost") is None else f"{r['cost']:.1f}"
        copies = f"{r['copies']}/{r['evaluated']}"
        conf = r.get("confirm") or ""
        lines.append(f"{r['label']:<34}{copies:>8}{conf:>9}{r['spoiled']:>9}{ch:>8}{cost:>7}"
                     f"{r['model_calls']:>8}  {r['outcome']}")
    return lines
