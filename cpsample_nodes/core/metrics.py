"""Replication metrics on latents or images (pure torch, plus kornia for SSIM): what Replication Check
and calibration count. The statistics only the benchmarks use live in ``benchmarks/stats.py``.

Image batches
-------------
Functions taking *images* accept either layout:

* ``[B, C, H, W]`` (torch / latents), or
* ``[B, H, W, C]`` (ComfyUI ``IMAGE``, values in [0, 1]).

``layout="auto"`` (the default) reads a 4-D tensor as ``[B, H, W, C]`` when its last dimension is 1, 3 or 4 and
its second is not; otherwise as ``[B, C, H, W]``. Pass ``layout="BCHW"`` or ``layout="BHWC"`` to be explicit.
A 3-D tensor ``[B, H, W]`` is read as one channel. Distances (``pairwise_l2``, ``nearest_neighbors``,
``calibrated_l2_ratio``) work on any ``[B, ...]`` tensor: they flatten everything after the batch dimension,
so the layout only has to be the same for both arguments.

Replication criteria
--------------------
* calibrated ℓ2 ratio (Carlini et al. 2023, "Extracting training data from diffusion models", §5):
  ``r(x̂) = ‖x̂ − n₁‖₂ / mean_{j=2..k+1} ‖x̂ − n_j‖₂`` with n_j the j-th nearest training image. A sample is
  a replica when r < ``REPLICA_L2_RATIO`` (1/3, as Carlini et al.'s α = 0.5 calibration and Gu et al. 2023).
* SSIM (kornia, Gaussian window σ = 1.5): maximum over training images; a replica when > 0.9.
"""
from __future__ import annotations

from typing import Literal

import torch

REPLICA_L2_RATIO = 1.0 / 3.0
REPLICA_SSIM = 0.9

Layout = Literal["auto", "BCHW", "BHWC"]


def to_bchw(images: torch.Tensor, layout: Layout = "auto") -> torch.Tensor:
    """Return a [B, C, H, W] view of an image batch given as [B, C, H, W], [B, H, W, C] or [B, H, W]."""
    if images.dim() == 3:
        return images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"expected an image batch [B,C,H,W] or [B,H,W,C], got shape {tuple(images.shape)}")
    if layout == "BCHW":
        return images
    if layout == "BHWC":
        return images.permute(0, 3, 1, 2)
    if layout != "auto":
        raise ValueError(f"layout must be 'auto', 'BCHW' or 'BHWC', not {layout!r}")
    if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        return images.permute(0, 3, 1, 2)
    return images


def pairwise_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of a [M, ...] and b [N, ...] → [M, N] (float64)."""
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    return torch.cdist(a, b)


def nearest_neighbors(samples: torch.Tensor, train: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ2 distances [M, k] (ascending, float64) and indices [M, k] of the k nearest rows of train for each sample."""
    d = pairwise_l2(samples, train)
    k = min(k, d.shape[1])
    dist, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
    return dist, idx


def calibrated_l2_ratio(samples: torch.Tensor, train: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Carlini et al. 2023 calibrated ℓ2: distance to the nearest training row / mean distance to the next k.

    samples [M, ...], train [N, ...] with N ≥ k + 1 (same layout). Returns [M] float64. Small (≪ 1) means the
    sample sits on one training image rather than between several; < 1/3 counts as a replica.
    """
    n = train.shape[0]
    if n < k + 1:
        raise ValueError(f"calibrated_l2_ratio needs at least k+1={k + 1} training rows, got {n}")
    dist, _ = nearest_neighbors(samples, train, k + 1)
    return dist[:, 0] / dist[:, 1:].mean(dim=1).clamp_min(1e-12)


def ssim_matrix(samples: torch.Tensor, train: torch.Tensor, data_range: float = 1.0, window_size: int = 7,
                layout: Layout = "auto", chunk: int = 4096) -> torch.Tensor:
    """Mean SSIM of every sample against every training image → [M, N] (float32).

    Both batches must have the same channels and size; ``data_range`` is the span of pixel values
    (1.0 for [0, 1] images, 2.0 for [-1, 1]). Window: ``window_size`` taps of a Gaussian σ = 1.5
    (7 suits images as small as 16×16; H and W must exceed window_size // 2).
    """
    import kornia

    s = to_bchw(samples, layout).float()
    t = to_bchw(train, layout).float()
    if s.shape[1:] != t.shape[1:]:
        raise ValueError(f"samples {tuple(s.shape[1:])} and train {tuple(t.shape[1:])} differ in C, H, W")
    m, n = s.shape[0], t.shape[0]
    out = torch.empty(m * n)
    ii = torch.arange(m).repeat_interleave(n)
    jj = torch.arange(n).repeat(m)
    for start in range(0, m * n, chunk):
        a, b = ii[start:start + chunk], jj[start:start + chunk]
        smap = kornia.metrics.ssim(s[a], t[b], window_size, max_val=float(data_range))
        out[start:start + chunk] = smap.mean(dim=(1, 2, 3))
    return out.reshape(m, n)
