"""The settings a guard is applied with: its calibration, or the values set by hand.

Both hosts offer a scale and an α and a switch "use the guard's calibration". A calibrated guard
brings the guide settings measured on the user's model (scale, α, max step, σ window); they replace
the manual ones unless the switch is off, the setting is pinned by hand (an X/Y/Z plot axis), or the
scale is 0 (protection off, whatever the calibration says). ``description`` says which ran, for the
node's text, the log and the infotext.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core import Guard


@dataclass(frozen=True)
class AppliedSettings:
    guide: dict[str, Any]  # Guard.guide keyword arguments: scale, alpha (and a calibration's max_step, sigma_max)
    calibrated: bool
    description: str  # e.g. "calibrated settings scale 1000, α 0.2, σ ≤ 2; copies on 32 probes 50% → 3%"
    pinned: frozenset[str] = field(default_factory=frozenset)

    @property
    def scale(self) -> float:
        return float(self.guide["scale"])

    @property
    def alpha(self) -> float:
        return float(self.guide["alpha"])


def resolve_settings(guard: Guard, scale: float, alpha: float, use_calibration: bool = True,
                     pinned: frozenset[str] = frozenset()) -> AppliedSettings:
    """The guide settings for ``guard``. A calibration that does not check out (a file edited by hand)
    raises ValueError naming the value; with ``use_calibration`` off it is never read."""
    manual = {"scale": float(scale), "alpha": float(alpha)}
    if scale == 0:
        return AppliedSettings(manual, False, "scale 0, protection off", pinned)
    cal = guard.calibrated_settings() if use_calibration else None
    if cal is None:
        return AppliedSettings(manual, False, f"manual settings scale {scale:g}, α {alpha:g}"
                                              f"{_why_manual(guard, use_calibration)}", pinned)
    used = {**manual, **{k: v for k, v in cal.items() if k not in pinned}}
    return AppliedSettings(used, True, f"calibrated settings {format_settings(used)}{_rates(guard)}", pinned)


def _why_manual(guard: Guard, use_calibration: bool) -> str:
    if guard.info.get("calibration") is not None:
        return " (the guard's calibration is ignored: manual settings chosen)"
    if use_calibration:
        return " (this guard has no calibration: CPSample Calibrate Guard measures one on your model)"
    return ""


def _rates(guard: Guard) -> str:
    """What the calibration measured: the copy rate before → after, and whether it missed its target."""
    info = guard.info.get("calibration") or {}
    before, after = info.get("unguarded_rate"), info.get("calibrated_rate")
    text = ""
    if isinstance(before, (int, float)) and isinstance(after, (int, float)):
        text = f"; copies on {info.get('probes', '?')} probes {before:.0%} → {after:.0%}"
    if info.get("reached") is False:
        text += " (the calibration missed its target: the best setting found; see its report)"
    return text


def format_settings(settings: dict[str, Any]) -> str:
    """e.g. 'scale 1000, α 0.2, σ ≤ 2, max step 1' (guide keyword arguments for people)."""
    parts = []
    for k, v in settings.items():
        if k == "sigma_max":
            parts.append("every step" if v is None else f"σ ≤ {v:g}")
        elif k == "max_step":
            parts.append(f"max step {'none' if v is None else format(v, 'g')}")
        else:
            parts.append(f"{'α' if k == 'alpha' else k} {v:g}")
    return ", ".join(parts)
