"""Guard training cost, guard file size and guard peak memory (issue 5).

For each case, a fresh subprocess (so ``ru_maxrss`` is that measurement's own peak) builds N
synthetic latents and trains the product's guard with ``train_guard``'s defaults (three heads, the
default negatives, batch 32; early stop once every memorisable σ band is ≥ 99 % right and the lowest
bands (vp σ ≤ 0.3, flow ≤ 0.25) are ≥ 99 % right with p ≥ 0.99, checked every 50 steps; ``--heads``
sets another count)
until it stops early or hits the step cap (``--max-steps``) or the wall-clock cap
(``--time-cap``, via ``should_stop``). It reports wall time, steps, steps/s, whether it
memorised, the worst band at each check, the saved guard's file size and peak memory. A capped
run also prints a clearly labelled projection (the time the default 3000-step cap would take at
the measured rate: an upper bound on training with defaults, not a measured time to memorise).

Guidance memory is measured the same way: a fresh process loads nothing but torch, the core and
a default guard, then calls ``guide`` (batch 2, alpha 0.5) three times.

Latents: smooth random fields, not real images. Per latent and channel, white noise on an
(H/8)x(W/8) grid, bicubically upsampled to HxW, plus 0.1 white noise, then standardised to
mean 0, std 1 per latent (SD-like latents have std ~1 after the VAE scale factor). Seeded.

    .venv/bin/python benchmarks/training_cost.py            # full: 16/64/256 x 4x64x64, 64 x 16x64x64
    .venv/bin/python benchmarks/training_cost.py --quick    # small sizes, seconds to a few minutes
    .venv/bin/python benchmarks/training_cost.py --families # 64 latents at SD1.5, SDXL and SD3/Flux native sizes

Timings depend on machine load: the load average is printed before and after each case.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/ is on the path: these run as scripts from there
from device_arg import require_device, sync

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CAP_STEPS = 3000  # train_guard's default max_steps

FULL = [(16, 4, 64), (64, 4, 64), (256, 4, 64), (64, 16, 64)]
QUICK = [(8, 4, 32), (16, 4, 32), (32, 4, 32), (16, 16, 32)]
# 64 images at each family's native size: SD1.5 512 px, SDXL 1024 px (4x128x128), SD3/Flux 1024 px (16x128x128)
FAMILIES = [(64, 4, 64), (64, 4, 128), (64, 16, 128)]
GUIDE_FULL = [(4, 64), (4, 128), (16, 64), (16, 128)]
GUIDE_QUICK = [(4, 32), (16, 32)]


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def smooth_latents(n: int, channels: int, side: int, seed: int):
    import torch
    from torch.nn import functional as F
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, channels, max(side // 8, 2), max(side // 8, 2), generator=g)
    x = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    x = x + 0.1 * torch.randn(x.shape, generator=g)
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    return x / x.std(dim=(1, 2, 3), keepdim=True)


def worker_train(a) -> dict:
    import torch
    sys.path.insert(0, str(ROOT))
    from cpsample_nodes.core import NoiseSpace, TrainingStopped, save_guard, train_guard
    from cpsample_nodes.core.network import DEFAULT_HEADS
    from cpsample_nodes.core.training import confident_bands, memorised_margin, required_bands
    space = NoiseSpace.vp() if a.channels == 4 else NoiseSpace.flow()
    required, sure = required_bands(space), confident_bands(space)
    latents = smooth_latents(a.n, a.channels, a.side, seed=a.seed)
    cap = float(a.time_cap)
    rss_before = rss_now_mb()
    checks: list[str] = []
    started = time.monotonic()
    last = {"step": 0}

    def progress(step, total, stats):
        last["step"] = step
        if stats.get("confident") and step % 50 == 0:
            worst = memorised_margin(stats["accuracy"], stats["confident"], required, sure)
            checks.append(f"{step}:{worst:.2f}@{time.monotonic() - started:.0f}s")

    def should_stop():
        return cap > 0 and time.monotonic() - started > cap

    out = dict(n=a.n, channels=a.channels, side=a.side, space=space.kind, max_steps=a.max_steps,
               heads=a.heads or DEFAULT_HEADS,
               time_cap_s=cap, torch=torch.__version__, threads=torch.get_num_threads())
    guard = None
    try:
        guard = train_guard(latents.to(a.device), space=space, seed=a.seed, max_steps=a.max_steps,
                            progress=progress, should_stop=should_stop, heads=a.heads)
        out.update(stopped="early stop (memorised)" if guard.info["memorised"] else "step cap, not memorised",
                   memorised=bool(guard.info["memorised"]), steps=int(guard.info["steps"]),
                   accuracy=guard.info["accuracy"], confident=guard.info["confident"])
    except TrainingStopped:
        out.update(stopped="time cap, not memorised", memorised=False, steps=last["step"])
    wall = time.monotonic() - started
    out.update(wall_s=round(wall, 1), steps_per_s=round(out["steps"] / wall, 3) if wall > 0 else None,
               checks=checks, rss_before_mb=round(rss_before), peak_rss_mb=round(peak_mb()))
    out["train_delta_mb"] = out["peak_rss_mb"] - out["rss_before_mb"]
    if a.device != "cpu":
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    if guard is None:  # file size depends only on the config: save an untrained guard of the same shape
        from cpsample_nodes.core import Guard, GuardConfig, GuardNet
        guard = Guard(GuardNet(GuardConfig.for_latents(latents.shape)), space, {"n_images": a.n})
    with tempfile.TemporaryDirectory() as d:
        out["file_bytes"] = save_guard(guard, Path(d) / "g.safetensors").stat().st_size
    return out


def worker_guide(a) -> dict:
    import torch
    sys.path.insert(0, str(ROOT))
    from cpsample_nodes.core import Guard, GuardConfig, GuardNet, NoiseSpace
    space = NoiseSpace.vp() if a.channels == 4 else NoiseSpace.flow()
    torch.manual_seed(0)
    guard = Guard(GuardNet(GuardConfig.for_latents((a.channels, a.side, a.side))).eval().requires_grad_(False), space)
    sigma = torch.full((2,), 0.5 if space.kind == "flow" else 1.0)
    denoised = torch.randn(2, a.channels, a.side, a.side).to(a.device)
    x = denoised + torch.randn_like(denoised)
    guard.net.to(a.device)
    sigma = sigma.to(a.device)
    rss_before = rss_now_mb()
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(3):
            out = guard.guide(denoised, x, sigma, scale=1.0, alpha=0.5)
    sync()
    dt = (time.perf_counter() - t0) / 3
    assert out.shape == denoised.shape
    return dict(channels=a.channels, side=a.side, guide_ms=round(dt * 1000, 1), rss_before_mb=round(rss_before),
                peak_rss_mb=round(peak_mb()), guide_delta_mb=round(peak_mb() - rss_before))


def run_worker(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (32x32 latents, N up to 32)")
    ap.add_argument("--max-steps", type=int, default=DEFAULT_CAP_STEPS, help="step cap per case")
    ap.add_argument("--time-cap", default="0",
                    help="wall-clock cap per case in s (0: none); one value, or one per case, comma-separated")
    ap.add_argument("--cases", default="", help="comma list NxCxS, e.g. 16x4x64,64x16x64 (overrides the set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", type=int, default=None,
                    help="random labellings the guard fits (train_guard(heads=...)); default: the product's, 3")
    ap.add_argument("--skip-guide", action="store_true")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads in each worker (0: torch default). Use 1 on a machine whose cores are "
                         "already busy: oversubscribed OpenMP threads made the guard ~50x slower here")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where training and guidance run")
    ap.add_argument("--worker", choices=["train", "guide"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--channels", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--side", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        if a.threads:
            import torch
            torch.set_num_threads(a.threads)
        res = worker_train(a) if a.worker == "train" else worker_guide(a)
        print(json.dumps(res))
        return

    import torch
    require_device(a.device)
    cases = ([tuple(int(v) for v in c.split("x")) for c in a.cases.split(",")] if a.cases
             else FAMILIES if a.families else (QUICK if a.quick else FULL))
    print(f"# guard training cost  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  "
          f"{'--quick' if a.quick else 'full'}  max_steps={a.max_steps}  time_cap={a.time_cap or 'none'} s")
    print(f"# machine: {machine.describe()}; {a.threads or torch.get_num_threads()} threads per worker, "
          f"cuda {torch.cuda.is_available()} (all on {a.device})")
    print(f"# uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print("# latents: smooth random fields (coarse N(0,1) grid at side/8, bicubic up, +0.1 white noise, "
          "standardised per latent); vp space for 4 channels, flow space for 16; "
          f"train_guard's defaults{f' but {a.heads} heads' if a.heads is not None else ''}")
    print("# 'worst band' = the stop check's margin: min of the accuracy in every required (memorisable) sigma "
          "band and of the share right with p>=0.99 in the confident bands (vp sigma <= 0.3, flow <= 0.25); "
          "early stop at >= 0.99")
    print("# peak memory: ru_maxrss of a fresh process per case; 'delta' = peak minus RSS just before "
          "training/guidance (torch import, latents and guard weights excluded from the delta)")

    caps = [float(v) for v in str(a.time_cap).split(",")]
    caps = caps * len(cases) if len(caps) == 1 else caps
    rows = []
    print("\n## training (one run per case)")
    for (n, c, s), cap in zip(cases, caps):
        la = load()
        r = run_worker(["--worker", "train", "--n", str(n), "--channels", str(c), "--side", str(s),
                        "--max-steps", str(a.max_steps), "--time-cap", str(cap), "--seed", str(a.seed),
                        *(["--heads", str(a.heads)] if a.heads is not None else []),
                        "--threads", str(a.threads), "--device", a.device],
                       timeout=(cap * 2 + 600) if cap else 6 * 3600)
        r.setdefault("n", n), r.setdefault("channels", c), r.setdefault("side", s)
        r["load_before"], r["load_after"] = la, load()
        rows.append(r)
        if "error" in r:
            print(f"{n}x{c}x{s}x{s}: FAILED\n{r['error']}")
            continue
        line = (f"{n:4d} x {c}x{s}x{s} ({r['space']}): {r['wall_s']:7.1f} s, {r['steps']} steps, "
                f"{r['steps_per_s']:.3f} steps/s, {r['stopped']}; peak RSS {r['peak_rss_mb']} MB "
                f"(+{r['train_delta_mb']} MB over {r['rss_before_mb']} MB); file {r['file_bytes'] / 1e6:.2f} MB; "
                f"load {r['load_before']} -> {r['load_after']}"
                + (f"; GPU peak allocated {r['gpu_peak_mb']} MB" if "gpu_peak_mb" in r else ""))
        print(line)
        if r["time_cap_s"]:
            print(f"      time cap for this case: {r['time_cap_s']:.0f} s")
        print(f"      worst band at checks (step:value@elapsed): {' '.join(r['checks']) or '-'}")
        if not r["memorised"]:
            proj = DEFAULT_CAP_STEPS / r["steps_per_s"]
            print(f"      PROJECTION (not measured): the default {DEFAULT_CAP_STEPS}-step cap would take "
                  f"~{proj / 60:.1f} min at {r['steps_per_s']:.3f} steps/s; steps needed to memorise unknown")
        sys.stdout.flush()

    done = [r for r in rows if "error" not in r and r["memorised"] and r["channels"] == cases[0][1]
            and r["side"] == cases[0][2]]
    if len(done) >= 2:
        print("\n## growth with N (memorised cases, same latent shape)")
        base = done[0]
        for r in done[1:]:
            print(f"N {base['n']} -> {r['n']} (x{r['n'] / base['n']:.0f}): time x{r['wall_s'] / base['wall_s']:.2f}, "
                  f"steps x{r['steps'] / base['steps']:.2f}")

    if not a.skip_guide:
        print("\n## guidance memory (fresh process each; default guard, batch 2, 3 guide calls, alpha 0.5)")
        for c, s in (GUIDE_QUICK if a.quick else GUIDE_FULL):
            r = run_worker(["--worker", "guide", "--channels", str(c), "--side", str(s), "--threads", str(a.threads),
                            "--device", a.device],
                           timeout=600)
            if "error" in r:
                print(f"{c}x{s}x{s}: FAILED\n{r['error']}")
                continue
            print(f"guide 2x{c}x{s}x{s}: {r['guide_ms']} ms/call, peak RSS {r['peak_rss_mb']} MB "
                  f"(+{r['guide_delta_mb']} MB over {r['rss_before_mb']} MB before the first call)")
    print(f"\n# uptime at end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print("# raw: " + json.dumps(rows))


if __name__ == "__main__":
    main()
