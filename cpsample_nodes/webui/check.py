"""The replication check of the CPSample tab and API: generated images against a training folder,
with the report and side-by-side picture of ComfyUI's Replication Check node."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core import images as imgs
from ..core import replication
from .train import folder_path


def check(generated: Sequence, folder: str, k: int = 10, ratio_threshold: float = replication.REPLICA_L2_RATIO,
          ssim_threshold: float = replication.REPLICA_SSIM) -> dict[str, Any]:
    """``generated``: PIL images (brought to the first one's size). Returns {"report", "flagged",
    "pairs" (a PIL image: generated | nearest training image, scores drawn), "rows"}."""
    if not generated:
        raise ValueError("no generated images to check")
    if not str(folder or "").strip():
        raise ValueError("no training folder: give the folder the guard was trained on")
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rgb = [im.convert("RGB") for im in generated]
    hw = (rgb[0].size[1], rgb[0].size[0])
    gen = imgs.conform(rgb, hw=hw)[0]
    train, names, _ = imgs.load_image_folder(folder_path(folder), hw=hw)  # sub-folders too, as training reads it
    sc = replication.scores(gen, train, int(k))
    report, captions, flagged = replication.report(gen, sc, names, float(ratio_threshold), float(ssim_threshold))
    grid = replication.pair_grid(gen, train, sc["nearest"], captions)
    rows = [{"nearest": names[int(sc["nearest"][i])], "ratio": _num(sc["ratio"][i]),
             "ssim": _num(sc["ssim_nearest"][i]), "l2": _num(sc["l2"][i])} for i in range(gen.shape[0])]
    return {"report": report, "flagged": flagged, "pairs": imgs.tensor_to_pil(grid)[0], "rows": rows}


def _num(v: torch.Tensor) -> float | None:
    f = float(v)
    return None if f != f else round(f, 5)  # NaN (a folder of one image) is not JSON
