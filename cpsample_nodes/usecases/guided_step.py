"""The guided step of a protected sampling: what runs inside the hosts' post-CFG function.

Every step hands over the CFG result (an x0 prediction), the noisy latents x and σ in k-diffusion
form. Inside the sampling window the guard's gradient moves the x0 prediction away from its training
images where it is confident; outside it, or at scale 0, ``denoised`` itself comes back. ComfyUI and
Forge call a post-CFG function with one dict (``PostCFG``); A1111 translates its CFG callbacks first
(webui/a1111.py) and calls ``GuidedStep`` directly.
"""
from __future__ import annotations

from typing import Callable, Hashable, Optional, Tuple

import torch

from ..core import Guard, NoiseSpace
from ..core.gate_log import GateLog, describe
from ..core.guard import INPUTS, OBJECTIVES
from .settings import AppliedSettings

Tensor = torch.Tensor
# What the guard reads, the core's default first ("denoised" = the x0 prediction): the hosts' choices.
GUARD_INPUTS = ("denoised",) + tuple(i for i in INPUTS if i != "denoised")
# How a post-CFG function is recognised (a second Protect node, calibration refusing a protected model).
MARKER = "cpsample_guard"
# What the host's sampling offers the step: an identity (a new one rebinds the guard), the noise space
# of this sampling (made once per identity) and its percent → σ.
Sampling = Tuple[Hashable, Callable[[], NoiseSpace], Callable[[float], float]]


class GuidedStep:
    """One protected model's guidance: the guard, the guide settings and the sampling window. ``gate``
    records what the gate did; a host resets it per sampling run and reports ``summary()``."""

    def __init__(self, guard: Guard, settings: AppliedSettings, start_percent: float = 0.0,
                 end_percent: float = 1.0, objective: str = "uncertainty", guard_input: str = "denoised"):
        if start_percent >= end_percent:
            raise ValueError(f"start_percent ({start_percent}) must be below end_percent ({end_percent})")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if guard_input not in GUARD_INPUTS:
            raise ValueError(f"guard_input must be one of {', '.join(GUARD_INPUTS)}, got {guard_input!r}")
        self.guard = guard
        self.settings = settings
        self.kwargs = {**settings.guide, "objective": objective, "guard_input": guard_input}
        self.start_percent, self.end_percent = float(start_percent), float(end_percent)
        self.steps = 0  # model evaluations the guard was asked about (inside the window)
        self.gate = GateLog()
        self._bound: tuple[Hashable, Guard, float, float] | None = None

    @property
    def scale(self) -> float:
        return float(self.kwargs["scale"])

    def _bind(self, key: Hashable, make_space: Callable[[], NoiseSpace],
              percent_to_sigma: Callable[[float], float]) -> tuple[Guard, float, float]:
        """The guard seen through this sampling's noise space, and the window as σ bounds (cached per key)."""
        if self._bound is None or self._bound[0] != key:
            hi = float(percent_to_sigma(self.start_percent)) if self.start_percent > 0 else float("inf")
            lo = float(percent_to_sigma(self.end_percent)) if self.end_percent < 1 else 0.0
            if self.kwargs.get("sigma_max") is not None:  # a calibrated σ window narrows the percent window
                hi = min(hi, float(self.kwargs["sigma_max"]))
            self._bound = (key, self.guard.with_space(make_space()), lo, hi)
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
        if next(g.net.parameters()).device != x.device:
            with torch.inference_mode(False):  # parameters moved in inference mode could not be differentiated
                g.net.to(x.device)
        self.steps += 1
        out = g.guide(denoised, x, sigma, **self.kwargs)
        if not bool(inside.all()):  # per-sample σ: samples outside the window stay as they are
            view = (-1,) + (1,) * (denoised.dim() - 1)
            out = torch.where(inside.to(out.device).view(view), out, denoised)
        self.gate.record(sigma, denoised, out)
        return out

    def summary(self) -> str:
        """One line on what the gate did since the gate log's last reset."""
        return describe(self.gate.summary())


class PostCFG:
    """A guided step as ComfyUI's and Forge's post-CFG function. ``sampling(args)`` gives the host's
    ``Sampling`` for this call (from ``args["model"]``), or None where there is nothing to guide with."""

    def __init__(self, step: GuidedStep, sampling: Callable[[dict], Optional[Sampling]]):
        self.step = step
        self.sampling = sampling
        setattr(self, MARKER, True)

    def __call__(self, args: dict) -> Tensor:
        denoised = args["denoised"]
        found = self.sampling(args)
        if found is None:
            return denoised
        key, make_space, percent_to_sigma = found
        return self.step(denoised, args["input"], args["sigma"], key, make_space, percent_to_sigma)
