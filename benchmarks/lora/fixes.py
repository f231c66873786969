"""The inference-time fixes other than CPSample, as this benchmark reads their papers (no reference code is
run here; where a paper leaves a number open, the choice is named and was not tuned on the evaluation seeds).

* Jain et al., CVPR 2025 ("Classifier-free guidance inside the attraction basin may cause memorization"):
  CFG pulls a sample into a training image's attraction basin early in sampling; no guidance until the
  sample has left it, normal CFG after, keeps the prompt without the copy.
  - ``StaticTransition``: no CFG (scale 1) while σ > ``sigma_t``, the user's scale below. Above σ_t the
    unconditional branch is not needed, so those steps cost one call, as ComfyUI's two-KSampler split does.
  - ``DynamicTransition``: per sample, the gap ‖ε(x, c) − ε(x, ∅)‖ is watched every step; the transition
    is the first step where it falls below ``drop`` × its running maximum (the sharp drop that marks
    leaving the basin); CFG 1 before, the user's scale from then on. Both branches every step.
* Wen et al., ICLR 2024 ("Detecting, explaining, and mitigating memorization in diffusion models"):
  before sampling, adjust the prompt embedding so the text-conditional part of the noise prediction at
  the first step, ‖ε(x_T, e) − ε(x_T, ∅)‖², shrinks; then sample with that embedding. ``wen_prompts``
  runs ``iters`` Adam steps (lr ``lr``) per seed on its own start noise: gradients through the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def _gap(c: torch.Tensor, u: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """RMS of ε_cond − ε_uncond per item; ε = (x − denoised) / σ, so the gap is (u − c) / σ."""
    s = sigma.reshape(-1, 1, 1, 1)
    return ((u - c) / s).flatten(1).pow(2).mean(1).sqrt()


@dataclass
class StaticTransition:
    cfg: float
    sigma_t: float

    def needs_uncond(self, sigma: torch.Tensor) -> bool:
        return float(sigma.reshape(-1)[0]) <= self.sigma_t

    def __call__(self, c, u, x, sigma, state: dict) -> torch.Tensor:
        s = sigma.reshape(-1).expand(x.shape[0])
        return torch.where(s > self.sigma_t, torch.ones_like(s), torch.full_like(s, self.cfg))


@dataclass
class DynamicTransition:
    cfg: float
    drop: float = 0.5

    def needs_uncond(self, sigma: torch.Tensor) -> bool:
        return True

    def __call__(self, c, u, x, sigma, state: dict) -> torch.Tensor:
        gap = _gap(c, u, x, sigma)
        peak = torch.maximum(state.get("peak", gap), gap)
        switched = state.get("switched", torch.zeros_like(gap, dtype=torch.bool)) | (gap < self.drop * peak)
        if "sigma_switch" not in state:
            state["sigma_switch"] = torch.full_like(gap, float("nan"))
        newly = switched & state["sigma_switch"].isnan()
        state["sigma_switch"] = torch.where(newly, sigma.reshape(-1).expand_as(gap).float(), state["sigma_switch"])
        state["peak"], state["switched"] = peak, switched
        return torch.where(switched, torch.full_like(gap, self.cfg), torch.ones_like(gap))


def wen_prompts(model, prompt: int, null: int, sigma_max: float, iters: int = 10, lr: float = 0.1):
    """``prompt_for(seeds, noise) -> [B, EMB]``: the prompt embedding after Wen et al.'s first-step
    minimisation, per seed (each on its own start noise x_T = noise·√(1 + σ_max²))."""
    def prompt_for(seeds: Sequence[int], noise: torch.Tensor) -> torch.Tensor:
        b = noise.shape[0]
        x = noise * (1.0 + sigma_max ** 2) ** 0.5
        sig = torch.full((b,), sigma_max)
        net = model.net
        with torch.no_grad():
            e_null = model.eps(x, sig, torch.full((b,), null, dtype=torch.long))
            emb = net.embed(torch.full((b,), prompt, dtype=torch.long)).clone()
        emb.requires_grad_(True)
        opt = torch.optim.Adam([emb], lr=lr)
        with torch.enable_grad():
            for _ in range(iters):
                loss = (model.eps(x, sig, emb) - e_null).pow(2).flatten(1).sum(1).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        prompt_for.calls = getattr(prompt_for, "calls", 0) + b * (iters + 1)
        prompt_for.backward = getattr(prompt_for, "backward", 0) + b * iters
        return emb.detach()

    return prompt_for
