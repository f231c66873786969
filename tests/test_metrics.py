"""The product's replica metrics on hand-made cases: shifted and noise images, so a wrong metric fails."""
from __future__ import annotations

import pytest
import torch

from cpsample_nodes.core import metrics as M


def _train(n=16, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images in [0, 1] (blurred noise), distinct from each other
    x = torch.rand((n, 1, size // 4, size // 4), generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def test_pairwise_l2_matches_bruteforce():
    a, b = torch.randn(3, 2, 4, 4), torch.randn(5, 2, 4, 4)
    d = M.pairwise_l2(a, b)
    assert d.shape == (3, 5)
    assert d[1, 2].item() == pytest.approx(((a[1] - b[2]) ** 2).sum().sqrt().item(), rel=1e-6)


def test_to_bchw_layouts():
    x = torch.rand(2, 1, 16, 16)
    assert M.to_bchw(x).shape == (2, 1, 16, 16)
    assert torch.equal(M.to_bchw(x.permute(0, 2, 3, 1)), x)          # ComfyUI [B,H,W,C]
    assert M.to_bchw(torch.rand(2, 16, 16)).shape == (2, 1, 16, 16)
    y = torch.rand(2, 3, 3, 3)                                          # ambiguous: explicit layout wins
    assert torch.equal(M.to_bchw(y, "BHWC"), y.permute(0, 3, 1, 2))
    with pytest.raises(ValueError):
        M.to_bchw(torch.rand(2, 3))


def test_shifted_images_lose_ssim_and_l2_replication():
    # a sharp pattern shifted by 3 pixels is no pixel-level copy
    train = torch.zeros(8, 1, 16, 16)
    for i in range(8):
        train[i, 0, 2 + i % 4: 6 + i % 4, 1 + i:4 + i] = 1.0
    train[:, 0, 12:14, :] = torch.linspace(0, 1, 8)[:, None, None]  # make every image distinct
    shifted = torch.roll(train, shifts=3, dims=3)
    same = M.ssim_matrix(train, train).max(1).values
    moved = M.ssim_matrix(shifted, train).max(1).values
    assert torch.all(same > 0.999)
    assert torch.all(moved < 0.9)
    ratio = M.calibrated_l2_ratio(shifted, train, k=3)
    assert torch.all(ratio > 1 / 3)


def test_calibrated_ratio_is_distance_over_mean_of_next_k():
    train = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    s = torch.tensor([[0.5]])
    # distances 0.5, 0.5, 2.5, 5.5 -> 0.5 / mean(0.5, 2.5) = 1/3 for k = 2
    assert M.calibrated_l2_ratio(s, train, k=2).item() == pytest.approx(1 / 3)
    assert M.calibrated_l2_ratio(torch.tensor([[0.1]]), train, k=3).item() == pytest.approx(0.1 / ((0.9 + 2.9 + 5.9) / 3))
    with pytest.raises(ValueError):
        M.calibrated_l2_ratio(s, train, k=4)


def test_ssim_data_range_matters():
    train = _train() * 2 - 1                                   # [-1, 1]
    g = torch.Generator().manual_seed(2)
    noisy = (train + 0.2 * torch.randn(train.shape, generator=g)).clamp(-1, 1)
    s2 = M.ssim_matrix(noisy, train, data_range=2.0).max(1).values
    s1 = M.ssim_matrix(noisy, train, data_range=1.0).max(1).values
    assert torch.all(s2 >= s1 - 1e-6)                           # larger range, larger constants, higher SSIM
