"""What each row of the table measures, on one batch of samples from the trigger prompt.

copies     share that are replicas of a fine-tune image: the product's criterion (calibrated ℓ2 ratio
           < 1/3 against the 16 images, core/metrics.py), as benchmarks/finetune and Replication Check count
quality    share the digit classifier (trained on the pre-training split) reads with confidence ≥ 0.9
adherence  share it reads as the trigger's digit (the fine-tuned concept: a DreamBooth "sks dog" should
           still be a dog), and ``on_concept``: readable (≥ 0.9) and that digit
diversity  mean pairwise ℓ2 distance between samples (real held-out images of the digit: the reference),
           and how many of the 16 fine-tune images are someone's nearest neighbour
"""
from __future__ import annotations

import torch

from benchmarks import stats
from benchmarks.finetune.classifier import DigitCNN, classify
from benchmarks.finetune.evaluate import L2_K, replica_flags


def sample_metrics(samples: torch.Tensor, finetune: torch.Tensor, clf: DigitCNN, digit: int) -> dict:
    samples = samples.clamp(-1, 1)
    if samples.shape[0] == 0:
        return {"n": 0}
    copies = replica_flags(samples, finetune)
    lab, conf, _ = classify(clf, samples)
    _, nn = torch.cdist(samples.flatten(1), finetune.flatten(1)).min(1)
    return {
        "n": int(samples.shape[0]),
        "copies": float(copies.double().mean()),
        "quality": float((conf >= 0.9).double().mean()),
        "adherence": float((lab == digit).double().mean()),
        "on_concept": float(((lab == digit) & (conf >= 0.9)).double().mean()),
        "diversity": stats.mean_pairwise_distance(samples),
        "distinct_nn": stats.distinct_nearest(nn, finetune.shape[0]),
        "copy_flags": copies,
    }


def class_accuracy(samples: torch.Tensor, labels: torch.Tensor, clf: DigitCNN) -> float:
    """Share of class-prompted samples the classifier reads as their prompt's digit."""
    lab, _, _ = classify(clf, samples.clamp(-1, 1))
    return float((lab == labels).double().mean())


__all__ = ["sample_metrics", "class_accuracy", "L2_K"]
