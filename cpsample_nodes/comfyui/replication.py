"""Replication check: nearest training image per generated image, similarity scores, a pair grid.

Metrics that need no download:
* calibrated ℓ2 ratio (Carlini et al. 2023, "Extracting training data from diffusion models"):
  ℓ2 distance to the nearest training image divided by the mean distance to the next k nearest;
  near 0 means a copy that stands out from its neighbours (replica below 1/3); about 1 means nothing special.
* SSIM (kornia, Gaussian window): to that nearest image, and the best over all training images
  (replica above 0.9).
* optional: cosine similarity of CLIP-vision image embeddings.

The metrics themselves live in ``cpsample_nodes.core.metrics`` (shared with the benchmarks).
"""
from __future__ import annotations

import torch

from ..core import metrics as core_metrics
from ..core.metrics import REPLICA_L2_RATIO, REPLICA_SSIM


def scores(gen: torch.Tensor, train: torch.Tensor, k: int) -> dict:
    """IMAGE batches gen [M, H, W, 3] and train [N, H, W, 3] (same size) → per generated image:
    ``nearest`` (ℓ2) index, ``l2`` distance, calibrated ``ratio`` (k clipped to N − 1; NaN if N < 2),
    ``ssim_nearest`` (SSIM to that image), ``ssim_max`` and ``ssim_index`` (best SSIM over train), ``k``."""
    g = gen[..., :3].float().permute(0, 3, 1, 2).contiguous()
    t = train[..., :3].float().permute(0, 3, 1, 2).contiguous()
    dist, idx = core_metrics.nearest_neighbors(g, t, 1)
    kk = max(1, min(int(k), t.shape[0] - 1))
    if t.shape[0] >= 2:
        ratio = core_metrics.calibrated_l2_ratio(g, t, kk)
    else:
        ratio = torch.full((g.shape[0],), float("nan"), dtype=torch.float64)
    win = 7 if min(g.shape[-2:]) > 7 else 3
    sm = core_metrics.ssim_matrix(g, t, data_range=1.0, window_size=win, layout="BCHW")
    nearest = idx[:, 0]
    ssim_max, ssim_index = sm.max(dim=1)
    return {"nearest": nearest, "l2": dist[:, 0], "ratio": ratio,
            "ssim_nearest": sm.gather(1, nearest.view(-1, 1)).view(-1), "ssim_max": ssim_max,
            "ssim_index": ssim_index, "k": kk}


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
