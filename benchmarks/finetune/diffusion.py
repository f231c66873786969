"""Epsilon-prediction diffusion in k-diffusion sigma form (as ComfyUI's EPS model_sampling samples SD1.5).

x = x0 + sigma * eps; the network sees x / sqrt(sigma^2 + 1) and predicts eps; denoised = x - sigma * eps.
Training sigmas come from SD1.5's discrete VP schedule (1000 steps, scaled-linear betas 0.00085..0.012),
which spans sigma 0.0292 .. 14.6146.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.nn as nn

SIGMA_MIN, SIGMA_MAX = 0.0292, 14.6146


def sd_sigmas(n: int = 1000) -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, n, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    return ((1 - ac) / ac).sqrt().float()


class EpsDenoiser(nn.Module):
    """Wraps an epsilon network as a k-diffusion denoiser D(x, sigma) -> x0 estimate."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("train_sigmas", sd_sigmas(), persistent=False)

    def eps(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        c_in = 1.0 / (sigma ** 2 + 1).sqrt()
        return self.net(x * c_in[:, None, None, None], sigma)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        return x - sigma[:, None, None, None] * self.eps(x, sigma)

    def loss(self, x0: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        idx = torch.randint(0, self.train_sigmas.numel(), (x0.shape[0],), generator=generator)
        sigma = self.train_sigmas[idx]
        eps = torch.randn(x0.shape, generator=generator)
        x = x0 + sigma[:, None, None, None] * eps
        return ((self.eps(x, sigma) - eps) ** 2).mean()


class Progress:
    """Minimal progress bar (tqdm when installed, periodic prints otherwise)."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.t0, self.last = total, desc, 0, time.time(), 0.0
        try:
            from tqdm import tqdm  # type: ignore

            self.bar = tqdm(total=total, desc=desc, leave=True)
        except Exception:
            self.bar = None

    def update(self, k: int = 1, **info) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
            if info:
                self.bar.set_postfix(**info)
            return
        now = time.time()
        if now - self.last >= 5.0 or self.n >= self.total:
            self.last = now
            el = now - self.t0
            eta = el / max(self.n, 1) * (self.total - self.n)
            extra = " ".join(f"{k}={v}" for k, v in info.items())
            print(f"  [{self.desc}] {self.n}/{self.total} ({100*self.n/self.total:.0f}%) "
                  f"{el:.0f}s elapsed, eta {eta:.0f}s {extra}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Move each of ``ema``'s parameters a (1 − decay) step toward ``model``'s."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


def train_denoiser(model: EpsDenoiser, data: torch.Tensor, steps: int, batch: int = 128, lr: float = 2e-3,
                   seed: int = 0, desc: str = "train", ema: Optional[nn.Module] = None,
                   ema_decay: float = 0.999, constant_lr: bool = False,
                   prior: Optional[torch.Tensor] = None, prior_share: float = 0.0) -> list[float]:
    """AdamW on the epsilon loss, one-cycle schedule, or (constant_lr) a constant rate after 20 warm-up steps
    so that the first N steps of a longer run equal an N-step run. With ``prior`` and ``prior_share`` > 0, that share of every batch comes from ``prior``
    (DreamBooth's prior preservation: the model keeps seeing the kind of images it knew). Returns the loss
    history (per step)."""
    n_prior = round(batch * prior_share) if prior is not None else 0
    if not 0 <= n_prior < batch:
        raise ValueError(f"prior_share {prior_share} leaves no room for the training images in a batch of {batch}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if constant_lr:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20))
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    model.train()
    hist: list[float] = []
    bar = Progress(steps, desc)
    run = None
    for step in range(steps):
        idx = torch.randint(0, data.shape[0], (batch - n_prior,), generator=g)
        x0 = data[idx]
        if n_prior:
            x0 = torch.cat([x0, prior[torch.randint(0, prior.shape[0], (n_prior,), generator=g)]])
        loss = model.loss(x0, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema_update(ema, model, ema_decay)
        v = loss.item()
        hist.append(v)
        run = v if run is None else 0.98 * run + 0.02 * v
        bar.update(1, loss=f"{run:.4f}")
    bar.close()
    model.eval()
    return hist


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


GuideFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample_euler(model: EpsDenoiser, noise: torch.Tensor, sigmas: torch.Tensor,
                 guide: Optional[GuideFn] = None, ancestral: bool = False,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Euler (or Euler ancestral, eta=1) on `sigmas`; `guide(denoised, x, sigma)` returns the guided denoised.

    `noise` is unit Gaussian; it is scaled by sqrt(1 + sigma_max^2) like ComfyUI's EPS noise_scaling for a
    full denoise.
    """
    x = noise * math.sqrt(1.0 + float(sigmas[0]) ** 2)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        sig = s.expand(x.shape[0]).clone()
        den = model(x, sig)
        if guide is not None:
            den = guide(den, x, sig)
        if ancestral and s_next > 0:
            s_up = min(float(s_next), float((s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2) ** 0.5))
            s_down = float((s_next ** 2 - s_up ** 2) ** 0.5)
            d = (x - den) / s
            x = x + d * (s_down - s)
            x = x + torch.randn(x.shape, generator=generator) * s_up
        else:
            d = (x - den) / s
            x = x + d * (s_next - s)
    return x
