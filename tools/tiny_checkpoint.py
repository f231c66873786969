#!/usr/bin/env python3
"""Write a tiny random-weight checkpoint that ComfyUI's model detection takes for SD1.5, plus a tiny LoRA.

Run with the ComfyUI venv's python (it uses comfy's own classes for the exact key names and shapes):

    .cache/comfyui/venv/bin/python tools/tiny_checkpoint.py --comfyui .cache/comfyui/ComfyUI \
        --out .cache/comfyui/models/tiny-sd15.safetensors

* UNet: SD1.5's detection keys (model_channels 320, context_dim 768, no linear-in-transformer, no adm)
  but a single level with one res block and one transformer block (21 M parameters).
* CLIP-L text encoder: transformers' CLIPTextModel from comfy/sd1_clip_config.json, random init, fp16.
* VAE: TAESD-shaped (detected by `taesd_decoder.1.weight`), random weights, vae_scale 1 / vae_shift 0.
* `<out stem>-lora.safetensors` next to it: a rank-4 LoRA on one attention projection (kohya key names),
  so workflows can put a LoraLoader in the graph.
* with --clip-vision PATH: a random CLIP-vision ViT-L/14 (fp16, ~600 MB) for CLIP_VISION inputs.

Deterministic (seeded). Never committed: it lives in `.cache/comfyui/`. Images it makes are noise; that is
all tests need (shapes, model detection, sampling hooks, determinism).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _randomise(sd: dict, gen, scale: float) -> dict:
    import torch
    out = {}
    for k, v in sd.items():
        if not torch.is_floating_point(v):
            out[k] = v.clone()
            continue
        name = k.rsplit(".", 1)[-1]
        if name == "bias":
            t = torch.zeros(v.shape)
        elif v.ndim == 1 and name == "weight":  # GroupNorm / LayerNorm scales (linear and conv weights are >= 2-D)
            t = torch.ones(v.shape)
        else:
            t = torch.randn(v.shape, generator=gen) * scale
        out[k] = t
    return out


def build(comfy_root: Path, out: Path) -> None:
    t0 = time.time()
    sys.path.insert(0, str(comfy_root))
    os.chdir(comfy_root)
    import comfy.options
    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import torch
    from safetensors.torch import save_file
    import comfy.supported_models
    import transformers

    gen = torch.Generator().manual_seed(1234)
    unet_cfg = dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=[1], num_res_blocks=[1],
                    transformer_depth=[1], transformer_depth_output=[1, 1], transformer_depth_middle=-1,
                    context_dim=768, use_linear_in_transformer=False, adm_in_channels=None,
                    use_spatial_transformer=True, legacy=False, use_temporal_resblock=False,
                    use_temporal_attention=False, image_size=32, num_head_channels=-1, num_heads=8,
                    num_classes=None)
    model = comfy.supported_models.SD15(dict(unet_cfg)).get_model({})
    unet_sd = {k: v for k, v in model.diffusion_model.state_dict().items()}
    unet_sd = _randomise(unet_sd, gen, 0.02)
    sd = {"model.diffusion_model." + k: v.float() for k, v in unet_sd.items()}
    del model

    with open(comfy_root / "comfy" / "sd1_clip_config.json") as f:
        clip_cfg = json.load(f)
    clip_cfg = {k: v for k, v in clip_cfg.items() if not k.startswith("_") and k not in ("architectures", "transformers_version", "torch_dtype")}
    torch.manual_seed(1234)
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(**clip_cfg))
    for k, v in clip.state_dict().items():
        sd["cond_stage_model.transformer." + k] = (v.half() if torch.is_floating_point(v) else v).contiguous()
    del clip

    import comfy.taesd.taesd as taesd
    vae = taesd.TAESD(latent_channels=4)
    vae_sd = _randomise(vae.state_dict(), gen, 0.05)
    vae_sd["vae_scale"] = torch.tensor(1.0)
    vae_sd["vae_shift"] = torch.tensor(0.0)
    for k, v in vae_sd.items():
        sd["first_stage_model." + k] = v.float().contiguous()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata={"cpsample": "tiny random SD1.5-shaped test checkpoint"})
    os.replace(tmp, out)

    # Tiny LoRA on the first transformer block's attn1 query projection (kohya naming).
    target = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    w = unet_sd[target]
    rank = 4
    name = "lora_unet_" + target[:-len(".weight")].replace(".", "_")
    lora = {name + ".lora_up.weight": (torch.randn(w.shape[0], rank, generator=gen) * 0.01).half(),
            name + ".lora_down.weight": (torch.randn(rank, w.shape[1], generator=gen) * 0.01).half(),
            name + ".alpha": torch.tensor(float(rank))}
    lora_path = out.with_name(out.stem + "-lora.safetensors")
    save_file(lora, str(lora_path))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB) and {lora_path.name} in {time.time() - t0:.1f} s")


def build_clip_vision(comfy_root: Path, out: Path) -> None:
    """Random-weight CLIP-vision ViT-L/14 (ComfyUI's clip_vision_config_vitl.json; the smallest config its
    loader detects), fp16, for the Replication Check's optional CLIP_VISION input. ~600 MB."""
    t0 = time.time()
    import torch
    from safetensors.torch import save_file
    import comfy.clip_vision

    gen = torch.Generator().manual_seed(4321)
    cv = comfy.clip_vision.ClipVisionModel(str(comfy_root / "comfy" / "clip_vision_config_vitl.json"))
    sd = _randomise({k: v for k, v in cv.get_sd().items()}, gen, 0.02)
    del cv
    sd = {k: (v.half() if torch.is_floating_point(v) else v).contiguous() for k, v in sd.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata={"cpsample": "tiny random CLIP-vision test model"})
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB) in {time.time() - t0:.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", required=True, type=Path, help="ComfyUI root (has main.py, comfy/)")
    ap.add_argument("--out", required=True, type=Path, help="checkpoint path (.safetensors)")
    ap.add_argument("--clip-vision", type=Path, help="also write a random CLIP-vision ViT-L model here")
    a = ap.parse_args()
    build(a.comfyui.resolve(), a.out.resolve())
    if a.clip_vision:
        build_clip_vision(a.comfyui.resolve(), a.clip_vision.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
