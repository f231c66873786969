"""Replication check: nearest training image per generated image, similarity scores, a pair grid.

Metrics that need no download:
* calibrated ℓ2 ratio (Carlini et al. 2023, "Extracting training data from diffusion models"):
  ℓ2 distance to the nearest training image divided by the mean distance to the next k nearest;
  near 0 means a copy that stands out from its neighbours; about 1 means nothing special.
* SSIM (kornia, 11×11 Gaussian window) between the generated image and that nearest image.
* optional: cosine similarity of CLIP-vision image embeddings.

The metric functions come from ``cpsample_nodes.core.metrics`` when it provides them
(``ssim``, ``calibrated_l2_ratio``); the local versions below are used otherwise.
"""
from __future__ import annotations

import torch

from ..core import metrics as core_metrics


def _ssim_local(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of image pairs a[i], b[i] (IMAGE layout [N, H, W, C] in [0, 1]) → [N]."""
    import kornia

    x = a[..., :3].permute(0, 3, 1, 2).float()
    y = b[..., :3].permute(0, 3, 1, 2).float()
    win = 11 if min(x.shape[-2:]) >= 11 else (min(x.shape[-2:]) // 2) * 2 - 1
    win = max(win, 3)
    return kornia.metrics.ssim(x, y, window_size=win).flatten(1).mean(1)


def _l2_ratio_local(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From distances [M, N] → (nearest index [M], ratio [M]) = d1 / mean(d2..d(k+1))."""
    d, idx = torch.sort(dist, dim=1)
    nearest = idx[:, 0]
    if dist.shape[1] < 2:
        return nearest, torch.full((dist.shape[0],), float("nan"), dtype=torch.float64)
    kk = min(k, dist.shape[1] - 1)
    ref = d[:, 1:1 + kk].mean(1)
    return nearest, d[:, 0] / ref.clamp_min(1e-12)


def ssim_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    fn = getattr(core_metrics, "ssim", None)
    if fn is not None:
        try:
            out = fn(a, b)
            return torch.as_tensor(out).reshape(-1).float()
        except Exception:  # noqa: BLE001 - signature differs: use the local version
            pass
    return _ssim_local(a, b)


def nearest_and_ratio(gen: torch.Tensor, train: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel ℓ2 distances gen × train, nearest training index per generated image, calibrated ratio."""
    dist = core_metrics.pairwise_l2(gen[..., :3].float(), train[..., :3].float())
    nearest, ratio = _l2_ratio_local(dist, k)
    fn = getattr(core_metrics, "calibrated_l2_ratio", None)
    if fn is not None:
        try:
            r = torch.as_tensor(fn(gen[..., :3].float(), train[..., :3].float(), k=k)).reshape(-1)
            if r.numel() == gen.shape[0]:
                ratio = r.double()
        except Exception:  # noqa: BLE001 - signature differs: keep the local value
            pass
    return dist, nearest, ratio


def clip_cosine(clip_vision, gen: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Cosine similarities [M, N] of CLIP-vision image embeddings."""
    def embed(images):
        outs = []
        for i in range(0, images.shape[0], 16):
            e = clip_vision.encode_image(images[i:i + 16, ..., :3])["image_embeds"].float()
            outs.append(torch.nn.functional.normalize(e.flatten(1), dim=1))
        return torch.cat(outs)

    return embed(gen) @ embed(train).T


def pair_grid(gen: torch.Tensor, train: torch.Tensor, nearest: torch.Tensor, captions: list[str],
              max_rows: int = 64) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: one row per generated image: generated | nearest training image, caption drawn."""
    from PIL import Image, ImageDraw, ImageFont
    import numpy as np

    from ..core.images import tensor_to_pil

    n = min(gen.shape[0], max_rows)
    h, w = gen.shape[1], gen.shape[2]
    cap_h = max(14, min(28, w // 6))
    gap = 4
    canvas = Image.new("RGB", (2 * w + gap, n * (h + cap_h)), (24, 24, 24))
    g_pils = tensor_to_pil(gen[:n])
    t_pils = tensor_to_pil(train[nearest[:n]])
    try:
        font = ImageFont.load_default(size=max(10, cap_h - 4))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        y = i * (h + cap_h)
        canvas.paste(g_pils[i], (0, y))
        canvas.paste(t_pils[i].resize((w, h)) if t_pils[i].size != (w, h) else t_pils[i], (w + gap, y))
        draw.text((2, y + h + 1), captions[i], fill=(255, 230, 120), font=font)
    arr = np.asarray(canvas, dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]
