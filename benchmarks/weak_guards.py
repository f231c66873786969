"""What makes a guard weak? Where its push is small, and where it is not confident, on the copies.

For each guard of benchmarks/calibration.py (same data, seeds and training, 1 thread, so the same
guards), this measures:

- **push at the training latents**: the guard reads each clean training latent as it reads an x0
  prediction (at σ_min) and the root-mean-square of the gradient of its objective log p(1−p) there is
  the push it gives at scale 1 (the step is scale·w(σ) times it, capped at max_step·σ);
- **the copies left at α 0.5** (scale 1000, every step; ``--samples`` fresh seeds): which training
  latent each copies, and where that latent ranks by push (0 = the latent the guard pushes least);
- **along the unguarded trajectories that copy** (the same seeds, no guidance): at each step, how
  confident the guard is on the model's x0 prediction (|1 − 2p|) and the step it would take at α 0.5
  and scale 1000 as a share of the step cap, against the trajectories that do not copy.

Trials (guide variants, measured on the evaluation seeds; none is a product setting):

- ``--read-sigmas``: the guard reads the x0 prediction at these σ instead of σ_min (a blurred view
  that could recognise a model's imperfect copies);
- ``--normalized``: the push takes the guard's direction and a fixed share of the step cap times the
  confidence |1 − 2p|, whatever the gradient's size;
- ``--adapt``: before guiding, the guard trains these many more steps with the probe seeds' unguarded
  copies as extra positives (each with the label of the latent it copies), as a calibration could.

    CPSAMPLE_THREADS=1 python benchmarks/weak_guards.py --bench mixture-flow > benchmarks/results/weak_guards_mixture_flow.txt
    CPSAMPLE_THREADS=1 python benchmarks/weak_guards.py --bench digits-full --samples 500 > benchmarks/results/weak_guards_digits_full.txt
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.calibration import (BATCH, EVAL_SEEDS, PROBE_SEEDS, Bench, DigitsBench,  # noqa: E402
                                    MixtureBench, guide_of, sample_many)
from cpsample_nodes.core import Guard, NoiseSpace  # noqa: E402
from cpsample_nodes.core.calibration import L2_K  # noqa: E402
from cpsample_nodes.core.guard import as_sigma  # noqa: E402
from cpsample_nodes.core.metrics import REPLICA_L2_RATIO, calibrated_l2_ratio  # noqa: E402
from cpsample_nodes.core.training import make_negatives, random_labels, sample_sigmas  # noqa: E402

ALPHA = 0.5    # the strongest gate of the calibration table's hand rows
SCALE = 1000.0


def copies(bench: Bench, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples copy a training latent (the benchmark's own replica test), and the nearest latent."""
    nearest = torch.cdist(x.flatten(1).double(), bench.train.flatten(1).double())
    if isinstance(bench, MixtureBench):
        copied = nearest.min(1).values < bench.threshold
    else:
        copied = calibrated_l2_ratio(x, bench.train, L2_K) < REPLICA_L2_RATIO
    return copied, nearest.argmin(1)


def objective_grad(guard: Guard, x: torch.Tensor, read_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The guard's logit on x read at ``read_sigma`` and the gradient of log p(1−p) over x."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().float().clone().requires_grad_(True)
        z = guard.logit(xg, torch.full((x.shape[0],), read_sigma))
        (grad,) = torch.autograd.grad((F.logsigmoid(z) + F.logsigmoid(-z)).sum(), xg)
    return z.detach(), grad


def rms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).pow(2).mean(1).sqrt()


def reading(guard: Guard, read_sigma: float) -> Guard:
    """The same guard reading x0 predictions at ``read_sigma`` instead of σ_min."""
    sp = guard.space
    return guard.with_space(NoiseSpace(sp.kind, read_sigma, sp.sigma_max, sp.name))


def normalized_guide(guard: Guard, alpha: float, share: float):
    """Guide variant: the guard's direction, a step of ``share`` × cap × |1 − 2p| where p is outside [α, 1−α]."""
    def guide(d: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
        sig = as_sigma(sigma, d.shape[0], d).float()
        z, grad = objective_grad(guard, d, guard.space.sigma_min)
        p = torch.sigmoid(z)
        on = ((p < alpha) | (p > 1 - alpha)).float()
        size = share * guard.space.x0_noise(sig) * (1 - 2 * p).abs() * on
        return d + (grad / rms(grad).clamp_min(1e-12).view(-1, 1, 1, 1) * size.view(-1, 1, 1, 1)).to(d)
    return guide


def adapted(guard: Guard, bench: Bench, seed: int, probes: torch.Tensor, steps: int, lr: float = 5e-4) -> Guard:
    """The guard trained ``steps`` more steps, each batch 16 probe copies (labelled as the latent they
    copy), 16 training latents and 16 negatives (target ½), noised as ``train_guard`` noises them."""
    copied, nearest = copies(bench, probes)
    labels = random_labels(bench.train.shape[0], seed)  # train_guard's labels for this seed
    cx, cy = probes[copied], labels[nearest[copied]]
    net = copy.deepcopy(guard.net)
    net.train()
    net.requires_grad_(True)
    out = Guard(net, guard.space, guard.info)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 3)
    negatives = bench.training_options().get("negatives", "gaussian+blends")
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(steps):
            i = torch.randint(0, len(cx), (16,), generator=g)
            j = torch.randint(0, len(bench.train), (16,), generator=g)
            x0 = torch.cat([cx[i], bench.train[j], make_negatives(negatives, bench.train, 16, g)])
            y = torch.cat([cy[i], labels[j], torch.full((16,), 0.5)])
            sig = sample_sigmas(guard.space, len(x0), g)
            x = guard.space.noise(x0, sig, torch.randn(x0.shape, generator=g))
            loss = F.binary_cross_entropy_with_logits(out.logit(x, sig), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    net.requires_grad_(False)
    return out


def trajectories(bench: Bench, guard: Guard, sample, n: int) -> list[str]:
    """Along n unguarded trajectories: the guard's confidence on the x0 prediction and its would-be
    step (α 0.5, scale 1000) as a share of the cap, for the trajectories that end as copies and the rest."""
    log: list[tuple[float, torch.Tensor, torch.Tensor]] = []

    def watch(d: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
        sig = as_sigma(sigma, d.shape[0], d).float()
        p = guard.probability(d, guard.space.sigma_min)
        step = rms(guard.guide(d, x, sigma, alpha=ALPHA, scale=SCALE, max_step=None) - d)
        log.append((float(sig[0]), (1 - 2 * p).abs(), step / guard.space.x0_noise(sig)))
        return d  # unguarded: only watch

    x = sample_many(sample, watch, n)
    copied, _ = copies(bench, x)
    per_step = len(log) // -(-n // BATCH)  # sample_many runs batches of BATCH seeds
    lines = [f"  along {n} unguarded trajectories ({int(copied.sum())} copy): per step, mean confidence |1-2p| "
             f"and would-be step / cap (alpha {ALPHA}, scale {SCALE:g}), copies | others"]
    for k in range(0, per_step, max(1, per_step // 12)):
        sigma = log[k][0]
        conf = torch.cat([log[k + b * per_step][1] for b in range(len(log) // per_step)])
        ratio = torch.cat([log[k + b * per_step][2] for b in range(len(log) // per_step)])

        def mean(v: torch.Tensor, m: torch.Tensor) -> str:
            return f"{float(v[m].mean()):.2f}" if bool(m.any()) else "  — "
        lines.append(f"    sigma {sigma:7.3f}  confidence {mean(conf, copied)} | {mean(conf, ~copied)}   "
                     f"step/cap {mean(ratio, copied)} | {mean(ratio, ~copied)}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", choices=["mixture-flow", "mixture-vp", "digits-full", "digits-prior"],
                    default="mixture-flow")
    ap.add_argument("--guard-seeds", default="0,1,2")
    ap.add_argument("--sampler", default="euler_a")
    ap.add_argument("--samples", type=int, default=1000, help="fresh seeds per measurement")
    ap.add_argument("--read-sigmas", default="", help="trial: read the x0 prediction at these σ (comma list)")
    ap.add_argument("--normalized", default="", help="trial: normalized push, these shares of the cap (comma list)")
    ap.add_argument("--adapt", default="", help="trial: train on the probe copies these many steps (comma list)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CPSAMPLE_THREADS", "2")))
    t0 = time.time()
    kind, variant = args.bench.split("-")
    bench: Bench = MixtureBench(variant, args.samples, 50) if kind == "mixture" else DigitsBench(variant, args.samples)
    sample = bench.sampler(args.sampler)
    floats = lambda s: [float(v) for v in s.split(",") if v]  # noqa: E731

    def row(label: str, guide) -> None:
        m = bench.metrics(sample_many(sample, guide, args.samples))
        print(f"  {label:44} replicas {m['replicas']:6.1%}  {bench.quality_key} {m[bench.quality_key]:.3f}", flush=True)

    print(f"{bench.name}, {args.sampler}, {args.samples} fresh seeds from {EVAL_SEEDS}", flush=True)
    for seed in [int(s) for s in args.guard_seeds.split(",")]:
        guard = bench.guard(seed)
        print(f"== guard seed {seed}: {guard.info['steps']} steps", flush=True)
        z, grad = objective_grad(guard, bench.train, guard.space.sigma_min)
        push = rms(grad)
        rank = torch.empty_like(push, dtype=torch.long)
        rank[push.argsort()] = torch.arange(len(push))
        print(f"  push at the {len(push)} training latents (scale 1): min {push.min():.2g}, median "
              f"{push.median():.2g}, max {push.max():.2g}; |logit| min {z.abs().min():.2f}, median {z.abs().median():.2f}")
        x = sample_many(sample, guide_of(guard, {"alpha": ALPHA}), args.samples)
        copied, nearest = copies(bench, x)
        src = torch.bincount(nearest[copied], minlength=len(push))
        top = [i for i in src.argsort(descending=True).tolist() if src[i] > 0]
        print(f"  alpha {ALPHA}, scale {SCALE:g}: {int(copied.sum())} of {args.samples} copy; by latent "
              f"(copies, push rank from the weakest): " + (", ".join(f"#{i} ({int(src[i])}, rank {int(rank[i])})"
                                                                   for i in top) or "none"), flush=True)
        print("\n".join(trajectories(bench, guard, sample, args.samples)), flush=True)
        for r in floats(args.read_sigmas):
            for alpha in (0.2, 0.5):
                row(f"trial: read at sigma {r:g}, alpha {alpha}", guide_of(reading(guard, r), {"alpha": alpha}))
        for share in floats(args.normalized):
            row(f"trial: normalized push {share:g} x cap, alpha {ALPHA}", normalized_guide(guard, ALPHA, share))
        if args.adapt:
            probes = sample(None, list(range(PROBE_SEEDS, PROBE_SEEDS + 64)))
            for steps in [int(v) for v in floats(args.adapt)]:
                ad = adapted(guard, bench, seed, probes, steps)
                for alpha in (0.2, 0.5):
                    row(f"trial: adapted {steps} steps on probe copies, alpha {alpha}", guide_of(ad, {"alpha": alpha}))
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
