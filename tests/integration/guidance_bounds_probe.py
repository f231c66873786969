"""Run inside the ComfyUI test environment: the guard's push on every family's real schedule.

For each model family's own ``model_sampling`` (SD1.5/SDXL EPS, zero-terminal-SNR v-prediction,
SD3 flow with shift 3, Flux) and each of ComfyUI's schedulers, this reads the σ schedule ComfyUI
would sample with (flow schedules start at σ = 1 exactly) and

1. calls ``Guard.guide`` at every σ of it with the gate wide open (α 0.5) and a strong scale, and
   records the push's RMS per element against its stated bound, ``max_step · min(r, R)`` with r the
   noise-to-signal ratio (σ in vp, σ/(1−σ) in flow) and R the ceiling of its kind (15 vp, 4 flow);
2. samples eight seeds with ComfyUI's own k-diffusion samplers (Euler, Euler ancestral, DPM++ 2M)
   on a model that copies its training latents (the closed-form denoiser of a set of latents), with
   and without the guard, and records finiteness, spread and how many samples stay distinct.

Prints one JSON object; tests/integration/test_guidance_bounds.py asserts on it.
Usage: python guidance_bounds_probe.py REPO_ROOT COMFYUI_DIR
"""
from __future__ import annotations

import json
import sys

REPO, COMFY = sys.argv[1], sys.argv[2]
sys.path[:0] = [REPO, COMFY]

import torch  # noqa: E402

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # as the test server runs (--cpu); set before model_management loads
import comfy.k_diffusion.sampling as kd  # noqa: E402
import comfy.model_sampling as cms  # noqa: E402
import comfy.samplers  # noqa: E402
from cpsample_nodes.core import Guard, GuardConfig, GuardNet, NoiseSpace  # noqa: E402
from cpsample_nodes.core.noise import PUSH_RATIO_MAX  # noqa: E402

STEPS = 20
SEEDS = 8
SAMPLERS = {"euler": kd.sample_euler, "euler_ancestral": kd.sample_euler_ancestral,
            "dpmpp_2m": kd.sample_dpmpp_2m}


class _Config:
    def __init__(self, **sampling_settings):
        self.sampling_settings = sampling_settings


def families() -> dict[str, tuple[object, str, int]]:
    """name -> (model_sampling as ComfyUI builds it for that family, noise kind, latent channels)."""
    class Eps(cms.ModelSamplingDiscrete, cms.EPS):
        pass

    class VPred(cms.ModelSamplingDiscrete, cms.V_PREDICTION):
        pass

    class Sd3(cms.ModelSamplingDiscreteFlow, cms.CONST):
        pass

    class Flux(cms.ModelSamplingFlux, cms.CONST):
        pass

    return {"sd15_sdxl_eps": (Eps(_Config()), "vp", 4),
            "sdxl_vpred_ztsnr": (VPred(_Config(zsnr=True)), "vp", 4),
            "sd3_flow_shift3": (Sd3(_Config(shift=3.0)), "flow", 16),
            "flux_flow": (Flux(_Config(shift=1.15)), "flow", 16)}


def space_of(ms, kind: str) -> NoiseSpace:
    # As the ComfyUI pack builds it: the host's own noising.
    return NoiseSpace.from_host(kind=kind, noise_scaling=ms.noise_scaling, calculate_input=ms.calculate_input,
                                percent_to_sigma=ms.percent_to_sigma)


def ratio(kind: str, sigma: float) -> float:
    return sigma if kind == "vp" else (float("inf") if sigma >= 1 else sigma / (1 - sigma))


class CopyingModel:
    """The closed-form denoiser of a few training latents: every sample it makes is one of them."""

    def __init__(self, ms, kind: str, train: torch.Tensor, guard: Guard | None):
        self.inner_model = type("Inner", (), {"inner_model": type("M", (), {"model_sampling": ms})()})()
        self.kind, self.train, self.guard = kind, train, guard

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        scale = torch.ones_like(s) if self.kind == "vp" else 1 - s
        d2 = ((x[:, None] - scale[:, None] * self.train[None]) ** 2).flatten(2).sum(-1)  # [B, N]
        w = torch.softmax(-d2 / (2 * s.flatten()[:, None] ** 2).clamp_min(1e-12), dim=1)
        denoised = torch.einsum("bn,nchw->bchw", w, self.train)
        if self.guard is None:
            return denoised
        return self.guard.guide(denoised, x, sigma, alpha=0.5)  # the gate wide open, default scale


def first_noise(ms, kind: str, sigma0: float, shape: tuple[int, ...]) -> torch.Tensor:
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    # ComfyUI's noise_scaling at the first σ with nothing to start from (txt2img)
    return ms.noise_scaling(torch.tensor([sigma0]), noise, torch.zeros(shape), max_denoise=True)


def main() -> None:
    out: dict = {"push": [], "sampling": []}
    for name, (ms, kind, channels) in families().items():
        space = space_of(ms, kind)
        torch.manual_seed(0)
        guard = Guard(GuardNet(GuardConfig(in_channels=channels)), space)
        gen = torch.Generator().manual_seed(1)
        train = torch.randn(64, channels, 8, 8, generator=gen)
        for scheduler in comfy.samplers.SCHEDULER_NAMES:
            sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, STEPS).float()
            worst = 0.0
            for sigma in sigmas[:-1].tolist():
                denoised = torch.randn(4, channels, 8, 8, generator=gen)
                x = denoised + sigma * torch.randn(4, channels, 8, 8, generator=gen)
                pushed = guard.guide(denoised, x, sigma, alpha=0.5, scale=1e6)
                rms = float((pushed - denoised).pow(2).flatten(1).mean(1).sqrt().max())
                bound = min(ratio(kind, sigma), PUSH_RATIO_MAX[kind])
                worst = max(worst, rms / bound)
                if not torch.isfinite(pushed).all():
                    worst = float("inf")
            out["push"].append({"family": name, "scheduler": scheduler, "sigma_first": float(sigmas[0]),
                                "worst_push_over_bound": worst})
        for scheduler in ("simple", "karras", "beta"):
            sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, STEPS).float()
            for sampler, fn in SAMPLERS.items():
                row = {"family": name, "scheduler": scheduler, "sampler": sampler}
                for label, g in (("unguarded", None), ("guarded", guard)):
                    x0 = first_noise(ms, kind, float(sigmas[0]), (SEEDS, channels, 8, 8))
                    torch.manual_seed(2)  # the ancestral noise
                    with torch.no_grad():
                        x = fn(CopyingModel(ms, kind, train, g), x0, sigmas, disable=True)
                    flat = x.flatten(1)
                    dist = torch.cdist(flat, flat)
                    # samples that are not within 1e-3 of an earlier one
                    distinct = sum(1 for i in range(SEEDS) if bool((dist[i, :i] >= 1e-3).all()))
                    row[label] = {"finite": bool(torch.isfinite(x).all()), "spread": float(x.std()),
                                  "distinct": distinct}
                out["sampling"].append(row)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
