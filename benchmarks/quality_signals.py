"""Can calibration see what a setting costs in quality? Signals it could measure, against the digit CNN.

Calibration picks between settings that all cut the copies with a *spoil* measure (near copies, or
std, mean, max |x| or high-frequency share outside the natural range; docs/protection.md). On the
digits it misses quality differences that the benchmark's digit CNN sees: DreamBooth-style guard
seed 2 with Euler ancestral chose α 0.5 on σ ≤ 2 where every step would have drawn better digits.
This benchmark asks whether any signal calibration has, or could have with one more host hook, ranks
the settings as the CNN does. For each guard (retrained in the run) and setting it samples fresh
seeds and reports:

- ``quality``: the digit CNN's confident share (the benchmark's judge, which calibration never has),
  of all samples and of the *new* ones (not replicas): a guard's quality cost is in the new ones;
- on the new samples, the signals:
  - ``spoiled``: calibration's own spoil share, its reference built as in ``calibrate`` from the
    training latents and the unguarded samples of the same seeds;
  - ``change``: mean relative change from the unguarded sample (of those that did not copy unguarded);
  - ``late push``: the guard's push ‖guided − denoised‖ summed over the steps with σ < 0.5 (what the
    guide sees, so no host change is needed);
  - ``re-denoise``: ‖D(x + 0.7 ε) − x‖, the model's own correction of the finished sample renoised
    to σ 0.7 (would need a host hook that runs the model once on a given latent).
  - ``pull back``: ‖D_{k+1} − G_k‖ summed over the steps, the model's next x0 prediction against the
    guided one G_k it was steered to, and ``undone``: the share of the push G_k − D_k the model took
    back (both from the guide's own calls, so no host change is needed).

Then, per guard, the Spearman rank correlation over the settings between each signal and the quality
of the new samples (a useful signal is strongly negative: more spoil, push or correction, worse digits).

    CPSAMPLE_THREADS=1 python benchmarks/quality_signals.py --bench digits-full --sampler euler \
        --json benchmarks/results/quality_signals_digits_full_euler.json
    python benchmarks/quality_signals.py --summarize benchmarks/results/quality_signals_*.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import machine  # noqa: E402
from benchmarks.calibration import EVAL_SEEDS, DigitsBench  # noqa: E402
from benchmarks.finetune.classifier import classify  # noqa: E402
from cpsample_nodes.core.calibration import L2_K, _Reference, window_sigma  # noqa: E402
from cpsample_nodes.core.metrics import REPLICA_L2_RATIO, calibrated_l2_ratio  # noqa: E402

SETTINGS = [("α 0.3, σ ≤ 1", 0.3, 1.0), ("α 0.5, σ ≤ 1", 0.5, 1.0), ("α 0.2, σ ≤ 2", 0.2, 2.0),
            ("α 0.5, σ ≤ 2", 0.5, 2.0), ("α 0.2, all steps", 0.2, None), ("α 0.5, all steps", 0.5, None)]
SIGNALS = ("spoiled", "change", "late_push", "redenoise", "pull_back", "undone")
LATE_SIGMA = 0.5
REDENOISE_SIGMA = 0.7


def ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks from 1, tied values sharing their mean rank (several settings spoil nothing)."""
    v = v.double()
    return torch.stack([(v < x).sum() + ((v == x).sum() + 1) / 2 for x in v]).double()


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's ρ; 0 where either side is constant."""
    ra, rb = ranks(a), ranks(b)
    if float(ra.std()) == 0 or float(rb.std()) == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def measure(guard, sample, seeds: list[int], settings: dict | None):
    """Samples of ``seeds`` with ``settings`` (None: unguarded), each sample's summed late push and what
    the model made of the pushes: the pull back ‖D_{k+1} − G_k‖ summed over the steps (the model's next
    x0 prediction against the guided one it was steered to), and the share of the push it undid,
    Σ⟨D_k − G_k, D_{k+1} − G_k⟩ / Σ‖G_k − D_k‖². Both come from the guide's own calls."""
    n = len(seeds)
    late, pull, undo, pushed = (torch.zeros(n, dtype=torch.float64) for _ in range(4))
    prev: dict[str, torch.Tensor] = {}

    def guide(d, x, s):
        g = d if settings is None else guard.guide(d, x, s, **settings)
        if float(s[0]) < LATE_SIGMA:
            late.add_((g - d).flatten(1).norm(dim=1).double())
        if prev:
            back = (d - prev["g"]).flatten(1).double()
            push = (prev["d"] - prev["g"]).flatten(1).double()
            pull.add_(back.norm(dim=1))
            undo.add_((back * push).sum(1))
            pushed.add_(push.pow(2).sum(1))
        prev["g"], prev["d"] = g.detach().clone(), d.detach().clone()
        return g

    x = sample(guide, seeds)
    return x, late, pull, undo / pushed.clamp_min(1e-12)


@torch.no_grad()
def redenoise(bench: DigitsBench, x: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    d = bench.model(x + REDENOISE_SIGMA * noise, torch.full((x.shape[0],), REDENOISE_SIGMA))
    return (d - x).flatten(1).norm(dim=1).double()


def run(bench: DigitsBench, kind: str, guard_seeds: list[int], n: int) -> list[dict]:
    seeds = list(range(EVAL_SEEDS, EVAL_SEEDS + n))
    sample = bench.sampler(kind)
    where = machine.describe()  # the same for every row; the guards trained on it
    rows = []
    for gs in guard_seeds:
        guard = bench.guard(gs)
        base, *_ = measure(guard, sample, seeds, None)
        base_ratio = calibrated_l2_ratio(base, bench.train, L2_K)
        copied = base_ratio < REPLICA_L2_RATIO
        reference = _Reference.of(torch.cat([bench.train, base]), base_ratio[~copied])
        per_guard = []
        for label, alpha, ratio in SETTINGS:
            settings = {"alpha": alpha, "sigma_max": window_sigma(guard, ratio)}
            x, late, pull, undone = measure(guard, sample, seeds, settings)
            m = bench.metrics(x)
            ratio_x = calibrated_l2_ratio(x, bench.train, L2_K)
            new = ratio_x >= REPLICA_L2_RATIO  # the samples that are not replicas: what the signals judge
            _, conf, _ = classify(bench.clf, x[new])
            moved = ~copied & new
            change = ((x[moved] - base[moved]).flatten(1).norm(dim=1) / base[moved].flatten(1).norm(dim=1)).mean()
            row = {"bench": bench.name, "sampler": kind, "guard_seed": gs, "guard_steps": guard.info["steps"],
                   "machine": where, "setting": label,
                   "replicas": m["replicas"], "quality": m["quality_share"],
                   "quality_new": float((conf >= 0.9).double().mean()),
                   "spoiled": float(reference.spoiled(x[new], ratio_x[new]).double().mean()),
                   "change": float(change), "late_push": float(late[new].mean()),
                   "redenoise": float(redenoise(bench, x[new]).mean()),
                   "pull_back": float(pull[new].mean()), "undone": float(undone[new].mean())}
            print(f"  {bench.name} g{gs} {kind:8} {label:18} replicas {row['replicas']:6.1%}  quality {row['quality']:.3f}, "
                  f"new {row['quality_new']:.3f}  "
                  f"spoiled {row['spoiled']:6.1%}  change {row['change']:.3f}  late push {row['late_push']:.3f}  "
                  f"re-denoise {row['redenoise']:.3f}  pull back {row['pull_back']:.3f}  undone {row['undone']:.3f}",
                  flush=True)
            per_guard.append(row)
        q = torch.tensor([r["quality_new"] for r in per_guard])
        corr = {s: rank_correlation(torch.tensor([r[s] for r in per_guard]), q) for s in SIGNALS}
        print(f"  {bench.name} g{gs} {kind:8} rank correlation with the quality of new samples: "
              + "  ".join(f"{s} {c:+.2f}" for s, c in corr.items()), flush=True)
        for r in per_guard:
            r["rank_correlation"] = corr
        rows += per_guard
    return rows


def summarize(paths: list[Path]) -> str:
    """Per benchmark: each signal's rank correlation with the quality of new samples, per guard seed
    (the signals every file has: results made before pull back and undone were measured lack them)."""
    files = [json.loads(path.read_text()) for path in paths]
    signals = [s for s in SIGNALS if all(s in r for rows in files for r in rows)]
    lines = ["| benchmark | sampler | " + " | ".join(f"{s}, guard seed 0 \\| 1 \\| 2" for s in signals) + " |",
             "| --- | --- | " + " | ".join("---" for _ in signals) + " |"]
    for rows in files:
        seeds = sorted({r["guard_seed"] for r in rows})
        cells = []
        for sig in signals:
            per = []
            for gs in seeds:
                mine = [r for r in rows if r["guard_seed"] == gs]
                q = torch.tensor([r["quality_new"] for r in mine])
                per.append(f"{rank_correlation(torch.tensor([r[sig] for r in mine]), q):+.2f}")
            cells.append(" \\| ".join(per))
        lines.append(f"| {rows[0]['bench']} | {rows[0]['sampler']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", choices=["digits-full", "digits-prior"])
    ap.add_argument("--sampler", choices=["euler", "euler_a"])
    ap.add_argument("--summarize", nargs="+", type=Path, help="print the table of these JSON results")
    ap.add_argument("--guard-seeds", default="0,1,2")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.summarize:
        print(summarize(a.summarize))
        return
    if not (a.bench and a.sampler):
        ap.error("--bench and --sampler are required (or --summarize)")
    torch.set_num_threads(int(os.environ.get("CPSAMPLE_THREADS", "2")))  # it decides which guard trains
    bench = DigitsBench(a.bench.split("-")[1], a.samples)
    print(f"machine: {machine.describe()}", flush=True)
    rows = run(bench, a.sampler, [int(s) for s in a.guard_seeds.split(",")], a.samples)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
