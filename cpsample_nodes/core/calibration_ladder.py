"""The settings calibration tries, in order, and their names for people."""
from __future__ import annotations

from typing import Any

from .guard import DEFAULT_SCALE, Guard

# Windows are noise-to-signal ratios (σ itself for vp, σ/(1−σ) for flow), narrow to all steps: a
# narrow window only touches the late steps, where each push is at most max_step·r (NoiseSpace.push_bound).
WINDOWS: tuple[float | None, ...] = (1.0, 2.0, 4.0, None)
ALPHAS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
MAX_STEP = 1.0
# Pushes, (scale, step cap), tried in turn only while no setting of the gentler one passes, or the best
# spoils more than a tenth of the probes (calibration_search.Search.run). The scale
# helps a guard whose gradient at a copy is too small to reach the cap; the cap helps where the model
# pulls harder than the standard cap can push back: with CFG 5 on the prompted LoRA benchmark no
# setting at cap 1 passed on Euler ancestral, at any scale, and cap 2 left no copy on 64 probes for
# every guard and sampler while cap 4 spoiled digits (docs/design-log.md, "A stronger step cap").
STRENGTHS: tuple[tuple[float, float], ...] = (
    (DEFAULT_SCALE, MAX_STEP), (3 * DEFAULT_SCALE, 2 * MAX_STEP), (10 * DEFAULT_SCALE, 2 * MAX_STEP),
    (30 * DEFAULT_SCALE, 2 * MAX_STEP), (100 * DEFAULT_SCALE, 2 * MAX_STEP))


def window_sigma(guard: Guard, ratio: float | None) -> float | None:
    """σ_max in the guard's space for a noise-to-signal ratio (None: every step)."""
    if ratio is None:
        return None
    return float(ratio) if guard.space.kind == "vp" else float(ratio / (1.0 + ratio))


def ladder(guard: Guard, strength: tuple[float, float] = STRENGTHS[0]) -> list[list[dict[str, Any]]]:
    """Candidate settings at one (scale, step cap), one list per σ window (narrow first), α ascending
    within a window."""
    scale, max_step = strength
    return [[{"scale": float(scale), "alpha": a, "max_step": float(max_step), "sigma_max": window_sigma(guard, w)}
             for a in ALPHAS] for w in WINDOWS]


def describe(settings: dict[str, Any]) -> str:
    window = "all steps" if settings.get("sigma_max") is None else f"σ ≤ {settings['sigma_max']:.3g}"
    scale = settings.get("scale", DEFAULT_SCALE)
    strength = "" if scale == DEFAULT_SCALE else f", scale {scale:g}"
    cap = settings.get("max_step", MAX_STEP)
    capped = "" if cap == MAX_STEP else (", no step cap" if cap is None else f", step cap {cap:g}")
    return f"α {settings['alpha']:g}, {window}{strength}{capped}"
