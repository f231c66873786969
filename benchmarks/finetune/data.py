"""sklearn's 8x8 digits, upscaled to 16x16 and scaled to [-1, 1], with a fixed three-way split.

Split (fixed by `seed`, independent of anything else):
  finetune: `n_finetune` images (the data the guard protects; the diffusion model is fine-tuned on them)
  heldout:  `n_heldout` images never used for any training (Fréchet reference; the first 16 are the
            membership-inference non-members)
  pretrain: everything else (diffusion pretraining and the digit classifier)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class DigitSplit:
    pretrain: torch.Tensor          # [N, 1, S, S] in [-1, 1]
    pretrain_labels: torch.Tensor   # [N] int64
    finetune: torch.Tensor
    finetune_labels: torch.Tensor
    heldout: torch.Tensor
    heldout_labels: torch.Tensor


def load_digits_images(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as [N, 1, size, size] float32 in [-1, 1] and their labels [N]."""
    from sklearn.datasets import load_digits  # ships with scikit-learn, no download

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N,1,8,8] in [0,1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    return x, torch.from_numpy(d.target.astype(np.int64))


def split_digits(size: int = 16, n_finetune: int = 16, n_heldout: int = 300, seed: int = 0) -> DigitSplit:
    x, y = load_digits_images(size)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    # fine-tune set: a stratified-ish pick (cycle over the 10 classes) so it spans several digits
    ft: list[int] = []
    for cls in list(range(10)) * ((n_finetune + 9) // 10):
        if len(ft) == n_finetune:
            break
        for i in perm.tolist():
            if int(y[i]) == cls and i not in ft:
                ft.append(i)
                break
    ft_set = set(ft)
    rest = [i for i in perm.tolist() if i not in ft_set]
    ho, pt = rest[:n_heldout], rest[n_heldout:]
    idx = lambda l: torch.tensor(l, dtype=torch.long)  # noqa: E731
    return DigitSplit(x[idx(pt)], y[idx(pt)], x[idx(ft)], y[idx(ft)], x[idx(ho)], y[idx(ho)])
