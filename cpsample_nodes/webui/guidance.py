"""The guidance step both webuis run, and Forge's post-CFG hook.

Every step of a protected generation hands over the CFG result (an x0 prediction), the noisy
latents x and σ in k-diffusion form; the guard's gradient moves the x0 prediction away from its
training images where it is confident, inside the sampling window. Forge gives exactly these
three to a post-CFG function on a clone of its UNet patcher (as ComfyUI does, for every sampler);
A1111 needs a translation first (``a1111.py``).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Hashable

import torch

from ..core import Guard, NoiseSpace
from .family import forge_noise_space
from .settings import Settings

try:  # what the gate did, summarised per generation (absent in older checkouts)
    from ..core.gate_log import GateLog, describe as describe_gate
except ImportError:  # pragma: no cover
    GateLog = None
    describe_gate = None

Tensor = torch.Tensor
# Guide settings a guard's calibration may set (Guard.calibrated_settings, when the guard has one).
CALIBRATED_KEYS = ("scale", "alpha", "max_step", "sigma_max")


def calibration(guard: Guard) -> dict[str, Any]:
    """The guard's own calibrated guide settings, or {} (none recorded, or a core without calibration)."""
    fn = getattr(guard, "calibrated_settings", None)
    if not callable(fn):
        return {}
    cal = fn() or {}
    accepted = inspect.signature(guard.guide).parameters
    # None is a value here (max_step None: uncapped; sigma_max None: every step)
    return {k: v for k, v in cal.items() if k in CALIBRATED_KEYS and k in accepted}


def guide_kwargs(guard: Guard, settings: Settings, pinned: frozenset[str] = frozenset()) -> tuple[dict, bool]:
    """The keyword arguments for ``Guard.guide``: the settings, with the guard's calibration on top
    when asked for (scale, alpha, max_step, sigma_max), except for settings pinned by hand (an X/Y/Z
    axis). Returns (kwargs, calibrated)."""
    kw: dict[str, Any] = {"scale": settings.scale, "alpha": settings.alpha, "objective": settings.objective,
                          "guard_input": settings.guard_input}
    # scale 0 turns protection off whatever the calibration says (as Protect Model in ComfyUI)
    cal = calibration(guard) if settings.use_calibration and settings.scale > 0 else {}
    cal = {k: v for k, v in cal.items() if k not in pinned}
    kw.update(cal)
    return kw, bool(cal)


class Guidance:
    """One generation's guidance: the guard, the guide settings and the sampling window."""

    def __init__(self, guard: Guard, kwargs: dict[str, Any], start_percent: float, end_percent: float):
        self.guard = guard
        self.kwargs = dict(kwargs)
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.steps = 0  # steps the guard was asked about (inside the window)
        self.log = GateLog() if GateLog is not None else None
        self._bound: tuple[Hashable, Guard, float, float] | None = None

    @property
    def scale(self) -> float:
        return float(self.kwargs.get("scale", 0.0))

    def _bind(self, key: Hashable, make_space: Callable[[], NoiseSpace],
              percent_to_sigma: Callable[[float], float]) -> tuple[Guard, float, float]:
        """The guard seen through the host's noise space, and the window as σ bounds (cached per space)."""
        if self._bound is None or self._bound[0] != key:
            g = self.guard.with_space(make_space())
            hi = float(percent_to_sigma(self.start_percent)) if self.start_percent > 0 else float("inf")
            lo = float(percent_to_sigma(self.end_percent)) if self.end_percent < 1 else 0.0
            self._bound = (key, g, lo, hi)
        return self._bound[1:]

    def __call__(self, denoised: Tensor, x: Tensor, sigma: Tensor, key: Hashable,
                 make_space: Callable[[], NoiseSpace], percent_to_sigma: Callable[[float], float]) -> Tensor:
        """The guided x0 prediction; ``denoised`` itself outside the window or at scale 0."""
        if self.scale == 0:
            return denoised
        g, lo, hi = self._bind(key, make_space, percent_to_sigma)
        s = sigma.detach().float().reshape(-1)
        inside = (s >= lo) & (s <= hi)
        if not bool(inside.any()):
            return denoised
        p = next(g.net.parameters())
        if p.device != x.device:
            with torch.inference_mode(False):  # parameters moved in inference mode could not be differentiated
                g.net.to(x.device)
        self.steps += 1
        out = g.guide(denoised, x, sigma, **self.kwargs)
        if s.numel() > 1 and not bool(inside.all()):  # per-sample σ: samples outside the window stay as they are
            view = (-1,) + (1,) * (denoised.dim() - 1)
            out = torch.where(inside.to(out.device).view(view), out, denoised)
        if self.log is not None:
            self.log.record(sigma, denoised, out)
        return out

    def summary(self) -> str | None:
        """One line on what the gate did in this generation, or None when nothing was recorded."""
        if self.log is None or describe_gate is None:
            return None
        return describe_gate(self.log.summary())


class ForgePostCFG:
    """Forge's ``sampler_post_cfg_function``: args carry the CFG result, x, σ and the model, whose
    predictor is the noise schedule of this very sampling (a sampler-specific one included)."""

    def __init__(self, guidance: Guidance):
        self.guidance = guidance
        self.cpsample_guard = True  # how a second CPSample hook on the same UNet is recognised

    def __call__(self, args: dict) -> Tensor:
        denoised = args["denoised"]
        predictor = getattr(args.get("model"), "predictor", None)
        if predictor is None:
            return denoised
        return self.guidance(denoised, args["input"], args["sigma"], key=id(predictor),
                             make_space=lambda: forge_noise_space(predictor),
                             percent_to_sigma=predictor.percent_to_sigma)


def hook_forge_unet(unet, guidance: Guidance):
    """A clone of Forge's UNet patcher with the guidance as a post-CFG function (the original is
    untouched; Forge restores its UNet before every sampling, so nothing outlives the generation)."""
    clone = unet.clone()
    clone.set_model_sampler_post_cfg_function(ForgePostCFG(guidance))
    return clone
