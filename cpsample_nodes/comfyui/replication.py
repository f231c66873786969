"""Replication check for the ComfyUI node: the host-free scores, report and pair grid live in
``cpsample_nodes.core.replication`` (shared with the A1111/Forge tab); this adds the optional
CLIP-vision cosine, which needs a ComfyUI CLIP_VISION model.
"""
from __future__ import annotations

import torch

from ..core.replication import REPLICA_L2_RATIO, REPLICA_SSIM, pair_grid, report, scores

__all__ = ["REPLICA_L2_RATIO", "REPLICA_SSIM", "clip_cosine", "pair_grid", "report", "scores"]


def clip_cosine(clip_vision, gen: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Cosine similarities [M, N] of CLIP-vision image embeddings."""
    def embed(images):
        outs = []
        for i in range(0, images.shape[0], 16):
            e = clip_vision.encode_image(images[i:i + 16, ..., :3])["image_embeds"].float()
            outs.append(torch.nn.functional.normalize(e.flatten(1), dim=1))
        return torch.cat(outs)

    return embed(gen) @ embed(train).T
