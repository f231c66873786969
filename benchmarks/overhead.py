"""Guard overhead per sampling step against a full-size UNet (issue 5).

Builds ComfyUI's own UNet class (comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel) with
the SD1.5 config from comfy/model_detection.py and random weights (nothing downloaded), runs it
at 4x64x64 latents with batch 2 (the cond and uncond halves of CFG), and times in the same run:

  * one UNet forward (= one sampling step's model cost),
  * one ``guard.guide(denoised, x, sigma, scale=1, alpha=0.5)`` on a guard with the default
    GuardConfig (alpha=0.5 makes every item "confident", so the probability, the gradient and
    the step are always computed; the cost does not depend on training, so the guard is
    untrained), called under torch.inference_mode() as ComfyUI calls it,

and prints their ratio as the last line. Timings are interleaved (one UNet forward, then a burst
of guard calls, repeated) and medians are taken, so slow drifts in machine load hit both.

It also counts FLOPs (torch.utils.flop_counter.FlopCounterMode; UNets on the meta device, so no
memory and no time) for SD1.5 at 4x64x64 and SDXL at 4x128x128, which gives a load-independent
ratio. ``--sdxl-time`` additionally times the real SDXL UNet (10 GB of fp32 weights, minutes per
forward on a small CPU).

Run with the ComfyUI test environment's python (built by tools/comfyui_env.py):

    .cache/comfyui/venv/bin/python benchmarks/overhead.py
    .cache/comfyui/venv/bin/python benchmarks/overhead.py --device cuda --dtype float16 --sdxl-time  # a GPU

On CUDA every timing is bracketed by torch.cuda.synchronize(), so it is wall time of finished work;
``--dtype float16`` runs the UNet in half precision as ComfyUI does on GPUs (the guard gets the
same dtype inputs and computes in float32 inside ``guide``).

If ComfyUI is not there it says so and exits 2 (no silent fallback to another UNet).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import machine  # benchmarks/ is on the path: these run as scripts from there
from device_arg import require_device, sync

ROOT = Path(__file__).resolve().parents[1]
COMFY_DEFAULT = ROOT / ".cache" / "comfyui" / "ComfyUI"

# Full configs as in comfy/model_detection.py (unet_config_from_diffusers_unet), dtype float32.
SD15 = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
            adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
            transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
            use_linear_in_transformer=False, context_dim=768, num_heads=8,
            transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            use_temporal_attention=False, use_temporal_resblock=False)
SDXL = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
            num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
            num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
            transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
            transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
            use_temporal_attention=False, use_temporal_resblock=False)
MODELS = {"sd15": (SD15, 64, 768, None), "sdxl": (SDXL, 128, 2048, 2816)}  # config, latent side, ctx, adm


def import_comfy(comfy_root: Path, cpu: bool = True):
    if not (comfy_root / "comfy" / "ldm").is_dir():
        print(f"ComfyUI not found at {comfy_root}. Build the offline test environment with "
              f"`python tools/comfyui_env.py` and run this script with its python "
              f"(.cache/comfyui/venv/bin/python). Not falling back to another UNet.", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, str(comfy_root))
    import comfy.options
    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0]] + (["--cpu"] if cpu else [])  # ComfyUI picks its attention for the device
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return comfy, UNetModel


def build_unet(UNetModel, comfy, cfg: dict, device: str = "cpu", dtype=None):
    import torch
    dtype = dtype or torch.float32
    with torch.device(device):
        unet = UNetModel(**cfg, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)
    if device != "meta":
        # disable_weight_init leaves torch.empty memory: give every weight a small random value
        # (garbage or denormal values would make the timing meaningless).
        g = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for name, p in unet.named_parameters():
                if p.dim() == 1 and ("norm" in name or name.endswith(".weight")) and "bias" not in name:
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02, generator=g)
    return unet.eval().requires_grad_(False)


def unet_inputs(name: str, device: str = "cpu", batch: int = 2, dtype=None):
    import torch
    dtype = dtype or torch.float32
    cfg, side, ctx, adm = MODELS[name]
    g = torch.Generator().manual_seed(1)
    mk = ((lambda *s: torch.randn(*s, generator=g).to(device, dtype)) if device != "meta"
          else (lambda *s: torch.empty(*s, device="meta")))
    x = mk(batch, 4, side, side)
    t = torch.full((batch,), 500.0, device=device)
    kw = dict(context=mk(batch, 77, ctx))
    if adm is not None:
        kw["y"] = mk(batch, adm)
    return x, t, kw


def count_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def unet_flops(UNetModel, comfy, name: str) -> tuple[int, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    unet = build_unet(UNetModel, comfy, MODELS[name][0], device="meta")
    x, t, kw = unet_inputs(name, device="meta")
    # ComfyUI's CPU default (sub-quadratic attention) asks the device for free memory, which the
    # meta device cannot answer; count attention with torch's SDPA instead (same matmuls).
    from comfy.ldm.modules.attention import attention_pytorch
    opts = {"optimized_attention_override": lambda func, *args, **kwargs: attention_pytorch(*args, **kwargs)}
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        unet(x, t, transformer_options=opts, **kw)
    return fc.get_total_flops(), count_params(unet)


def make_guard():
    import torch
    sys.path.insert(0, str(ROOT))
    from cpsample_nodes.core import Guard, GuardConfig, GuardNet, NoiseSpace
    torch.manual_seed(0)
    # the network train_guard builds for SD1.5/SDXL latents (stride-4 stem from 64×64 up)
    net = GuardNet(GuardConfig.for_latents((4, 64, 64))).eval().requires_grad_(False)
    return Guard(net, NoiseSpace.vp())


def guard_args(side: int, batch: int = 2, device: str = "cpu", dtype=None):
    import torch
    g = torch.Generator().manual_seed(2)
    sigma = torch.full((batch,), 1.0)
    x0 = torch.randn(batch, 4, side, side, generator=g)
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)
    denoised = torch.randn(x0.shape, generator=g)
    dtype = dtype or torch.float32
    return denoised.to(device, dtype), x.to(device, dtype), sigma.to(device)


def guide_once(guard, args):
    import torch
    with torch.inference_mode():  # as ComfyUI's sampler calls it
        out = guard.guide(*args, scale=1.0, alpha=0.5)
    return out


def guard_flops(guard, side: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    args = guard_args(side, device=str(next(guard.net.parameters()).device))
    with FlopCounterMode(display=False) as fc:
        guide_once(guard, args)
    return fc.get_total_flops()


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()  # on a GPU, wall time of finished work, not of queued kernels
    return time.perf_counter() - t0


def measure(UNetModel, comfy, name: str, rounds: int, guard_burst: int, guard, unet_warmup: bool = True,
            device: str = "cpu", dtype=None) -> dict:
    import torch
    t_build = time.perf_counter()
    unet = build_unet(UNetModel, comfy, MODELS[name][0], device=device, dtype=dtype)
    t_build = time.perf_counter() - t_build
    x, t, kw = unet_inputs(name, device=device, dtype=dtype)
    side = MODELS[name][1]
    gargs = guard_args(side, device=device, dtype=dtype)

    def unet_step():
        with torch.inference_mode():
            out = unet(x, t, **kw)
        assert torch.isfinite(out).all(), "UNet output not finite"

    out = guide_once(guard, gargs)  # warm-up and sanity check: the guide step did act
    changed = bool((out != gargs[0]).any())
    for _ in range(2):
        guide_once(guard, gargs)
    warm = timed(unet_step) if unet_warmup else float("nan")
    unet_t, guard_t, prob_t = [], [], []
    for _ in range(rounds):
        unet_t.append(timed(unet_step))
        burst = [timed(lambda: guide_once(guard, gargs)) for _ in range(guard_burst)]
        guard_t.append(statistics.median(burst))
        prob_t.append(statistics.median(timed(lambda: guard.probability(gargs[1], gargs[2])) for _ in range(guard_burst)))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        rss = torch.cuda.max_memory_allocated() / 2**20  # GPU peak instead
    unet = None  # free the UNet before the next model is built (unet_step is not called again)
    return dict(name=name, params=None, build_s=t_build, warm_s=warm, unet=unet_t, guide=guard_t, prob=prob_t,
                guide_changed=changed, rss_mb=rss)


def fmt_list(xs):
    return "[" + ", ".join(f"{v * 1000:.1f}" for v in xs) + "] ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", type=Path, default=Path(os.environ.get("CPSAMPLE_COMFYUI", COMFY_DEFAULT)))
    ap.add_argument("--rounds", type=int, default=3, help="timed UNet forwards (each followed by a guard burst)")
    ap.add_argument("--guard-burst", type=int, default=7, help="guard calls per round (their median is kept)")
    ap.add_argument("--sdxl-time", action="store_true", help="also time the real SDXL UNet at 4x128x128 (slow)")
    ap.add_argument("--sdxl-rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch default). On a machine whose cores are already busy, use 1: "
                         "oversubscribed OpenMP threads made the guard 10-50x slower on a loaded 2-core machine")
    ap.add_argument("--unet-warmup", type=int, default=1, help="untimed UNet forwards before timing (0 or 1)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the UNet and the guard run")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                    help="UNet weights and the latents handed to the guard (float16 as ComfyUI uses on GPUs)")
    a = ap.parse_args()

    import torch
    require_device(a.device)
    comfy, UNetModel = import_comfy(a.comfyui, cpu=a.device == "cpu")
    dtype = getattr(torch, a.dtype)
    if a.threads:
        torch.set_num_threads(a.threads)
    guard = make_guard()
    guard.net.to(a.device)

    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    print(f"# guard overhead benchmark  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"# machine: {machine.describe()}, ComfyUI at {a.comfyui}")
    import comfy.ldm.modules.attention as attn
    print(f"# UNet attention: ComfyUI's choice on this machine, {attn.optimized_attention.__name__}")
    where = (f"{a.device} ({torch.cuda.get_device_name(a.device)})" if a.device != "cpu" else "CPU")
    print(f"# cuda available: {torch.cuda.is_available()}; timings on {where}, {a.dtype}")
    print(f"# load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"# guard: default GuardConfig {guard.config.to_dict()}, {count_params(guard.net):,} params; "
          f"guide(denoised, x, sigma=1, scale=1, alpha=0.5) under inference_mode, batch 2")

    print("\n## FLOPs (FlopCounterMode; UNet on the meta device; guard = forward + input gradient)")
    flop_rows = {}
    for name in ("sd15", "sdxl"):
        uf, npar = unet_flops(UNetModel, comfy, name)
        side = MODELS[name][1]
        gf = guard_flops(guard, side)
        flop_rows[name] = (uf, gf)
        print(f"{name}: latent 2x4x{side}x{side}  UNet {npar / 1e6:.0f} M params, {uf / 1e12:.3f} TFLOP/forward;"
              f"  guard guide {gf / 1e9:.3f} GFLOP;  FLOP ratio {100 * gf / uf:.4f}%")

    results = []
    todo = [("sd15", a.rounds)] + ([("sdxl", a.sdxl_rounds)] if a.sdxl_time else [])
    for name, rounds in todo:
        print(f"\n## timing {name} ({rounds} rounds x (1 UNet forward + {a.guard_burst} guard calls))", flush=True)
        r = measure(UNetModel, comfy, name, rounds, a.guard_burst, guard, unet_warmup=a.unet_warmup > 0,
                    device=a.device, dtype=dtype)
        results.append(r)
        mu, mg, mp = (statistics.median(r[k]) for k in ("unet", "guide", "prob"))
        print(f"build {r['build_s']:.1f} s, warm-up forward {r['warm_s']:.2f} s, guide changed denoised: {r['guide_changed']}")
        print(f"UNet forward (batch 2):    median {mu * 1000:9.1f} ms   {fmt_list(r['unet'])}")
        print(f"guard guide (prob + grad): median {mg * 1000:9.2f} ms   {fmt_list(r['guide'])}")
        print(f"guard probability only:    median {mp * 1000:9.2f} ms   {fmt_list(r['prob'])}")
        print(f"{name} overhead: guide / UNet forward = {100 * mg / mu:.3f}%  (FLOP ratio "
              f"{100 * flop_rows[name][1] / flop_rows[name][0]:.4f}%); {'GPU peak allocated' if a.device != 'cpu' else 'process max RSS'} so far {r['rss_mb']:.0f} MB",
              flush=True)
    try:
        load = os.getloadavg()
        print(f"\n# load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    except OSError:
        pass
    if not a.sdxl_time:
        print("# SDXL 4x128x128: FLOP ratio only (run with --sdxl-time to time it)")
    sd = results[0]
    ratio = statistics.median(sd["guide"]) / statistics.median(sd["unet"])
    verdict = "meets" if ratio <= 0.03 else "MISSES"
    print(f"guard overhead at 512 px (SD1.5, batch 2): {100 * ratio:.3f}% of a UNet step ({verdict} the 3% goal)")


if __name__ == "__main__":
    main()
