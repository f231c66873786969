"""What only AUTOMATIC1111 (1.10) needs; Forge does all of this inside its backend.

* The model: an ldm LatentDiffusion with ``alphas_cumprod`` and flags ``is_sdxl`` / ``is_sd3``, not
  a ComfyUI-style model config, so its family and noise schedule are read from those.
* The cond+uncond batch: ``on_cfg_denoiser`` sees x and σ repeated once per prompt plus the plain
  batch at the end; the CFG result that ``on_cfg_after_cfg`` hands back has only the plain batch B,
  so x and σ are the last B rows.
* The timestep samplers (DDIM, PLMS, UniPC): σ carries the integer timestep t, x is
  √ᾱ_t·x0 + √(1−ᾱ_t)·ε and the CFG result is an ε prediction; they are converted to k-diffusion
  form (σ = √((1−ᾱ)/ᾱ), x/√ᾱ, x0) for the guard and the guided x0 back to ε.

The two callbacks are registered once and act only while one of CPSample's own generations runs:
the session remembers its processing object, and a step from any other sampling (another tab, an
earlier run that ended in an error) is left alone.
"""
from __future__ import annotations

import math
import weakref
from typing import Any

import torch

from ..core import NoiseSpace
from ..usecases.guided_step import GuidedStep
from ..usecases.model import ModelFamily

Tensor = torch.Tensor


class Unsupported(ValueError):
    """A model or sampler CPSample does not handle on A1111; the message says what to use instead."""


# --- the model --------------------------------------------------------------------------------

def family(sd_model) -> ModelFamily:
    if getattr(sd_model, "is_sd3", False):
        raise Unsupported("CPSample on AUTOMATIC1111 handles SD1.x, SD2.x and SDXL models; for SD3 use Forge "
                          "or ComfyUI")
    pred = "V_PREDICTION" if getattr(sd_model, "parameterization", "eps") == "v" else "EPS"
    fmt = "SDXL" if getattr(sd_model, "is_sdxl", False) else "SD15"  # SD2 shares SD1.5's latent space
    return ModelFamily(latent_format=fmt, latent_channels=4, model_sampling=f"ModelSamplingDiscrete+{pred}",
                       noise_kind="vp")


def schedule_sigmas(alphas_cumprod: Tensor) -> Tensor:
    ac = alphas_cumprod.detach().double().cpu()
    return ((1 - ac) / ac).sqrt()


class DiscreteSchedule:
    """σ(t) of a discrete schedule, and progress → σ as ComfyUI's and Forge's ModelSamplingDiscrete
    compute it (interpolating log σ over the timesteps), so a window means the same in every host."""

    def __init__(self, alphas_cumprod: Tensor):
        self.alphas_cumprod = alphas_cumprod.detach().double().cpu()
        self.log_sigmas = schedule_sigmas(self.alphas_cumprod).log()

    def sigma(self, t: float) -> float:
        t = min(max(float(t), 0.0), len(self.log_sigmas) - 1.0)
        lo, hi = math.floor(t), math.ceil(t)
        w = t - lo
        return math.exp((1 - w) * float(self.log_sigmas[lo]) + w * float(self.log_sigmas[hi]))

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma((1.0 - percent) * (len(self.log_sigmas) - 1))

    def space(self, name: str) -> NoiseSpace:
        # The ldm models noise as x0 + σε and scale their input by 1/√(σ²+1): the built-in vp formulas.
        return NoiseSpace("vp", math.exp(float(self.log_sigmas[0])), math.exp(float(self.log_sigmas[-1])), name,
                          host_percent_to_sigma=self.percent_to_sigma)


# --- the batch and the timestep samplers ------------------------------------------------------

def plain_batch(x_in: Tensor, sigma_in: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """x and σ of the denoised batch out of A1111's cond+uncond batch (the plain batch is last)."""
    if x_in.shape[0] < batch or sigma_in.shape[0] < batch:
        raise ValueError(f"the sampler's batch ({x_in.shape[0]}) is smaller than its result ({batch})")
    return x_in[-batch:], sigma_in[-batch:]


def timestep_to_k(x_t: Tensor, t: Tensor, eps: Tensor, alphas_cumprod: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A timestep sampler's (x_t, t, ε prediction) → k-diffusion (x0 prediction, x, σ)."""
    a = alphas_cumprod.to(x_t.device, torch.float32)[t.round().long().clamp(0, len(alphas_cumprod) - 1)]
    a = a.view(-1, *([1] * (x_t.dim() - 1)))
    x0 = (x_t.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()
    sigma = ((1 - a) / a).sqrt().reshape(-1)
    return x0, x_t.float() / a.sqrt(), sigma


def k_to_eps(x_t: Tensor, t: Tensor, x0: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The ε prediction that a timestep sampler steps on, from a (guided) x0 prediction."""
    a = alphas_cumprod.to(x_t.device, torch.float32)[t.round().long().clamp(0, len(alphas_cumprod) - 1)]
    a = a.view(-1, *([1] * (x_t.dim() - 1)))
    return (x_t.float() - a.sqrt() * x0.float()) / (1 - a).sqrt()


def timestep_alphas(denoiser) -> Tensor | None:
    """ᾱ of a timestep sampler's denoiser (A1111's CFGDenoiserTimesteps keeps them); None for k-diffusion."""
    if type(denoiser).__name__ != "CFGDenoiserTimesteps":
        return None
    alphas = getattr(denoiser, "alphas", None)
    if alphas is None:
        raise Unsupported("this timestep sampler exposes no noise schedule; use a k-diffusion sampler "
                          "(Euler a, DPM++ 2M, ...) with CPSample")
    return alphas


# --- the session the two callbacks serve -----------------------------------------------------

class Session:
    """One protected generation on A1111: whose steps to steer, and what on_cfg_denoiser saw."""

    def __init__(self, p: Any, step: GuidedStep, schedule: DiscreteSchedule, sampling_name: str):
        self._p = weakref.ref(p)
        self.step = step
        self.schedule = schedule
        self.sampling_name = sampling_name
        self._seen: tuple[Tensor, Tensor, Any] | None = None
        self._space: NoiseSpace | None = None

    def owns(self, denoiser) -> bool:
        p = self._p()
        return p is not None and getattr(denoiser, "p", None) is p

    def on_denoiser(self, params) -> None:
        self._seen = (params.x, params.sigma, params.denoiser) if self.owns(params.denoiser) else None

    def on_after_cfg(self, params) -> None:
        seen, self._seen = self._seen, None
        if seen is None:
            return
        x_in, sigma_in, denoiser = seen
        params.x = self.guide(params.x, x_in, sigma_in, timestep_alphas(denoiser))

    def guide(self, out: Tensor, x_in: Tensor, sigma_in: Tensor, alphas: Tensor | None) -> Tensor:
        """The CFG result ``out`` (x0, or ε for a timestep sampler) after guidance."""
        x, sigma = plain_batch(x_in, sigma_in, out.shape[0])
        if alphas is None:
            return self._guide_k(out, x, sigma)
        x0, x_k, sigma_k = timestep_to_k(x, sigma, out, alphas)
        guided = self._guide_k(x0, x_k, sigma_k)
        if guided is x0:  # untouched: hand back the sampler's own ε, bit for bit
            return out
        return k_to_eps(x, sigma, guided, alphas).to(out.dtype)

    def _guide_k(self, denoised: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        return self.step(denoised, x, sigma, key="a1111", make_space=self._make_space,
                             percent_to_sigma=self.schedule.percent_to_sigma)

    def _make_space(self) -> NoiseSpace:
        if self._space is None:
            self._space = self.schedule.space(self.sampling_name)
        return self._space


_SESSION: Session | None = None


def begin(p: Any, step: GuidedStep, sd_model, fam: ModelFamily) -> Session:
    """Serve ``p``'s generation from now on (replacing any session left over from a failed run)."""
    global _SESSION
    _SESSION = Session(p, step, DiscreteSchedule(sd_model.alphas_cumprod), fam.model_sampling)
    return _SESSION


def end(p: Any = None) -> None:
    """Stop serving (only ``p``'s session when given)."""
    global _SESSION
    if _SESSION is not None and (p is None or _SESSION._p() is p):
        _SESSION = None


def active() -> Session | None:
    return _SESSION


def on_cfg_denoiser(params) -> None:
    if _SESSION is not None:
        _SESSION.on_denoiser(params)


def on_cfg_after_cfg(params) -> None:
    if _SESSION is not None:
        _SESSION.on_after_cfg(params)
