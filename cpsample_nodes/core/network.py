"""The guard network: a small noise-conditioned convolutional classifier.

Fully convolutional with global average pooling, so one network takes any latent size or aspect;
conditioned on log σ through FiLM in every block, so one network covers every noise level.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


# From this latent side up the stem strides by 4: a 64×64 latent then reaches the first block at
# 16×16, which memorised 64 SD1.5-sized latents 4–5× sooner than 32×32 did and still left latents
# it never saw alone (docs/design-log.md, "Stride-4 stem").
LARGE_LATENT_SIDE = 64
# Three labellings by default: on this machine's calibration benchmarks three-head guards met the
# protection goal in 56 of 60 calibrations against 49 with one head, and the copy goal uncalibrated
# in 30 of 48 against 22 (docs/protection.md, "Guards with several heads: the default"). Guard files
# made before heads existed hold one.
DEFAULT_HEADS = 3


@dataclass(frozen=True)
class GuardConfig:
    in_channels: int = 4
    widths: tuple[int, ...] = (32, 64, 128, 256)
    embed_dim: int = 128
    fourier_features: int = 16
    stem_stride: int = 2
    # Independent random labellings fitted at once, one output each (docs/protection.md, "Guards with
    # several heads"): their pushes share what moves a sample away from a training image and differ in
    # the rest, which a single labelling sends every copy along.
    heads: int = DEFAULT_HEADS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def for_latents(cls, shape: tuple[int, ...]) -> "GuardConfig":
        """The default network for latents shaped [..., C, H, W]: a stride-4 stem from 64×64
        latents up (SD1.5 at 512 px and larger), stride 2 below (docs/core-api.md, "The network")."""
        channels, height, width = (int(v) for v in shape[-3:])
        return cls(in_channels=channels, stem_stride=4 if min(height, width) >= LARGE_LATENT_SIDE else 2)

    @classmethod
    def from_dict(cls, d: dict) -> "GuardConfig":
        known = {k: d[k] for k in ("in_channels", "widths", "embed_dim", "fourier_features", "stem_stride", "heads")
                 if k in d}
        if "widths" in known:
            known["widths"] = tuple(int(w) for w in known["widths"])
        # a file saved before guards had heads holds one, whatever today's default
        known["heads"] = int(known.get("heads", 1))
        return cls(**known)


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


class SigmaEmbedding(nn.Module):
    """Fixed Fourier features of log σ, then an MLP."""

    def __init__(self, dim: int, features: int):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(math.log(0.25), math.log(8.0), features)))
        self.mlp = nn.Sequential(nn.Linear(2 * features + 1, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.clamp_min(1e-5).log()[:, None]
        a = s * self.freqs[None]
        return self.mlp(torch.cat([s, a.sin(), a.cos()], dim=1))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class GuardNet(nn.Module):
    """Noisy latent [B, C, H, W] and σ [B] → one logit per item [B], or [B, heads] with several heads."""

    def __init__(self, config: GuardConfig):
        super().__init__()
        if not isinstance(config.heads, int) or isinstance(config.heads, bool) or config.heads < 1:
            raise ValueError(f"a guard network needs at least 1 head, got {config.heads!r}")
        self.config = config
        w = config.widths
        self.embed = SigmaEmbedding(config.embed_dim, config.fourier_features)
        # Strided patch stem: latents are smooth at the pixel scale and full-resolution layers
        # would cost most of the compute without helping to tell images apart (the stride comes
        # from GuardConfig.for_latents: 4 from 64×64 latents up, else 2).
        k = config.stem_stride
        self.stem = nn.Conv2d(config.in_channels, w[0], k + 1 if k > 1 else 3, stride=k, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, width in enumerate(w):
            self.blocks.append(ResBlock(width, width, config.embed_dim))
            self.downs.append(nn.Conv2d(width, w[i + 1], 3, stride=2, padding=1) if i + 1 < len(w) else nn.Identity())
        self.out_norm = nn.GroupNorm(_groups(w[-1]), w[-1])
        self.head = nn.Linear(w[-1], config.heads)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        emb = self.embed(sigma)
        h = self.stem(x)
        for block, down in zip(self.blocks, self.downs):
            h = down(block(h, emb))
        h = F.silu(self.out_norm(h)).mean(dim=(2, 3))
        out = self.head(h)
        return out.squeeze(1) if self.config.heads == 1 else out
