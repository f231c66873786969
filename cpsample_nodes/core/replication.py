"""Replication check: nearest training image per generated image, similarity scores, the report
and a pair grid. Host-free (torch, kornia, Pillow); ComfyUI's Replication Check node and the
A1111/Forge tab both use it.

Metrics that need no download:
* calibrated ℓ2 ratio (Carlini et al. 2023, "Extracting training data from diffusion models"):
  ℓ2 distance to the nearest training image divided by the mean distance to the next k nearest;
  near 0 means a copy that stands out from its neighbours (replica below 1/3); about 1 means nothing special.
* SSIM (kornia, Gaussian window): to that nearest image, and the best over all training images
  (replica above 0.9).

The metrics themselves live in ``metrics.py`` (shared with the benchmarks).
"""
from __future__ import annotations

import torch

from . import metrics as core_metrics
from .metrics import REPLICA_L2_RATIO, REPLICA_SSIM

__all__ = ["REPLICA_L2_RATIO", "REPLICA_SSIM", "pair_grid", "report", "scores"]


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


def pair_grid(gen: torch.Tensor, train: torch.Tensor, nearest: torch.Tensor, captions: list[str],
              max_rows: int = 64) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: one row per generated image: generated | nearest training image, caption drawn."""
    from PIL import Image, ImageDraw, ImageFont
    import numpy as np

    from .images import tensor_to_pil

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


def report(gen: torch.Tensor, sc: dict, names: list[str], ratio_threshold: float = REPLICA_L2_RATIO,
           ssim_threshold: float = REPLICA_SSIM, cos: torch.Tensor | None = None) -> tuple[str, list[str], int]:
    """The text report (one line per generated image), the grid captions and how many were flagged,
    from ``scores``; ``cos`` (optional) is each image's CLIP cosine to its nearest training image."""
    nearest = sc["nearest"]
    h, w = gen.shape[1], gen.shape[2]
    lines = [f"CPSample replication check: {gen.shape[0]} generated vs {len(names)} training images "
             f"at {w}x{h}; calibrated l2 ratio with k={sc['k']} (copy below {ratio_threshold:.3g}), "
             f"SSIM (copy above {ssim_threshold:.3g})"]
    captions = []
    flagged = 0
    for i in range(gen.shape[0]):
        j = int(nearest[i])
        r = float(sc["ratio"][i])
        s_near, s_max, s_idx = float(sc["ssim_nearest"][i]), float(sc["ssim_max"][i]), int(sc["ssim_index"][i])
        flag = r < ratio_threshold or s_max > ssim_threshold
        flagged += int(flag)
        extra = f", CLIP cos {float(cos[i]):.3f}" if cos is not None else ""
        best = "" if s_idx == j else f" (best SSIM {s_max:.3f}: {names[s_idx]})"
        lines.append(f"image {i}: nearest {names[j]}  l2 {float(sc['l2'][i]):.2f}  ratio {r:.3f}  "
                     f"SSIM {s_near:.3f}{best}{extra}{'  <-- LIKELY COPY' if flag else ''}")
        captions.append(f"r {r:.2f} ssim {s_near:.2f}" + (f" cos {float(cos[i]):.2f}" if cos is not None else "")
                        + (" COPY" if flag else ""))
    lines.append(f"{flagged} of {gen.shape[0]} flagged as likely copies")
    return "\n".join(lines), captions, flagged
