"""The guard: a trained network plus its noise space, and the CPSample guidance term."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .network import GuardConfig, GuardNet
from .noise import NoiseSpace, as_sigma

Tensor = torch.Tensor
OBJECTIVES = ("uncertainty", "opposite")
INPUTS = ("noisy", "denoised")
# Defaults for a guard that was never calibrated, chosen on the calibration table across the mixture
# (vp and flow) and the digits (docs/protection.md, "Defaults for an uncalibrated guard").
DEFAULT_SCALE = 1000.0
DEFAULT_ALPHA = 0.2
# Guard.auto_alpha: the gate opens beyond this share of the guard's training margin.
AUTO_ALPHA_FRACTION = 0.95


# The keyword arguments of Guard.guide that a calibration may set.
SETTING_KEYS = ("scale", "alpha", "max_step", "sigma_max")


def most_confident(head_logits: Tensor) -> Tensor:
    """[B, heads] → [B]: each item's logit of the head surest of its label (largest |logit|); its p lies
    outside [α, 1−α] exactly when some head's does. Differentiable through the chosen head."""
    if head_logits.shape[1] == 1:
        return head_logits[:, 0]
    return head_logits.gather(1, head_logits.detach().abs().argmax(1, keepdim=True))[:, 0]


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``settings`` (guide keyword arguments) after checking every key and value."""
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise ValueError(f"unknown guide settings {unknown}; allowed: {list(SETTING_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in settings.items():
        optional = key in ("max_step", "sigma_max")
        if value is None and optional:
            out[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"guide setting {key} must be a finite number, got {value!r}")
        value = float(value)
        if key == "alpha" and not 0 <= value <= 0.5:
            raise ValueError(f"guide setting alpha must lie in [0, 0.5], got {value}")
        if key == "scale" and value < 0:
            raise ValueError(f"guide setting scale must be at least 0, got {value}")
        if optional and value <= 0:
            raise ValueError(f"guide setting {key} must be positive or None, got {value}")
        out[key] = value
    return out


class Guard(nn.Module):
    """A trained guard. ``info`` holds what was recorded at training (see ``files.py``)."""

    def __init__(self, net: GuardNet, space: NoiseSpace, info: dict[str, Any] | None = None):
        super().__init__()
        self.net = net
        self.space = space
        self.info: dict[str, Any] = dict(info or {})

    @property
    def config(self) -> GuardConfig:
        return self.net.config

    @property
    def latent_channels(self) -> int:
        return self.net.config.in_channels

    def with_space(self, space: NoiseSpace) -> "Guard":
        """The same network seen through another space of the same kind (a host's own noising)."""
        if space.kind != self.space.kind:
            raise ValueError(f"this guard was trained for a {self.space.kind} model, not a {space.kind} one")
        return Guard(self.net, space, self.info)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected latents shaped [B, C, H, W], got {tuple(x.shape)}")
        if x.shape[1] != self.latent_channels:
            raise ValueError(f"this guard takes {self.latent_channels}-channel latents, got {x.shape[1]} channels")

    def _param(self) -> Tensor:
        return next(self.net.parameters())

    @property
    def heads(self) -> int:
        """How many independent random labellings the network fits (one logit each)."""
        return self.net.config.heads

    def head_logits(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Logits of label 1 for noisy latents x at σ, one per head: [B, heads] (differentiable)."""
        self._check(x)
        p = self._param()
        s = as_sigma(sigma, x.shape[0], x).to(p.device, torch.float32)
        out = self.net(self.space.model_input(x.to(p.device, p.dtype), s), s)
        return out.unsqueeze(1) if out.dim() == 1 else out

    def logit(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Logit of label 1 for noisy latents x at σ [B] (differentiable); with several heads, the
        most confident head's, so p outside [α, 1−α] means some head's gate is open."""
        return most_confident(self.head_logits(x, sigma))

    @torch.no_grad()
    def training_margin(self, latents: Tensor) -> float:
        """Smallest |logit| over clean training latents read at σ_min (and over heads): how sure the
        guard is of the least memorised image (``train_guard`` records it as info["train_margin"])."""
        with torch.inference_mode(False):
            return float(self.head_logits(latents, self.space.sigma_min).detach().abs().min())

    def auto_alpha(self, fraction: float = AUTO_ALPHA_FRACTION) -> float:
        """An α set from this guard's own confidence: the gate opens where |logit| exceeds
        ``fraction`` × its training margin. A fixed α suits only guards as confident as the one it
        was tuned on; this follows each guard (docs/protection.md, "The gate")."""
        margin = self.info.get("train_margin")
        if not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin <= 0:
            raise ValueError("this guard records no training margin (trained by an older version, or never "
                             "confident on its images): give alpha as a number")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
        return 1.0 / (1.0 + math.exp(fraction * float(margin)))

    def calibrated_settings(self) -> dict[str, Any] | None:
        """The ``guide`` keyword arguments that ``calibrate`` chose for this guard (``info["calibration"]``),
        checked; None for a guard never calibrated. A file edited by hand fails here, naming the value."""
        cal = self.info.get("calibration")
        if cal is None:
            return None
        settings = cal.get("settings") if isinstance(cal, dict) else None
        if not isinstance(settings, dict):
            raise ValueError(f"this guard's calibration holds no settings dict (got {type(settings).__name__})")
        return check_settings(settings)

    @torch.no_grad()
    def probability(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """p(label 1) for noisy latents x [B, C, H, W] at σ ([B] or scalar) → float32 [B]."""
        with torch.inference_mode(False):
            return torch.sigmoid(self.logit(x, sigma)).float()

    def guide(self, denoised: Tensor, x: Tensor, sigma: Tensor | float, scale: float = DEFAULT_SCALE,
              alpha: float = DEFAULT_ALPHA, objective: str = "uncertainty", max_step: float | None = 1.0,
              guard_input: str = "denoised", sigma_max: float | None = None) -> Tensor:
        """CPSample guidance on an x0 prediction.

        ``denoised + scale·w(σ)·∇ₓ objective`` for the items whose p lies outside [α, 1−α]; the
        gradient goes through the guard only. objective "uncertainty" is log p(1−p) (pushes toward
        p = ½ and vanishes there); "opposite" is the log-probability of the label the guard does
        not currently predict. ``max_step`` caps each item's change at max_step·min(r, R) per
        element (root mean square), r the noise-to-signal ratio (σ in vp, σ/(1−σ) in flow) and R 15 in
        vp, 4 in flow: within the noise still in the x0 prediction, and bounded at every σ a host
        schedules, flow's σ = 1 included (``NoiseSpace.push_bound``); None disables the cap (the
        paper's form).
        ``guard_input`` "noisy" is the paper's form: the guard reads the noisy latent x at σ and the
        gradient is ∇ₓ. "denoised" reads the model's x0 prediction as a clean latent (σ = the
        space's σ_min) and steps along ∇ over x0, which sees where a trajectory is heading while σ
        is still too high for the guard to tell noisy latents apart.
        ``sigma_max`` (None: every step) guides only the items whose σ ≤ sigma_max: on some models
        a copy is decided late, and leaving the early steps alone spares the samples that do not copy.
        Returns ``denoised`` itself when scale is 0, no item lies inside the σ window or none is
        confident.
        """
        return self.guide_traced(denoised, x, sigma, scale, alpha, objective, max_step, guard_input, sigma_max)[0]

    def guide_traced(self, denoised: Tensor, x: Tensor, sigma: Tensor | float, scale: float = DEFAULT_SCALE,
                     alpha: float = DEFAULT_ALPHA, objective: str = "uncertainty", max_step: float | None = 1.0,
                     guard_input: str = "denoised", sigma_max: float | None = None) -> tuple[Tensor, Tensor | None]:
        """``guide``, also returning what it gated on: each head's p, float32 [B, heads] on the guard's
        device (the gate is open where some head's p lies outside [α, 1−α], and pushes with those heads),
        or None where the guard did not run (scale 0, no item inside the σ window)."""
        if scale == 0:
            return denoised, None
        if sigma_max is not None and not (isinstance(sigma_max, (int, float)) and sigma_max > 0):
            raise ValueError(f"sigma_max must be None or a positive number, got {sigma_max!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if not 0 <= alpha <= 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5], got {alpha}")
        if guard_input not in INPUTS:
            raise ValueError(f"guard_input must be one of {INPUTS}, got {guard_input!r}")
        self._check(x)
        dev = self._param().device
        inside = None
        if sigma_max is not None:
            inside = as_sigma(sigma, x.shape[0], x).to(dev) <= sigma_max
            if not bool(inside.any()):  # skip the guard's forward and backward altogether
                return denoised, None
        # Hosts call this under torch.inference_mode(): leave it, and clone so the inputs are
        # normal tensors that autograd can record.
        with torch.inference_mode(False), torch.enable_grad():
            source = x if guard_input == "noisy" else denoised
            xg = source.detach().to(dev, torch.float32).clone().requires_grad_(True)
            sig = as_sigma(sigma, x.shape[0], xg).detach().clone()
            read_sigma = sig if guard_input == "noisy" else torch.full_like(sig, self.space.sigma_min)
            heads = self.head_logits(xg, read_sigma)  # [B, heads]
            if objective == "uncertainty":
                obj = F.logsigmoid(heads) + F.logsigmoid(-heads)
            else:
                obj = torch.where(heads > 0, F.logsigmoid(-heads), F.logsigmoid(heads))
            if heads.shape[1] > 1:  # each head pushes only where its own gate is open
                q = torch.sigmoid(heads.detach())
                obj = obj * ((q < alpha) | (q > 1 - alpha))
            (grad,) = torch.autograd.grad(obj.sum(), xg)
        with torch.no_grad():
            q = torch.sigmoid(heads.detach()).float()
            p = torch.sigmoid(most_confident(heads.detach()))
            confident = (p < alpha) | (p > 1 - alpha)
            finite = torch.isfinite(grad).flatten(1).all(1) & torch.isfinite(heads.detach()).all(1)
            active = confident & finite
            if inside is not None:
                active = active & inside
            if not bool(active.any()):
                return denoised, q
            view = (-1,) + (1,) * (x.dim() - 1)
            grad = torch.where(active.view(view), grad, torch.zeros((), device=dev))
            step = scale * self.space.weight(sig).view(view) * grad
            if max_step is not None:
                rms = step.flatten(1).pow(2).mean(1).sqrt()
                # capping flow at σ rather than at the x0 prediction's own noise left it 5–10× weaker
                # than vp where copies are decided; at large r it stops growing (push_bound)
                cap = max_step * self.space.push_bound(sig)
                step = step * (cap / rms.clamp_min(1e-12)).clamp(max=1.0).view(view)
            step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
            return denoised + step.to(denoised.device, denoised.dtype), q
