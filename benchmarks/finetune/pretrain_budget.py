"""How much pretraining the DreamBooth-style (prior) preset needs, and what it costs.

The prior preset meets the quality goal only because its base model draws good new digits (the
guarded samples are new digits, so they can be no better than the base). Its pretraining is most of
the preset's time. This trains the base at other budgets (same data, same seed) and reads its
quality the way run.py does: 500 Euler-20 samples, share the digit classifier reads at >= 0.9
confidence, Fréchet distance in its features.

    CPSAMPLE_THREADS=2 python -m benchmarks.finetune.pretrain_budget 128:4800:2e-3 128:3200:2e-3 64:5600:1.5e-3

Each argument is batch:steps:lr. Models come from (or go to) the benchmark cache; `train_s` is the
wall time when the model was trained in this run, null when it came from the cache.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time

import torch

from . import pipeline as P
from .classifier import classify
from .evaluate import generate, sample_metrics
from .run import ROOT, threads

OUT = ROOT / "benchmarks" / "results" / "finetune_pretrain_budget"


def parse(arg: str) -> tuple[int, int, float]:
    try:
        batch, steps, lr = arg.split(":")
        return int(batch), int(steps), float(lr)
    except ValueError:
        raise SystemExit(f"pretrain_budget: {arg!r} is not batch:steps:lr (e.g. 128:3200:2e-3)") from None


def main(argv: list[str]) -> int:
    nthreads = threads()
    # the variants change only the pretraining, not the data split or the classifier
    split = P.get_split(P.PRIOR)
    clf = P.get_classifier(P.PRIOR, split)
    _, _, ref = classify(clf, split.heldout)
    rows = []
    for batch, steps, lr in [parse(a) for a in argv] or [(P.PRIOR.batch, P.PRIOR.pretrain_steps,
                                                          P.PRIOR.pretrain_lr)]:
        cfg = dataclasses.replace(P.PRIOR, batch=batch, pretrain_steps=steps, pretrain_lr=lr)
        cached = P.pretrain_path(cfg).exists()
        t0 = time.time()
        model = P.get_pretrained(cfg, split)
        train_s = None if cached else round(time.time() - t0, 1)
        with torch.no_grad():
            r = sample_metrics(generate(model, cfg.n_samples, cfg.sample_seed, cfg.sample_steps), split, clf, ref)
        row = {"batch": batch, "steps": steps, "lr": lr, "images_seen": batch * steps, "train_s": train_s,
               "quality_share": r["quality_share"], "frechet_clf": r["frechet_clf"]}
        rows.append(row)
        print(f"batch {batch} x {steps} steps, lr {lr:g} ({batch * steps} images): quality "
              f"{r['quality_share']:.1%}, FD {r['frechet_clf']:.1f}, "
              f"{'cached' if train_s is None else f'trained in {train_s:.0f} s'}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps({
        "command": "python -m benchmarks.finetune.pretrain_budget " + " ".join(argv),
        "threads": nthreads, "torch": torch.__version__, "n_samples": P.PRIOR.n_samples, "rows": rows}, indent=1))
    print(f"wrote {OUT.with_suffix('.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
