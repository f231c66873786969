"""Closed-form protection benchmark: a memorising denoiser whose ideal output is known.

Data: N training latents drawn from a broad Gaussian N(0, I). Model: the exact posterior-mean
denoiser of a mixture that puts weight λ on narrow Gaussians N(μᵢ, τ²I) centred on the training
latents (memorisation) and 1−λ on the broad Gaussian (generalisation). A perfect rejection sampler
would output draws of the broad component, so:
- replication rate: share of samples whose nearest training latent is closer than
  0.1 × the median nearest-neighbour distance among the training latents;
- fidelity: Fréchet distance between the samples and fresh draws of the broad component; the same
  distance for the ideal sampler (fresh broad draws) is the noise floor.

    python benchmarks/mixture.py            # default table, the product's guard (three heads)
    python benchmarks/mixture.py --quick    # smaller, for a smoke run

The guard file is cached in .cache/benchmarks/ under the training set, seed, heads and the core's
training code.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cpsample_nodes.core import Guard, NoiseSpace, load_guard, save_guard, train_guard  # noqa: E402
from benchmarks.stats import frechet_distance  # noqa: E402
from cpsample_nodes.core.metrics import pairwise_l2  # noqa: E402
from cpsample_nodes.core.network import DEFAULT_HEADS  # noqa: E402
from cpsample_nodes.core.training import dataset_digest  # noqa: E402

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "benchmarks"

SHAPE = (4, 8, 8)


@dataclass
class Mixture:
    centres: torch.Tensor  # [N, D]
    lam: float
    tau: float

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """E[x0 | x0 + σε = x] for the mixture, x [B, D] (float64 inside)."""
        x = x.double()
        mu = self.centres.double()
        d = x.shape[1]
        n = mu.shape[0]
        vn, vb = self.tau**2 + sigma**2, 1.0 + sigma**2
        logw_n = (math.log(self.lam / n) - 0.5 * d * math.log(vn)
                  - torch.cdist(x, mu).pow(2) / (2 * vn))  # [B, N]
        logw_b = (math.log(1 - self.lam) - 0.5 * d * math.log(vb) - x.pow(2).sum(1, keepdim=True) / (2 * vb))
        w = torch.softmax(torch.cat([logw_n, logw_b], 1), dim=1)
        k = self.tau**2 / vn
        mean_n = mu[None] + k * (x[:, None] - mu[None])  # [B, N, D]
        mean = (w[:, :n, None] * mean_n).sum(1) + w[:, n:] * x / vb
        return mean.float()


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    ramp = torch.linspace(0, 1, n)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return [*s.tolist(), 0.0]


def sample(mix: Mixture, n: int, steps: int, space: NoiseSpace, guard: Guard | None, guide_kw: dict,
           sampler: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sigmas = karras_sigmas(steps, space.sigma_min, space.sigma_max)
    x = torch.randn(n, *SHAPE, generator=g) * sigmas[0]
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = mix.denoise(x.flatten(1), s).view_as(x)
        if guard is not None:
            den = guard.guide(den, x, torch.full((n,), s), **guide_kw)
        if sampler == "euler":
            x = x + (x - den) / s * (s_next - s)
        else:  # Euler ancestral (η = 1)
            s_up = min(s_next, math.sqrt(max(s_next**2 * (s**2 - s_next**2) / s**2, 0.0)))
            s_down = math.sqrt(max(s_next**2 - s_up**2, 0.0))
            x = x + (x - den) / s * (s_down - s)
            if s_next > 0:
                x = x + torch.randn(x.shape, generator=g) * s_up
    return x


def evaluate(samples: torch.Tensor, train: torch.Tensor, reference: torch.Tensor, threshold: float) -> dict:
    d = pairwise_l2(samples, train)
    nearest = d.min(1)
    return {
        "replicas": float((nearest.values < threshold).float().mean()),
        "fd": frechet_distance(samples.flatten(1), reference.flatten(1)),
        "std": float(samples.std()),
        "distinct_nearest": int(nearest.indices[nearest.values < threshold].unique().numel()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--lam", type=float, default=0.5, help="weight of the memorising components")
    ap.add_argument("--tau", type=float, default=0.05, help="std of each memorising component")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50, help="sampling steps (docs/protection.md: 'Steps matter')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samplers", default="euler,euler_a")
    ap.add_argument("--grid", default="", help="settings to sweep, e.g. 'alpha=0.001,scale=100,max_step=1;;...' "
                                                "(an empty item: the defaults)")
    ap.add_argument("--quick", action="store_true", help="fewer samples and settings")
    ap.add_argument("--retrain", action="store_true", help="train the guard even if a cached one exists")
    ap.add_argument("--heads", type=int, default=DEFAULT_HEADS,
                    help="random labellings the guard fits (train_guard(heads=...)); default: the product's, "
                         f"{DEFAULT_HEADS}; the one-head tables of docs/protection.md were measured with 1")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CPSAMPLE_THREADS", "2")))
    if args.quick:
        args.samples = min(args.samples, 500)

    g = torch.Generator().manual_seed(args.seed)
    train = torch.randn(args.n_train, *SHAPE, generator=g)
    reference = torch.randn(args.samples, *SHAPE, generator=g)  # fresh draws of the broad part
    ideal = torch.randn(args.samples, *SHAPE, generator=g)      # what a perfect rejection sampler gives
    dtrain = pairwise_l2(train, train) + torch.eye(args.n_train, dtype=torch.float64) * 1e9
    threshold = 0.1 * float(dtrain.min(1).values.median())
    mix = Mixture(train.flatten(1), args.lam, args.tau)
    space = NoiseSpace.vp()

    t0 = time.time()
    # the key holds the training code too: a guard cached by an older core is never read back
    cached = CACHE / (f"mixture-guard-{dataset_digest(train)[:16]}-{args.seed}-heads{args.heads}-"
                      f"{_core_digest()}.safetensors")
    if cached.exists() and not args.retrain:
        guard = load_guard(cached)
    else:
        guard = train_guard(train, space, seed=args.seed, heads=args.heads)
        save_guard(guard, cached)
    train_s = time.time() - t0

    if args.grid:
        # "k=v,k=v;k=v;..." — an empty item means the defaults of Guard.guide
        grid = [dict((kv.split("=", 1)[0], _parse(kv.split("=", 1)[1])) for kv in item.split(",") if kv)
                for item in args.grid.split(";")]
        for kw in grid:  # alpha=auto: the guard's own gate (Guard.auto_alpha)
            if kw.get("alpha") == "auto":
                kw["alpha"] = guard.auto_alpha()
                kw["_auto"] = True
    elif args.quick:
        grid = [{}, {"guard_input": "noisy", "alpha": 0.001, "scale": 100, "max_step": None}]
    else:
        paper = {"guard_input": "noisy", "max_step": None}  # the paper's form: ∇ₓ on the noisy latent
        grid = [{**paper, "alpha": 0.001, "scale": 1000}, {**paper, "scale": 100}, {**paper, "scale": 10},
                {"guard_input": "noisy"}, {"guard_input": "noisy", "max_step": 2.0},
                {}, {"max_step": 0.5}, {"max_step": 2.0}, {"alpha": 0.001}, {"alpha": 0.01}, {"alpha": 0.05},
                {"alpha": 0.5},
                {"scale": 100}, {"objective": "opposite"}]
    floor = frechet_distance(ideal.flatten(1), reference.flatten(1))
    rows = []
    print(f"mixture: N={args.n_train} latents {SHAPE}, λ={args.lam}, τ={args.tau}, {args.samples} samples, "
          f"{args.steps} steps; replica threshold {threshold:.3f}; guard ready in {train_s:.1f} s "
          f"({guard.info['steps']} training steps, accuracy {guard.info['accuracy']})")
    print(f"noise floor (ideal sampler) FD = {floor:.2f}")
    header = f"{'sampler':8} {'guidance':44} {'replicas':>8} {'FD':>8} {'FD/floor':>8} {'std':>6}"
    print(header)
    print("-" * len(header))
    for sampler in args.samplers.split(","):
        for kw in [None, *grid]:
            x = sample(mix, args.samples, args.steps, space, None if kw is None else guard,
                       {k: v for k, v in (kw or {}).items() if not k.startswith("_")}, sampler, args.seed + 1)
            r = evaluate(x, train, reference, threshold)
            label = "none" if kw is None else _label(kw)
            rows.append({"sampler": sampler, "guidance": label, **r, "fd_ratio": r["fd"] / floor})
            print(f"{sampler:8} {label:44} {r['replicas']:8.1%} {r['fd']:8.2f} {r['fd'] / floor:8.2f} {r['std']:6.2f}",
                  flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "floor": floor,
                                         "threshold": threshold, "rows": rows}, indent=1))


def _core_digest() -> str:
    """Digest of the core modules that decide what train_guard returns."""
    core = Path(__file__).resolve().parents[1] / "cpsample_nodes" / "core"
    h = hashlib.sha256()
    for name in ("training.py", "network.py", "noise.py", "guard.py"):
        h.update((core / name).read_bytes())
    return h.hexdigest()[:12]


def _parse(v: str):
    if v == "None":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def _label(kw: dict) -> str:
    full = {k: p.default for k, p in inspect.signature(Guard.guide).parameters.items()
            if p.default is not inspect.Parameter.empty}
    full.update(kw)
    where = "x0" if full.get("guard_input") == "denoised" else "xt"
    auto = " (auto)" if kw.get("_auto") else ""
    return f"s={full['scale']:g} α={full['alpha']:.3g}{auto} {full['objective'][:5]} cap={full['max_step']} on {where}"


if __name__ == "__main__":
    main()
