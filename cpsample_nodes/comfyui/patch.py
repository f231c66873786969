"""Protect a MODEL: one sampler post-CFG function that adds the guard's gradient to the x0 prediction.

The post-CFG hook (ModelPatcher.set_model_sampler_post_cfg_function, same arguments in ComfyUI 0.3.64 …
0.38) receives the CFG result `denoised`, the noisy `input` and `sigma`; its output is what every
sampler steps on, and several such functions chain (PAG, SAG, … compose). The model is cloned, never
mutated; model_sampling is read per call, so a ModelSampling* node placed after this one is honoured.
"""
from __future__ import annotations

import torch

from . import host
from .events import GateReport
from ..core.gate_log import GateLog
from ..core.guard import INPUTS

# What the guard reads, the core's default first ("denoised" = the x0 prediction).
GUARD_INPUTS = ("denoised",) + tuple(i for i in INPUTS if i != "denoised")

# Functions are recognised by this attribute (tests and a second Protect node look for it).
MARKER = "cpsample_guard"


class GuardPostCFG:
    """Callable stored in model_options; holds the guard and the settings."""

    def __init__(self, guard, scale: float, alpha: float, start_percent: float, end_percent: float,
                 objective: str = "uncertainty", guard_input: str | None = None, extra: dict | None = None):
        self.guard = guard
        self.guard_input = guard_input
        # Further guide keyword arguments (a calibration's max_step / sigma_max); empty = the guide's defaults.
        self.extra = dict(extra or {})
        self.scale = float(scale)
        self.alpha = float(alpha)
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.objective = objective
        self._spaces = {}
        self.calls = 0
        # What the gate did in the current sampling run (reset and reported by events.GateReport).
        self.gate = GateLog()
        setattr(self, MARKER, True)

    def _guard_for(self, ms, device):
        key = id(ms)
        g = self._spaces.get(key)
        if g is None:
            g = self.guard.with_space(host.noise_space(ms))
            self._spaces = {key: g}
        p = next(g.net.parameters())
        if p.device != device:
            with torch.inference_mode(False):  # parameters moved in inference mode could not be differentiated
                g.net.to(device)
        return g

    def _window(self, ms):
        hi = float(ms.percent_to_sigma(self.start_percent)) if self.start_percent > 0 else float("inf")
        lo = float(ms.percent_to_sigma(self.end_percent)) if self.end_percent < 1 else 0.0
        if self.extra.get("sigma_max") is not None:  # a calibrated σ window narrows the percent window
            hi = min(hi, float(self.extra["sigma_max"]))
        return lo, hi

    def __call__(self, args: dict):
        denoised = args["denoised"]
        if self.scale == 0:
            return denoised
        sigma = args["sigma"]
        model = args.get("model")
        ms = model.model_sampling if model is not None and hasattr(model, "model_sampling") else None
        if ms is None:
            return denoised
        lo, hi = self._window(ms)
        s = sigma.detach().float().reshape(-1)
        inside = (s >= lo) & (s <= hi)
        if not bool(inside.any()):
            return denoised
        x = args["input"]
        g = self._guard_for(ms, x.device)
        self.calls += 1
        kw = {"guard_input": self.guard_input} if self.guard_input else {}
        kw.update(self.extra)
        out = g.guide(denoised, x, sigma, scale=self.scale, alpha=self.alpha, objective=self.objective, **kw)
        if not bool(inside.all()):  # per-sample σ (rare): keep samples outside the window untouched
            view = (-1,) + (1,) * (denoised.dim() - 1)
            if s.numel() == 1:
                return out
            out = torch.where(inside.to(out.device).view(view), out, denoised)
        self.gate.record(sigma, denoised, out)
        return out


def protect(model, guard, scale: float, alpha: float, start_percent: float, end_percent: float,
            objective: str = "uncertainty", guard_input: str | None = None, extra: dict | None = None,
            node_id: str | None = None):
    """A clone of ``model`` with the guard's post-CFG function; ``model`` itself when scale is 0.
    ``node_id``: the Protect Model node that gets the gate report after each sampling run.
    ``extra``: further ``Guard.guide`` keyword arguments (max_step, sigma_max of a calibration)."""
    host.check_guard(guard, model)
    if start_percent >= end_percent:
        raise ValueError(f"start_percent ({start_percent}) must be below end_percent ({end_percent})")
    if scale == 0:
        return model
    m = model.clone()
    if guard_input is not None and guard_input not in GUARD_INPUTS:
        raise ValueError(f"guard_input must be one of {', '.join(GUARD_INPUTS)}, got {guard_input!r}")
    fn = GuardPostCFG(guard, scale, alpha, start_percent, end_percent, objective, guard_input, extra)
    m.set_model_sampler_post_cfg_function(fn)
    _report_gate(m, fn, node_id)
    return m


def _report_gate(m, fn: GuardPostCFG, node_id: str | None) -> None:
    """Wrap each sampling run of ``m`` so the gate's work is reported after it (older hosts without
    wrappers protect the same, without the report)."""
    try:
        from comfy.patcher_extension import WrappersMP
    except ImportError:
        return
    if hasattr(m, "add_wrapper_with_key"):
        m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, MARKER, GateReport(fn.gate, node_id))
