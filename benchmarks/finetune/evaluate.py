"""Sampling with and without the guard, and every metric of issue 4 on one batch of samples."""
from __future__ import annotations

from typing import Optional

import torch

from benchmarks import stats
from cpsample_nodes.core.metrics import REPLICA_L2_RATIO, calibrated_l2_ratio

from .classifier import DigitCNN, classify
from .data import DigitSplit
from .diffusion import EpsDenoiser, karras_sigmas, sample_euler, SIGMA_MAX, SIGMA_MIN

L2_K = 5  # calibrated ℓ2: nearest fine-tune image vs the mean of the next 5 (of 15 others)
BLUR_PX = 1.0  # std of the Gaussian blur in the robustness check of the replica rate


def gaussian_blur(x: torch.Tensor, std: float) -> torch.Tensor:
    """Gaussian blur of [B, C, H, W] (7×7 taps, reflected borders; kornia, as the core's SSIM)."""
    import kornia

    return kornia.filters.gaussian_blur2d(x, (7, 7), (std, std), border_type="reflect")


def replica_flags(samples: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Per sample: is it an ℓ2 replica of a fine-tune image (calibrated ratio below the threshold)."""
    return calibrated_l2_ratio(samples, train, k=L2_K) < REPLICA_L2_RATIO


def blurred_replication(samples: torch.Tensor, train: torch.Tensor, std: float = BLUR_PX) -> float:
    """Replica rate (calibrated ℓ2) after blurring samples and training images alike: a copy that only
    gained fine speckle still counts, so a guard cannot pass by adding noise."""
    return float(replica_flags(gaussian_blur(samples, std), gaussian_blur(train, std)).double().mean())


def make_guide(guard, scale: float, alpha: float, sigma_range: Optional[tuple] = None, **opts):
    """guide(denoised, x, sigma) for the sampler; with sigma_range=(lo, hi) the guard acts only on steps
    whose sigma lies in [lo, hi] (a sampler-side window, like ComfyUI's start/end percent)."""
    if guard is None or scale == 0:
        return None

    def fn(den, x, sig):
        if sigma_range is not None:
            s0 = float(sig.reshape(-1)[0])
            if not (sigma_range[0] <= s0 <= sigma_range[1]):
                return den
        return guard.guide(den, x, sig, scale=scale, alpha=alpha, **opts)

    return fn


def generate(model: EpsDenoiser, n: int, seed: int, steps: int, guard=None, scale: float = 0.0,
             alpha: float = 0.001, ancestral: bool = False, batch: int = 250, **opts) -> torch.Tensor:
    """n samples in [-1, 1] from fixed seeds (the same noise with and without the guard)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, 1, 16, 16), generator=g)
    sig = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    guide = make_guide(guard, scale, alpha, **opts)
    out = []
    for i in range(0, n, batch):
        ga = torch.Generator().manual_seed(seed + 1 + i)
        out.append(sample_euler(model, noise[i:i + batch], sig, guide=guide, ancestral=ancestral, generator=ga))
    return torch.cat(out).clamp(-1, 1)


def sample_metrics(samples: torch.Tensor, split: DigitSplit, clf: DigitCNN,
                   ref_feats: Optional[torch.Tensor] = None) -> dict:
    """Replication, quality and diversity of samples [M,1,16,16] in [-1,1] against the fine-tune set."""
    rep = stats.replication_report(samples, split.finetune, k=L2_K, data_range=2.0, layout="BCHW")
    _, conf, feats = classify(clf, samples)
    if ref_feats is None:
        _, _, ref_feats = classify(clf, split.heldout)
    return {
        "n": samples.shape[0],
        "replication_l2": rep["rate_l2"],
        "replication_ssim": rep["rate_ssim"],
        "replication_either": rep["rate_either"],
        "replication_l2_blur": blurred_replication(samples, split.finetune),
        "median_l2_ratio": float(rep["l2_ratio"].median()),
        "median_max_ssim": float(rep["ssim"].median()),
        "quality_share": float((conf >= 0.9).double().mean()),
        "frechet_clf": stats.frechet_distance(feats, ref_feats),
        "distinct_nn": stats.distinct_nearest(rep["nn_index"], split.finetune.shape[0]),
        "spread": stats.mean_pairwise_distance(samples),
        "nn_index": rep["nn_index"],
    }


def rejection_metrics(samples: torch.Tensor, split: DigitSplit, clf: DigitCNN,
                      ref_feats: Optional[torch.Tensor] = None) -> Optional[dict]:
    """The ideal a guard approximates: ``sample_metrics`` of the samples left after rejecting every
    replica (None if all are replicas). Its quality share is the most a guard can keep without copying."""
    keep = ~replica_flags(samples, split.finetune)
    return sample_metrics(samples[keep], split, clf, ref_feats) if bool(keep.any()) else None


@torch.no_grad()
def mia_losses(model: EpsDenoiser, images: torch.Tensor, sigmas, draws: int, seed: int, guard=None,
               scale: float = 0.0, alpha: float = 0.001, **opts) -> torch.Tensor:
    """Per-image mean ‖ε − ε̂‖² / D over noise levels and draws, ε̂ = (x − denoised_guided)/σ.

    The same ε draws are used with and without the guard (seeded)."""
    g = torch.Generator().manual_seed(seed)
    guide = make_guide(guard, scale, alpha, **opts)
    tot = torch.zeros(images.shape[0], dtype=torch.float64)
    count = 0
    for s in sigmas:
        for _ in range(draws):
            eps = torch.randn(images.shape, generator=g)
            sig = torch.full((images.shape[0],), float(s))
            x = images + float(s) * eps
            den = model(x, sig)
            if guide is not None:
                den = guide(den, x, sig)
            eps_hat = (x - den) / float(s)
            tot += ((eps - eps_hat) ** 2).flatten(1).mean(1).double()
            count += 1
    return tot / count


def mia(model, split: DigitSplit, sigmas, draws: int, guard=None, scale=0.0, alpha=0.001, seed: int = 77,
        **opts) -> dict:
    members = split.finetune
    nonmembers = split.heldout[: members.shape[0]]
    lm = mia_losses(model, members, sigmas, draws, seed, guard, scale, alpha, **opts)
    ln = mia_losses(model, nonmembers, sigmas, draws, seed, guard, scale, alpha, **opts)
    return stats.loss_mia(lm, ln)


def summarize_real(split: DigitSplit, clf: DigitCNN) -> dict:
    """Reference numbers on real held-out digits (what a perfect, non-copying generator would score)."""
    lab, conf, feats = classify(clf, split.heldout)
    half = split.heldout.shape[0] // 2
    return {
        "classifier_accuracy_heldout": float((lab == split.heldout_labels).double().mean()),
        "quality_share_heldout": float((conf >= 0.9).double().mean()),
        "frechet_heldout_half_vs_half": stats.frechet_distance(feats[:half], feats[half:]),
        "replication_l2_heldout": stats.replication_report(split.heldout, split.finetune, k=L2_K, data_range=2.0,
                                                       layout="BCHW")["rate_l2"],
        "spread_heldout": stats.mean_pairwise_distance(split.heldout),
    }
