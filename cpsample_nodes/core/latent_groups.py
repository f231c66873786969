"""Training latents of several sizes: one tensor [N, C, H, W] per size (a batch holds one size).

A set bucketed by aspect (``buckets.py``) encodes to latents of a few sizes. The guard network is fully
convolutional, so one network trains on all of them, a batch of one size at a time; these helpers keep
the groups' order (labels follow the groups' concatenation) and bring other latents to a group's size
where a group needs them (negatives).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

Tensor = torch.Tensor
Latents = Tensor | Sequence[Tensor]


def as_groups(latents: Latents) -> list[Tensor]:
    """One tensor or a list of them → a list of [N, C, H, W] tensors (the caller checks shapes)."""
    return [latents] if isinstance(latents, torch.Tensor) else list(latents)


def count(groups: Sequence[Tensor]) -> int:
    return sum(int(g.shape[0]) for g in groups)


def offsets(groups: Sequence[Tensor]) -> list[int]:
    """Index of each group's first latent in the concatenated order."""
    out, at = [], 0
    for g in groups:
        out.append(at)
        at += int(g.shape[0])
    return out


def cover_resize(x: Tensor, height: int, width: int) -> Tensor:
    """Latents [N, C, h, w] scaled to cover height × width (keeping their aspect), centre-cropped."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (nh - height) // 2, (nw - width) // 2
    return y[..., top:top + height, left:left + width]


def pool_for(groups: Sequence[Tensor], i: int) -> Tensor:
    """Group ``i`` followed by every other group brought to its size: what its negatives are made of
    (blends and noise statistics of the whole set, at this group's size)."""
    h, w = groups[i].shape[-2:]
    return torch.cat([groups[i]] + [cover_resize(g, h, w) for j, g in enumerate(groups) if j != i])


def pick_per_group(groups: Sequence[Tensor], pick: Tensor) -> list[Tensor]:
    """Global indices (into the concatenated order) → the indices inside each group (some empty)."""
    starts = offsets(groups)
    return [pick[(pick >= s) & (pick < s + g.shape[0])] - s for s, g in zip(starts, groups)]


def shapes_text(groups: Sequence[Tensor]) -> dict[str, int]:
    """{"4x104x152": 10, ...}: latents per shape (C×H×W), the guard file's record."""
    return {"x".join(str(int(v)) for v in g.shape[1:]): int(g.shape[0]) for g in groups}
