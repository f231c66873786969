"""benchmarks/stats.py on hand-made cases: identical, perturbed and noise images, known t values."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks import stats as S


def _train(n=16, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images in [0, 1] (blurred noise), distinct from each other
    x = torch.rand((n, 1, size // 4, size // 4), generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def test_identical_images_are_replicas():
    train = _train()
    rep = S.replication_report(train.clone(), train, k=5)
    assert torch.all(rep["l2_ratio"] < 1e-6)
    assert torch.allclose(rep["ssim"], torch.ones(16), atol=1e-4)
    assert torch.equal(rep["nn_index"], torch.arange(16))
    assert torch.equal(rep["ssim_index"], torch.arange(16))
    assert rep["rate_l2"] == 1.0 and rep["rate_ssim"] == 1.0
    assert S.distinct_nearest(rep["nn_index"], 16) == 16


def test_bhwc_gives_the_same_report_as_bchw():
    train = _train()
    s = train[:4] + 0.01
    a = S.replication_report(s, train, k=3)
    b = S.replication_report(s.permute(0, 2, 3, 1), train.permute(0, 2, 3, 1), k=3)
    assert torch.allclose(a["l2_ratio"], b["l2_ratio"]) and torch.allclose(a["ssim"], b["ssim"])


def test_slightly_perturbed_copy_is_still_a_replica_and_noise_is_not():
    train = _train()
    g = torch.Generator().manual_seed(1)
    near = train + 0.01 * torch.randn(train.shape, generator=g)
    noise = torch.rand((16, 1, 16, 16), generator=g)
    r_near = S.replication_report(near, train, k=5)
    r_noise = S.replication_report(noise, train, k=5)
    assert r_near["rate_l2"] == 1.0 and r_near["rate_ssim"] == 1.0
    assert r_noise["rate_l2"] == 0.0 and r_noise["rate_ssim"] == 0.0
    assert torch.all(r_noise["l2_ratio"] > 0.6)          # noise is about equally far from everything
    assert torch.all(r_noise["ssim"] < 0.5)


def test_mean_pairwise_distance():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert S.mean_pairwise_distance(x) == pytest.approx((5 + 5 + 0) * 2 / 6)
    assert S.mean_pairwise_distance(torch.zeros(5, 3)) == 0.0


def test_frechet_distance_zero_for_same_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn((2000, 4), generator=g)
    assert S.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert S.frechet_distance(a, a + 2.0) == pytest.approx(16.0, rel=1e-6)   # |Δμ|² = 4·2²


def test_student_t_cdf_known_values():
    assert S.student_t_cdf(0.0, 5) == pytest.approx(0.5)
    assert S.student_t_cdf(2.015048, 5) == pytest.approx(0.95, abs=1e-5)     # t_{0.95,5}
    assert S.student_t_cdf(-1.697261, 30) == pytest.approx(0.05, abs=1e-5)   # t_{0.05,30}
    assert S.student_t_cdf(1.959964, 1e7) == pytest.approx(S.normal_cdf(1.959964), abs=1e-5)


def test_welch_t_matches_hand_computation():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([2.0, 4.0, 6.0, 8.0, 10.0])
    r = S.welch_t_test(a, b, "less")
    va, vb = (5 / 3) / 4, 10.0 / 5
    t = (2.5 - 6.0) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)
    assert r["t"] == pytest.approx(t) and r["df"] == pytest.approx(df)
    assert r["p"] == pytest.approx(S.student_t_cdf(t, df))
    assert r["p"] < 0.05
    assert S.welch_t_test(a, b, "greater")["p"] == pytest.approx(1 - r["p"])


def test_loss_mia_detects_lower_member_loss_only():
    g = torch.Generator().manual_seed(0)
    members = 0.5 + 0.05 * torch.randn(16, generator=g)
    nonmembers = 1.0 + 0.05 * torch.randn(16, generator=g)
    assert S.loss_mia(members, nonmembers)["p"] < 1e-6        # leak detected
    same = S.loss_mia(nonmembers, 1.0 + 0.05 * torch.randn(16, generator=g))
    assert same["p"] > 0.01
    assert S.loss_mia(nonmembers, members)["p"] > 0.99        # members worse: no evidence of membership
