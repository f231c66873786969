"""Noise spaces: how a host noises clean latents, and what a network sees of them.

Two families cover the models ComfyUI and A1111 run:
- ``vp``  (EPS and v-prediction: SD1.5, SD2, SDXL): x = x0 + σ·ε, network input x/√(σ²+1).
- ``flow`` (rectified flow: SD3, Flux, most DiTs): x = (1−σ)·x0 + σ·ε, σ in (0, 1), input x.

``NoiseSpace.from_host`` wraps a host's own functions (ComfyUI's ``model_sampling``) so the guard is
trained on exactly the noise its model samples with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

Tensor = torch.Tensor

# Above these noise levels no classifier can tell the training images apart, so nothing there
# needs to be (or can be) memorised: the latents are mostly noise.
MEMORISABLE_MAX = {"vp": 1.0, "flow": 0.5}
# Edges of the σ bands in which training accuracy is reported.
BAND_EDGES = {"vp": (0.1, 0.3, 1.0, 3.0), "flow": (0.1, 0.25, 0.5, 0.75)}
KINDS = ("vp", "flow")
# Where the guide's push stops growing with the noise-to-signal ratio r, per kind. vp: above the σ_max
# of SD1.5/SDXL's schedule (14.6), which every benchmark samples within, so only zero-terminal-SNR
# schedules (σ up to about 4,500) meet it. flow: r = 4 (σ = 0.8), the widest σ window calibration
# tries; flow schedules start at σ = 1, where r is infinite, and a ceiling of 15 there still pulled a
# batch together (3 of 8 samples distinct against 7 unguarded) where 4 did not (docs/design-log.md).
PUSH_RATIO_MAX = {"vp": 15.0, "flow": 4.0}


def as_sigma(sigma: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """σ as a float32 [B] tensor on like's device, from a scalar, [1] or [B] value."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=like.device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(batch)
    if s.numel() != batch:
        raise ValueError(f"sigma has {s.numel()} values for a batch of {batch}")
    return s


def _view(s: Tensor, x: Tensor) -> Tensor:
    return s.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


@dataclass
class NoiseSpace:
    kind: str
    sigma_min: float
    sigma_max: float
    name: str = ""
    # Host callables; None means the built-in formula of ``kind``.
    host_noise_scaling: Callable | None = field(default=None, repr=False)
    host_calculate_input: Callable | None = field(default=None, repr=False)
    host_percent_to_sigma: Callable | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"noise space kind must be one of {KINDS}, got {self.kind!r}")
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.kind == "flow" and self.sigma_max >= 1:
            raise ValueError(f"flow sigma_max must be below 1, got {self.sigma_max}")
        self.name = self.name or self.kind
        self._table: Tensor | None = None

    # --- constructors -----------------------------------------------------------------------
    @classmethod
    def vp(cls, sigma_min: float = 0.0292, sigma_max: float = 14.6146) -> "NoiseSpace":
        return cls("vp", float(sigma_min), float(sigma_max))

    @classmethod
    def flow(cls, sigma_min: float = 1e-3, sigma_max: float = 1 - 1e-3) -> "NoiseSpace":
        return cls("flow", float(sigma_min), float(sigma_max))

    @classmethod
    def from_host(cls, kind: str, noise_scaling: Callable, calculate_input: Callable,
                  percent_to_sigma: Callable, name: str = "", sigma_min: float | None = None,
                  sigma_max: float | None = None) -> "NoiseSpace":
        """Wrap a host's noising: ``noise_scaling(σ, ε, x0)``, ``calculate_input(σ, x)``,
        ``percent_to_sigma(p)`` (p = 0 is the most noise), e.g. ComfyUI's ``model_sampling``."""
        hi = float(percent_to_sigma(1e-3)) if sigma_max is None else float(sigma_max)
        lo = float(percent_to_sigma(1 - 1e-3)) if sigma_min is None else float(sigma_min)
        if kind == "flow":
            hi = min(hi, 1 - 1e-3)
        return cls(kind, lo, hi, name or kind, noise_scaling, calculate_input, percent_to_sigma)

    def builtin(self) -> "NoiseSpace":
        """The host-free space with the same formulas (what a saved guard is reloaded with)."""
        return NoiseSpace(self.kind, self.sigma_min, self.sigma_max, self.name)

    # --- the noising ------------------------------------------------------------------------
    def noise(self, x0: Tensor, sigma: Tensor | float, eps: Tensor) -> Tensor:
        s = as_sigma(sigma, x0.shape[0], x0)
        if self.host_noise_scaling is not None:
            return self.host_noise_scaling(s, eps, x0)
        if self.kind == "vp":
            return x0 + _view(s, x0) * eps
        return (1 - _view(s, x0)) * x0 + _view(s, x0) * eps

    def model_input(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s = as_sigma(sigma, x.shape[0], x)
        if self.host_calculate_input is not None:
            return self.host_calculate_input(s, x)
        if self.kind == "vp":
            return x / torch.sqrt(_view(s, x) ** 2 + 1)
        return x

    def weight(self, sigma: Tensor) -> Tensor:
        """w(σ) that turns ∇ₓ log q into a change of the x0 prediction (Tweedie's formula)."""
        if self.kind == "vp":
            return sigma**2
        return sigma**2 / (1 - sigma).clamp_min(1e-4)

    def noise_to_signal(self, sigma: Tensor) -> Tensor:
        """r(σ): the noise in x per unit of signal, σ in vp, σ/(1−σ) in flow (x/(1−σ) = x0 + r·ε);
        infinite at flow's σ = 1, where ComfyUI's flow schedules start."""
        if self.kind == "vp":
            return sigma
        return sigma / (1 - sigma).clamp_min(0)

    def push_bound(self, sigma: Tensor) -> Tensor:
        """The most ``Guard.guide`` may move an x0 prediction at σ, per element (RMS) and per unit of
        max_step: min(r(σ), PUSH_RATIO_MAX[kind]). Below the ceiling that is the noise still in the x0
        prediction; above it the push stops growing, so no σ a host schedules (flow's σ = 1, a
        zero-terminal-SNR schedule's σ_max of about 4,500) can carry every sample to one far-off point."""
        return self.noise_to_signal(sigma).clamp(max=PUSH_RATIO_MAX[self.kind])

    def percent_to_sigma(self, p: Tensor) -> Tensor:
        """σ for sampling progress p in [0, 1] (0 = most noise), vectorised."""
        p = p.clamp(0, 1)
        if self.host_percent_to_sigma is None:
            if self.kind == "vp":  # log-linear between the ends
                lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
                return torch.exp(hi + (lo - hi) * p)
            return self.sigma_max + (self.sigma_min - self.sigma_max) * p
        # Host functions take one float: tabulate once, then interpolate in log σ.
        if self._table is None:
            grid = torch.linspace(1e-3, 1 - 1e-3, 513, dtype=torch.float64)
            self._table = torch.tensor([math.log(float(self.host_percent_to_sigma(float(g))))
                                        for g in grid], dtype=torch.float64)
        t = self._table
        pos = ((p.double() - 1e-3) / (1 - 2e-3)).clamp(0, 1) * (len(t) - 1)
        i = pos.floor().long().clamp(max=len(t) - 2)
        frac = pos - i
        return torch.exp(t[i] * (1 - frac) + t[i + 1] * frac).float()

    # --- bands --------------------------------------------------------------------------------
    @property
    def memorisable_max(self) -> float:
        return MEMORISABLE_MAX[self.kind]

    def bands(self) -> list[tuple[float, float]]:
        """σ bands, low to high, clipped to this space's range."""
        edges = [self.sigma_min, *[e for e in BAND_EDGES[self.kind] if self.sigma_min < e < self.sigma_max],
                 self.sigma_max]
        return list(zip(edges[:-1], edges[1:]))

    @staticmethod
    def band_label(band: tuple[float, float]) -> str:
        return f"{band[0]:.3g}-{band[1]:.3g}"

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}
