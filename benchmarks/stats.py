"""Statistics the benchmarks measure with and the product does not: a replication report of a sample
batch, Fréchet distance, spread, and the loss-based membership-inference test (Welch's t with its own
Student t distribution, so no scipy). The replica criteria themselves are the product's
(``cpsample_nodes/core/metrics.py``).
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from cpsample_nodes.core.metrics import (REPLICA_L2_RATIO, REPLICA_SSIM, Layout, calibrated_l2_ratio,
                                         nearest_neighbors, pairwise_l2, ssim_matrix, to_bchw)


def max_ssim(samples: torch.Tensor, train: torch.Tensor, data_range: float = 1.0, window_size: int = 7,
             layout: Layout = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Highest SSIM of each sample over the training images and that image's index → ([M], [M])."""
    sm = ssim_matrix(samples, train, data_range, window_size, layout)
    v, i = sm.max(dim=1)
    return v, i


def replication_report(samples: torch.Tensor, train: torch.Tensor, k: int = 5, data_range: float = 1.0,
                       ratio_threshold: float = REPLICA_L2_RATIO, ssim_threshold: float = REPLICA_SSIM,
                       window_size: int = 7, layout: Layout = "auto") -> dict:
    """Replication statistics of a sample batch against training images (both image batches, same layout).

    Returns a dict: ``l2_ratio`` [M], ``nn_index`` [M] (nearest by ℓ2), ``ssim`` [M] (max over train),
    ``ssim_index`` [M], and the shares ``rate_l2`` (ratio < ratio_threshold), ``rate_ssim``
    (ssim > ssim_threshold), ``rate_either``, plus ``k`` and the thresholds.
    """
    s = to_bchw(samples, layout)
    t = to_bchw(train, layout)
    ratio = calibrated_l2_ratio(s, t, k)
    _, nn_idx = nearest_neighbors(s, t, 1)
    ssim, ssim_idx = max_ssim(s, t, data_range, window_size, "BCHW")
    rep_l2 = ratio < ratio_threshold
    rep_ssim = ssim > ssim_threshold
    return {
        "l2_ratio": ratio, "nn_index": nn_idx[:, 0], "ssim": ssim, "ssim_index": ssim_idx,
        "rate_l2": float(rep_l2.double().mean()), "rate_ssim": float(rep_ssim.double().mean()),
        "rate_either": float((rep_l2 | rep_ssim).double().mean()),
        "k": k, "ratio_threshold": ratio_threshold, "ssim_threshold": ssim_threshold,
    }


def distinct_nearest(nn_index: torch.Tensor, n_train: int) -> int:
    """How many different training images occur as a nearest neighbour (≤ n_train)."""
    return int(torch.unique(nn_index.reshape(-1)).numel()) if nn_index.numel() else 0


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean ℓ2 distance between distinct rows of x [M, ...] (a spread / diversity measure)."""
    m = x.shape[0]
    if m < 2:
        return 0.0
    d = pairwise_l2(x, x)
    return float(d.sum() / (m * (m - 1)))


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a [M, D] and b [N, D]."""
    a = a.reshape(a.shape[0], -1).double().cpu().numpy()
    b = b.reshape(b.shape[0], -1).double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr(sqrt(A B)) from the eigenvalues of sqrt(A) B sqrt(A), which is symmetric PSD.
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


# ---------------------------------------------------------------- membership inference statistics

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        de = d * c
        h *= de
        if abs(de - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with df degrees of freedom (df may be fractional, as in Welch's test)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    x = df / (df + t * t)
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def welch_t_test(a: torch.Tensor, b: torch.Tensor, alternative: Literal["less", "greater", "two-sided"] = "less") -> dict:
    """Welch's unequal-variance t test of mean(a) vs mean(b).

    ``alternative="less"`` tests H1: mean(a) < mean(b) — for the loss-based membership inference test
    (Matsumoto et al. 2023) pass member losses as a and non-member losses as b: a small p-value means the
    members' loss is significantly lower, i.e. membership leaks. Returns ``t``, ``df``, ``p`` (Student t,
    Welch–Satterthwaite df), ``p_normal`` (the same statistic read as a z score, as CPSample's table
    reads), the means and the sizes.
    """
    a = a.reshape(-1).double()
    b = b.reshape(-1).double()
    na, nb = a.numel(), b.numel()
    if na < 2 or nb < 2:
        raise ValueError("welch_t_test needs at least two values in each group")
    va, vb = float(a.var(unbiased=True)) / na, float(b.var(unbiased=True)) / nb
    diff = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    if se == 0.0:
        t = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        df = float(na + nb - 2)
    else:
        t = diff / se
        df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    if alternative == "less":
        p, pz = student_t_cdf(t, df), normal_cdf(t)
    elif alternative == "greater":
        p, pz = 1.0 - student_t_cdf(t, df), 1.0 - normal_cdf(t)
    elif alternative == "two-sided":
        p, pz = 2.0 * min(student_t_cdf(t, df), 1.0 - student_t_cdf(t, df)), 2.0 * min(normal_cdf(t), 1.0 - normal_cdf(t))
    else:
        raise ValueError(f"alternative must be 'less', 'greater' or 'two-sided', not {alternative!r}")
    return {"t": t, "df": df, "p": min(max(p, 0.0), 1.0), "p_normal": min(max(pz, 0.0), 1.0),
            "mean_a": float(a.mean()), "mean_b": float(b.mean()), "n_a": na, "n_b": nb}


def loss_mia(member_losses: torch.Tensor, nonmember_losses: torch.Tensor) -> dict:
    """Loss-based membership inference (Matsumoto et al. 2023 as CPSample used it).

    Inputs: per-image mean denoising losses ‖ε − ε̂(x_t, t)‖² of members and non-members. The attack
    succeeds when members score lower; returns :func:`welch_t_test` (alternative "less") of members vs
    non-members. p > 0.05 means the test can no longer tell them apart at the 5 % level.
    """
    return welch_t_test(member_losses, nonmember_losses, alternative="less")
