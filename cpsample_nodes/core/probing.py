"""What both hosts' probe samplers share: the post-CFG hook and the batch size (pure Python).

ComfyUI and Forge call a post-CFG function with one dict (``denoised``: the CFG result, ``input``: x,
``sigma``); Protect Model acts there, so calibration's probes are guided there too.
"""
from __future__ import annotations

from typing import Callable

import torch

Guide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

BATCH_ELEMENTS = 8 * 4 * 64 * 64  # latent elements per sampler batch: 8 SD1.5 latents at 512 px
MAX_BATCH = 16


class PostCFGGuide:
    """A core ``guide(denoised, x, sigma)`` as the hosts' post-CFG function."""

    def __init__(self, guide: Guide):
        self.guide = guide

    def __call__(self, args: dict) -> torch.Tensor:
        return self.guide(args["denoised"], args["input"], args["sigma"])


def probe_batch(latent_numel: int) -> int:
    """Probes per sampler call for latents of ``latent_numel`` elements each (1 to MAX_BATCH)."""
    return max(1, min(MAX_BATCH, BATCH_ELEMENTS // max(1, latent_numel)))
