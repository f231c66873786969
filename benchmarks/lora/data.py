"""The split of the prompted LoRA benchmark: sklearn's digits at 16×16 in [-1, 1] (as benchmarks/finetune),
with the fine-tune set drawn from ONE digit class, the way a DreamBooth subject is one instance of a class
("sks dog" is a dog): the trigger should give these 16 images' digit, and copying them is the failure.

  finetune: ``n_finetune`` images of ``digit`` (never seen in pre-training; the LoRA's subject)
  heldout:  ``n_heldout`` images of every class, never trained on (quality reference)
  pretrain: everything else, every class including other images of ``digit`` (the base model, the classifier)

The benchmark runs under ComfyUI's test venv (it imports ComfyUI's samplers), which has no scikit-learn;
there the same file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``) is read from the project
venv, parsed as ``load_digits`` parses it, so both venvs see the same 1,797 images in the same order.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LoraSplit:
    pretrain: torch.Tensor
    pretrain_labels: torch.Tensor
    finetune: torch.Tensor          # [n_finetune, 1, S, S], all of class ``digit``
    heldout: torch.Tensor
    heldout_labels: torch.Tensor
    digit: int


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 8, 8] in 0..16, labels [N]) from scikit-learn, or its data file in the project venv."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        files = sorted(ROOT.glob(".venv/lib/python*/site-packages/sklearn/datasets/data/digits.csv.gz"))
        if not files:
            raise RuntimeError("scikit-learn's digits not found: install scikit-learn, or build the project venv "
                               "(tools/setup.sh) whose copy this reads") from None
        with gzip.open(files[0]) as f:
            data = np.loadtxt(f, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    d = load_digits()
    return d.images, d.target.astype(np.int64)


def load_digits_images(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as [N, 1, size, size] float32 in [-1, 1] and labels [N] (as benchmarks/finetune)."""
    images, labels = _digits_arrays()
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 2 - 1).contiguous(), torch.from_numpy(labels)


def split(digit: int = 3, n_finetune: int = 16, n_heldout: int = 300, seed: int = 0, size: int = 16) -> LoraSplit:
    x, y = load_digits_images(size)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed)).tolist()
    ft = [i for i in perm if int(y[i]) == digit][:n_finetune]
    taken = set(ft)
    rest = [i for i in perm if i not in taken]
    ho, pt = rest[:n_heldout], rest[n_heldout:]
    t = lambda idx: torch.tensor(idx, dtype=torch.long)  # noqa: E731
    return LoraSplit(x[t(pt)], y[t(pt)], x[t(ft)], x[t(ho)], y[t(ho)], digit)
