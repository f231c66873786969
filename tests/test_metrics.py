"""Metrics on hand-made cases: identical, shifted and noise images, so a wrong metric fails."""
from __future__ import annotations

import math

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


def test_identical_images_are_replicas():
    train = _train()
    rep = M.replication_report(train.clone(), train, k=5)
    assert torch.all(rep["l2_ratio"] < 1e-6)
    assert torch.allclose(rep["ssim"], torch.ones(16), atol=1e-4)
    assert torch.equal(rep["nn_index"], torch.arange(16))
    assert torch.equal(rep["ssim_index"], torch.arange(16))
    assert rep["rate_l2"] == 1.0 and rep["rate_ssim"] == 1.0
    assert M.distinct_nearest(rep["nn_index"], 16) == 16


def test_bhwc_gives_the_same_report_as_bchw():
    train = _train()
    s = train[:4] + 0.01
    a = M.replication_report(s, train, k=3)
    b = M.replication_report(s.permute(0, 2, 3, 1), train.permute(0, 2, 3, 1), k=3)
    assert torch.allclose(a["l2_ratio"], b["l2_ratio"]) and torch.allclose(a["ssim"], b["ssim"])


def test_slightly_perturbed_copy_is_still_a_replica_and_noise_is_not():
    train = _train()
    g = torch.Generator().manual_seed(1)
    near = train + 0.01 * torch.randn(train.shape, generator=g)
    noise = torch.rand((16, 1, 16, 16), generator=g)
    r_near = M.replication_report(near, train, k=5)
    r_noise = M.replication_report(noise, train, k=5)
    assert r_near["rate_l2"] == 1.0 and r_near["rate_ssim"] == 1.0
    assert r_noise["rate_l2"] == 0.0 and r_noise["rate_ssim"] == 0.0
    assert torch.all(r_noise["l2_ratio"] > 0.6)          # noise is about equally far from everything
    assert torch.all(r_noise["ssim"] < 0.5)


def test_shifted_images_lose_ssim_and_l2_replication():
    # a sharp pattern shifted by 3 pixels is no pixel-level copy
    train = torch.zeros(8, 1, 16, 16)
    for i in range(8):
        train[i, 0, 2 + i % 4: 6 + i % 4, 1 + i:4 + i] = 1.0
    train[:, 0, 12:14, :] = torch.linspace(0, 1, 8)[:, None, None]  # make every image distinct
    shifted = torch.roll(train, shifts=3, dims=3)
    same = M.max_ssim(train, train)[0]
    moved = M.max_ssim(shifted, train)[0]
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
    s2 = M.max_ssim(noisy, train, data_range=2.0)[0]
    s1 = M.max_ssim(noisy, train, data_range=1.0)[0]
    assert torch.all(s2 >= s1 - 1e-6)                           # larger range, larger constants, higher SSIM


def test_mean_pairwise_distance():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert M.mean_pairwise_distance(x) == pytest.approx((5 + 5 + 0) * 2 / 6)
    assert M.mean_pairwise_distance(torch.zeros(5, 3)) == 0.0


def test_frechet_distance_zero_for_same_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn((2000, 4), generator=g)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(a, a + 2.0) == pytest.approx(16.0, rel=1e-6)   # |Δμ|² = 4·2²


def test_student_t_cdf_known_values():
    assert M.student_t_cdf(0.0, 5) == pytest.approx(0.5)
    assert M.student_t_cdf(2.015048, 5) == pytest.approx(0.95, abs=1e-5)     # t_{0.95,5}
    assert M.student_t_cdf(-1.697261, 30) == pytest.approx(0.05, abs=1e-5)   # t_{0.05,30}
    assert M.student_t_cdf(1.959964, 1e7) == pytest.approx(M.normal_cdf(1.959964), abs=1e-5)


def test_welch_t_matches_hand_computation():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([2.0, 4.0, 6.0, 8.0, 10.0])
    r = M.welch_t_test(a, b, "less")
    va, vb = (5 / 3) / 4, 10.0 / 5
    t = (2.5 - 6.0) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)
    assert r["t"] == pytest.approx(t) and r["df"] == pytest.approx(df)
    assert r["p"] == pytest.approx(M.student_t_cdf(t, df))
    assert r["p"] < 0.05
    assert M.welch_t_test(a, b, "greater")["p"] == pytest.approx(1 - r["p"])


def test_loss_mia_detects_lower_member_loss_only():
    g = torch.Generator().manual_seed(0)
    members = 0.5 + 0.05 * torch.randn(16, generator=g)
    nonmembers = 1.0 + 0.05 * torch.randn(16, generator=g)
    assert M.loss_mia(members, nonmembers)["p"] < 1e-6        # leak detected
    same = M.loss_mia(nonmembers, 1.0 + 0.05 * torch.randn(16, generator=g))
    assert same["p"] > 0.01
    assert M.loss_mia(nonmembers, members)["p"] > 0.99        # members worse: no evidence of membership
