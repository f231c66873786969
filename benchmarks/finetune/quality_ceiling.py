"""The quality a perfect replica filter could keep, for longer pretraining and more sampling steps.

For each pretraining length: the pretrained and the fine-tuned model (full-size config otherwise),
500 unguarded samples at 20 and 50 Euler steps; replica rate, quality share (classifier confidence
≥ 0.9), classifier Fréchet distance, and the same for the samples left after rejecting every
replica (the ceiling of any guard: docs/finetune.md).

    python -m benchmarks.finetune.quality_ceiling 800 2400 > benchmarks/results/finetune_quality_ceiling.txt
"""
from __future__ import annotations

import dataclasses
import sys

import torch

from . import pipeline as P
from .classifier import classify
from .evaluate import generate, rejection_metrics, sample_metrics
from .run import threads


def main(argv: list[str]) -> None:
    threads()
    for pre_steps in [int(a) for a in argv] or [P.FULL.pretrain_steps]:
        cfg = dataclasses.replace(P.FULL, pretrain_steps=pre_steps)
        split = P.get_split(cfg)
        clf = P.get_classifier(cfg, split)
        _, _, ref = classify(clf, split.heldout)
        models = {"pretrained": P.get_pretrained(cfg, split), "fine-tuned": P.get_finetuned(cfg, split)}
        for steps in (20, 50):
            for name, model in models.items():
                s = generate(model, cfg.n_samples, cfg.sample_seed, steps)
                r = sample_metrics(s, split, clf, ref)
                line = (f"pretrain {pre_steps} steps, sampling {steps} steps, {name}: replicas "
                        f"{r['replication_l2']:.1%}, quality {r['quality_share']:.1%}, FD {r['frechet_clf']:.1f}")
                rr = rejection_metrics(s, split, clf, ref) if name == "fine-tuned" else None
                if rr is not None:
                    line += (f" | after rejecting replicas: {rr['n']} left, quality "
                             f"{rr['quality_share']:.1%}, FD {rr['frechet_clf']:.1f}")
                print(line, flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main(sys.argv[1:])
