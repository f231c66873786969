"""How strong is a guard at each point of its training? The stop check against guidance on fresh seeds.

``train_guard`` stops at the first check (every 50 steps) that finds every training latent classified
right with p ≥ 0.99 in the bands where memorising is possible. This benchmark trains the guards of
benchmarks/calibration.py for their whole step budget instead (the check is measured but never
stops training), keeps the weights every ``--every`` steps and at every check that would have
stopped, and then guides ``--samples`` fresh seeds with each kept guard (α 0.5 on every step at
scale 1000: the strongest hand-tuned row of the calibration table) to see how many copies are left.

    CPSAMPLE_THREADS=1 python benchmarks/guard_checkpoints.py --bench mixture-flow \\
        --json benchmarks/results/guard_checkpoints_mixture_flow.json > benchmarks/results/guard_checkpoints_mixture_flow.txt
    CPSAMPLE_THREADS=1 python benchmarks/guard_checkpoints.py --bench digits-full \\
        --json benchmarks/results/guard_checkpoints_digits_full.json > benchmarks/results/guard_checkpoints_digits_full.txt

The guard seeds train exactly the guards of the calibration table up to their first passing check
(same data, same seeds, 1 thread), so the row at the first passing check is the guard that table
used. ``--ema`` traces a moving average of the weights instead (``train_guard(ema_decay=...)``), ``--lr``
another learning rate. ``--ensemble`` also guides with the mean logit of the weights kept from
the first passing check to the end of the budget, against the guard of that first check, at α 0.2 and 0.5;
``--calibrate`` calibrates those two guards instead (as benchmarks/calibration.py does) and measures the
calibrated settings on fresh seeds. ``--proxy`` also guides a model-free stand-in built from the training
latents with each kept guard (the self-test a stopping rule could use without the user's model); with
``--calibrate`` it calibrates the first pass and the first passing check that also passes the self-test.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import machine  # noqa: E402
from benchmarks.calibration import (PROBE_SEEDS, Bench, DigitsBench, MixtureBench, calibrate_rules,  # noqa: E402
                                    guide_of, sample_many)
from benchmarks.calibration_samplers import mixture_sampler  # noqa: E402
from benchmarks.mixture import Mixture  # noqa: E402
from cpsample_nodes.core.metrics import REPLICA_L2_RATIO, calibrated_l2_ratio  # noqa: E402
from cpsample_nodes.core import calibrate, training  # noqa: E402
from cpsample_nodes.core.calibration import L2_K, describe  # noqa: E402
from cpsample_nodes.core.guard import Guard  # noqa: E402

PASS = 0.99        # train_guard's target_accuracy and confidence: the stop check
CHECK_EVERY = 50   # train_guard's eval_every
ALPHA = 0.5
PROXY_SEEDS = 64   # --proxy: seeds of the model-free stand-in per kept guard
SELF_TEST_PASS = 1 / PROXY_SEEDS  # --calibrate --proxy: a passing check counts once the stand-in keeps <= 1 copy


class MeanLogitGuard(Guard):
    """Several kept weights of one guard read as one: the mean of their logits (an ensemble of
    checkpoints, not an average of weights)."""

    def __init__(self, nets: list, space) -> None:
        super().__init__(nets[0], space)
        self.members = [Guard(net, space) for net in nets]

    def logit(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return torch.stack([member.logit(x, sigma) for member in self.members]).mean(0)


def proxy_sampler(bench: Bench, steps: int = 20, kind: str = "euler_a"):
    """A model-free stand-in for a memorising fine-tune, built from the training latents alone: the
    closed-form mixture of benchmarks/mixture.py (half the mass on the training latents, half on
    N(0, I)) in the guard's noise space. How many of its copies a guard removes can be measured
    without the user's model."""
    return mixture_sampler(Mixture(bench.train.flatten(1), 0.5, 0.05), bench.space, steps, kind,
                           tuple(bench.train.shape[1:]))


def proxy_copies(bench: Bench, sample, guide, n: int = PROXY_SEEDS) -> float:
    """Share of the proxy's samples that copy a training latent (calibrated ℓ2 ratio < 1/3, as calibrate)."""
    x = sample(guide, list(range(PROBE_SEEDS, PROBE_SEEDS + n)))
    return float((calibrated_l2_ratio(x, bench.train, L2_K) < REPLICA_L2_RATIO).double().mean())


def trace(bench: Bench, seed: int, every: int, ema: float = 0.0, lr: float = 2e-3,
          max_steps: int | None = None) -> tuple[Guard, dict[int, dict], dict[int, float]]:
    """Train one guard for its whole budget; the weights kept at every ``every`` steps and at every
    passing check, and the stop check's value (worst required band) at every check."""
    made: list[Guard] = []

    class Watched(Guard):  # the guard train_guard builds (and, with a moving average, the average)
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    checks: dict[int, float] = {}
    kept: dict[int, dict] = {}
    required = training.required_bands(bench.space)

    def progress(step: int, total: int, stats: dict) -> None:
        if step % CHECK_EVERY == 0:
            acc, conf = stats["accuracy"], stats["confident"]
            checks[step] = min(min(acc.get(b, 0.0), conf.get(b, 0.0)) for b in required)
        if step % every == 0 or checks.get(step, 0.0) >= PASS:
            kept[step] = copy.deepcopy(made[-1].net.state_dict())  # the checked weights

    options = bench.training_options()
    if max_steps is not None:
        options["max_steps"] = max_steps
    original = training.Guard
    training.Guard = Watched
    try:
        # target above 1: the check is measured (and reported to progress) but never passes
        guard = training.train_guard(bench.train, bench.space, seed=seed, progress=progress,
                                     target_accuracy=1.01, ema_decay=ema, lr=lr, heads=bench.heads, **options)
    finally:
        training.Guard = original
    return guard, kept, checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", choices=["mixture-flow", "mixture-vp", "digits-full", "digits-prior"],
                    default="mixture-flow")
    ap.add_argument("--guard-seeds", default="0,1,2")
    ap.add_argument("--samples", type=int, default=300, help="fresh seeds guided with each kept guard")
    ap.add_argument("--sampler", default="euler_a")
    ap.add_argument("--every", type=int, default=200, help="keep the weights every this many steps")
    ap.add_argument("--ema", type=float, default=0.0, help="trace train_guard(ema_decay=...) instead")
    ap.add_argument("--lr", type=float, default=2e-3, help="train_guard's learning rate (its default: 2e-3)")
    ap.add_argument("--ensemble", action="store_true",
                    help="also guide with the mean logit of the weights kept from the first passing check on")
    ap.add_argument("--calibrate", action="store_true",
                    help="instead of guiding every kept guard: calibrate the first-pass guard and the ensemble "
                         "(public calibrate, the calibration table's probe seeds) and measure each on fresh seeds")
    ap.add_argument("--proxy", action="store_true",
                    help="also count the copies each kept guard leaves in a model-free stand-in built from the "
                         "training latents (a closed-form mixture on them), at α 0.5 on every step; with "
                         "--calibrate: calibrate the first pass and the first pass whose stand-in keeps <= 1 of "
                         f"{PROXY_SEEDS} copies (the self-test), instead of the ensemble")
    ap.add_argument("--spoil-only", action="store_true",
                    help="with --calibrate: calibrate(count_moved=False), ranking by spoiled probes alone, as "
                         "the results made before 2026-12 did")
    ap.add_argument("--confirm-each", action="store_true",
                    help="with --calibrate: calibrate(confirm_each=True), confirming each setting that beats the "
                         "best so far at once, as the results made before 2026-12-02 did (the same choices)")
    ap.add_argument("--copies-spoiled", action="store_true",
                    help="with --calibrate: calibrate(count_copies=True), a probe that still copies counts as "
                         "spoiled too, as the results made before 2026-12-02 did")
    ap.add_argument("--no-reuse", action="store_true",
                    help="with --calibrate: calibrate(reuse_unguarded=False), sampling every seed of every "
                         "setting, as the results made before 2026-12-03 did (the same choices, more calls)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CPSAMPLE_THREADS", "2")))  # it decides which guard trains
    t0 = time.time()
    print(f"machine: {machine.describe()}", flush=True)
    bench: Bench = (MixtureBench(args.bench.split("-")[1], args.samples, 50) if args.bench.startswith("mixture")
                    else DigitsBench(args.bench.split("-")[1], args.samples))
    sample = bench.sampler(args.sampler)
    unguarded = bench.metrics(sample_many(sample, None, args.samples))
    print(f"[{bench.name}] {args.sampler}, {args.samples} fresh seeds, unguarded: replicas {unguarded['replicas']:.1%}, "
          f"{bench.quality_key} {unguarded[bench.quality_key]:.3f}; guided: α {ALPHA} on every step", flush=True)
    proxy = proxy_sampler(bench) if args.proxy else None
    if proxy is not None:
        print(f"proxy (closed-form mixture on the training latents, euler_a, 20 steps, {PROXY_SEEDS} seeds): "
              f"unguarded copies {proxy_copies(bench, proxy, None):.1%}", flush=True)
    rows: list[dict] = []
    for seed in (int(s) for s in args.guard_seeds.split(",")):
        guard, kept, checks = trace(bench, seed, args.every, args.ema, args.lr)
        passes = [s for s, v in sorted(checks.items()) if v >= PASS]
        print(f"guard seed {seed}: the stop check passes at steps {passes or 'none'} "
              f"(train_guard stops at {passes[0] if passes else guard.info['steps']})", flush=True)
        nets = []
        tested = None  # --proxy: the weights of the first passing check that also pass the self-test
        for step in sorted(kept):
            guard.net.load_state_dict(kept[step])
            if passes and step >= passes[0]:
                nets.append(copy.deepcopy(guard.net).eval())
            if args.calibrate:
                if proxy is not None and tested is None and step in passes:
                    left = proxy_copies(bench, proxy, guide_of(guard, {"alpha": ALPHA}))
                    print(f"  step {step:5d}  passes the stop check; self-test: proxy copies {left:.1%}"
                          f"{' (passes)' if left <= SELF_TEST_PASS else ''}", flush=True)
                    if left <= SELF_TEST_PASS:
                        tested = (step, copy.deepcopy(guard.net).eval())
                continue  # only the guards below are measured
            m = bench.metrics(sample_many(sample, guide_of(guard, {"alpha": ALPHA}), args.samples))
            row = {"guard_seed": seed, "step": step, "check": checks.get(step), "passes": step in passes,
                   "first_pass": bool(passes) and step == passes[0],
                   "train_margin": round(guard.training_margin(bench.train), 3), **m}
            if proxy is not None:
                row["proxy_copies"] = proxy_copies(bench, proxy, guide_of(guard, {"alpha": ALPHA}))
            rows.append(row)
            print(f"  step {step:5d}  check {checks.get(step, float('nan')):.3f}{' PASS' if row['passes'] else '     '}"
                  f"  margin {row['train_margin']:5.2f}  replicas {m['replicas']:6.1%}  "
                  f"{bench.quality_key} {m[bench.quality_key]:.3f}"
                  + (f"  proxy copies {row['proxy_copies']:6.1%}" if proxy is not None else ""), flush=True)
        both = {"first pass": Guard(nets[0], bench.space),
                f"mean logit of {len(nets)} kept from the first pass": MeanLogitGuard(nets, bench.space)} if nets else {}
        if args.calibrate and proxy is not None:  # the first pass against the first self-tested pass
            both = dict(list(both.items())[:1])
            if tested is None:
                print("  no passing check passes the self-test", flush=True)
            elif tested[0] == passes[0]:
                print("  the first pass passes the self-test: the same guard", flush=True)
            else:
                both[f"self-tested pass (step {tested[0]})"] = Guard(tested[1], bench.space)
        for label, g in both.items():
            if args.calibrate:
                cal = calibrate(g, sample, bench.train, seeds=range(PROBE_SEEDS, PROBE_SEEDS + 64),
                                sampler_description=f"{bench.name} {args.sampler}", **calibrate_rules(args))
                m = bench.metrics(sample_many(sample, guide_of(g, cal.settings), args.samples))
                rows.append({"guard_seed": seed, "guard": label, "calibrated": describe(cal.settings),
                             "settings": cal.settings, "reached": cal.reached, "model_calls": cal.model_calls, **m})
                print(f"  {label:42} calibrated ({describe(cal.settings)}, {cal.model_calls} model calls"
                      f"{'' if cal.reached else ', MISSES the target'}): replicas {m['replicas']:6.1%}  "
                      f"{bench.quality_key} {m[bench.quality_key]:.3f}", flush=True)
            elif args.ensemble:
                for alpha in (0.2, ALPHA):
                    m = bench.metrics(sample_many(sample, guide_of(g, {"alpha": alpha}), args.samples))
                    rows.append({"guard_seed": seed, "guard": label, "alpha": alpha, **m})
                    print(f"  {label:42} α {alpha}: replicas {m['replicas']:6.1%}  "
                          f"{bench.quality_key} {m[bench.quality_key]:.3f}", flush=True)
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"command": "python benchmarks/guard_checkpoints.py " + " ".join(sys.argv[1:]),
                                   "unguarded": unguarded, "alpha": ALPHA, "quality": bench.quality_key,
                                   "seconds": round(time.time() - t0), "machine": machine.info(), "rows": rows}, indent=1))
        tmp.replace(args.json)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
