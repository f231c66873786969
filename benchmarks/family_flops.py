"""The guard's share of a sampling step per model family, in FLOPs: ComfyUI's own full-size model
classes (SD1.5 and SDXL UNet, SD3.5 Large MMDiT, Flux dev) against the product's default guard, at each
family's native size, batch 2 (the two halves of CFG; Flux dev runs CFG 1, one pass, so its batch-1
ratio is the same).

Models are built on the meta device (no weights, no memory, no time) and counted with
``torch.utils.flop_counter``'s per-op formulas (``FlopCounterMode`` for the UNets, as
``overhead.py``; the same formulas through a bare dispatch mode for the rest); attention runs
through torch's SDPA, which the counter
knows (ComfyUI's CPU default asks the device for free memory, which meta cannot answer). The guard: the
network ``train_guard`` builds for that latent (three heads, stride-4 stem from 64×64 up), one
``guide`` call at α 0.5 (forward and input gradient, as every guided step when the gate is open).
Load-independent: the same numbers on any machine.

    .cache/comfyui/venv/bin/python benchmarks/family_flops.py > benchmarks/results/training_cost/family_flops.txt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from overhead import COMFY_DEFAULT, MODELS, ROOT, count_params, guide_once, import_comfy, unet_flops

# Full-size configs as ComfyUI's model_detection builds them from the released checkpoints.
SD35_LARGE = dict(in_channels=16, out_channels=16, patch_size=2, depth=38, adm_in_channels=2048, num_patches=36864,
                  pos_embed_max_size=192, pos_embed_scaling_factor=None, pos_embed_offset=None, qk_norm="rms",
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": 4096, "out_features": 64 * 38}})
FLUX_DEV = dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0,
                num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                qkv_bias=True, guidance_embed=True)
TOKENS = 256  # T5 tokens of the prompt (SD3 pads to 77 CLIP + 256 T5 = 333 in its context; Flux 256/512)


def sdpa_opts():
    from comfy.ldm.modules.attention import attention_pytorch
    return {"optimized_attention_override": lambda func, *args, **kwargs: attention_pytorch(*args, **kwargs)}


class Flops(torch.utils._python_dispatch.TorchDispatchMode):
    """FlopCounterMode's per-op formulas without its module tracker, whose backward hooks refuse
    ``torch.autograd.grad`` (the guard's input gradient) in this torch."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry
        kwargs = kwargs or {}
        if func._overloadpacket not in flop_registry:  # composite ops (linear, conv2d) come whole under
            with self:                                  # inference mode: count what they decompose into
                done = func.decompose(*args, **kwargs)
            if done is not NotImplemented:
                return done
        out = func(*args, **kwargs)
        if func._overloadpacket in flop_registry:
            self.total += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        return out


def count(model, *args, **kw) -> int:
    with torch.inference_mode(), Flops() as fc:
        model(*args, transformer_options=sdpa_opts(), **kw)
    return fc.total


def sd35_flops(comfy, side: int, batch: int) -> tuple[int, int]:
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
    with torch.device("meta"):
        model = OpenAISignatureMMDITWrapper(**SD35_LARGE, dtype=torch.float32, device="meta",
                                            operations=comfy.ops.disable_weight_init).eval()
    e = lambda *s: torch.empty(*s, device="meta")  # noqa: E731
    flops = count(model, e(batch, 16, side, side), torch.full((batch,), 500.0, device="meta"),
                  context=e(batch, 77 + TOKENS, 4096), y=e(batch, 2048))
    return flops, count_params(model)


def flux_flops(comfy, side: int, batch: int) -> tuple[int, int]:
    from comfy.ldm.flux.model import Flux
    with torch.device("meta"):
        model = Flux(**FLUX_DEV, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init).eval()
    e = lambda *s: torch.empty(*s, device="meta")  # noqa: E731
    flops = count(model, e(batch, 16, side, side), torch.full((batch,), 0.5, device="meta"), e(batch, TOKENS, 4096),
                  y=e(batch, 768), guidance=torch.full((batch,), 3.5, device="meta"))
    return flops, count_params(model)


def guard_flops(channels: int, side: int, batch: int) -> tuple[int, int]:
    sys.path.insert(0, str(ROOT))
    from cpsample_nodes.core import Guard, GuardConfig, GuardNet, NoiseSpace
    torch.manual_seed(0)
    net = GuardNet(GuardConfig.for_latents((channels, side, side))).eval().requires_grad_(False)
    guard = Guard(net, NoiseSpace.vp() if channels == 4 else NoiseSpace.flow())
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(batch, channels, side, side, generator=g)
    sigma = torch.full((batch,), 0.5)
    args = (torch.randn(x0.shape, generator=g), x0 + 0.5 * torch.randn(x0.shape, generator=g), sigma)
    with Flops() as fc:
        guide_once(guard, args)
    return fc.total, count_params(net)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", type=Path, default=COMFY_DEFAULT)
    ap.add_argument("--batch", type=int, default=2)
    a = ap.parse_args()
    comfy, UNetModel = import_comfy(a.comfyui)
    b = a.batch
    rows = []
    for name, label in (("sd15", "SD1.5 UNet, 512 px"), ("sdxl", "SDXL UNet, 1024 px")):
        side = MODELS[name][1]
        if b != 2:
            raise SystemExit("the UNet inputs of overhead.py are batch 2")
        mf, mp = unet_flops(UNetModel, comfy, name)
        rows.append((label, 4, side, mf, mp))
    rows.append(("SD3.5 Large MMDiT, 1024 px", 16, 128, *sd35_flops(comfy, 128, b)))
    rows.append(("Flux dev, 1024 px", 16, 128, *flux_flops(comfy, 128, b)))
    print(f"# FLOPs per sampling step, batch {b}, ComfyUI's model classes on the meta device (torch's flop formulas, "
          f"attention via SDPA); prompt context {TOKENS} T5 tokens (SD3.5: + 77 CLIP)")
    print("# guard: GuardConfig.for_latents defaults (3 heads), one guide() call at alpha 0.5 (forward + input grad)")
    print("| model | params | latent | model FLOPs | guard FLOPs | guard params | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, c, side, mf, mp in rows:
        gf, gp = guard_flops(c, side, b)
        print(f"| {label} | {mp / 1e9:.2f} B | {c}x{side}x{side} | {mf / 1e12:.3f} TFLOP | {gf / 1e9:.3f} GFLOP | "
              f"{gp / 1e6:.2f} M | {100 * gf / mf:.4f} % |")


if __name__ == "__main__":
    main()
