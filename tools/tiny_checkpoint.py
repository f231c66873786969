#!/usr/bin/env python3
"""Write a tiny random-weight checkpoint that ComfyUI's model detection takes for SD1.5, plus a tiny LoRA.

Run with the ComfyUI venv's python (it uses comfy's own classes for the exact key names and shapes):

    .cache/comfyui/venv/bin/python tools/tiny_checkpoint.py --comfyui .cache/comfyui/ComfyUI \
        --out .cache/comfyui/models/tiny-sd15.safetensors

* UNet: SD1.5's detection keys (model_channels 320, context_dim 768, no linear-in-transformer, no adm)
  but a single level with one res block and one transformer block (21 M parameters).
* CLIP-L text encoder: transformers' CLIPTextModel from comfy/sd1_clip_config.json, random init, fp16.
* VAE: TAESD-shaped (detected by `taesd_decoder.1.weight`) with hand-set weights, not random ones: the
  encoder is a colour transform plus three 2x2 average pools (latents keep each picture's 8x downsampled
  content, about SD1.5's magnitude), the decoder undoes it. A random VAE maps distinct pictures to nearly
  the same latent, and no guard can memorise pictures it cannot tell apart.
* `<out stem>-lora.safetensors` next to it: a rank-4 LoRA on one attention projection (kohya key names),
  so workflows can put a LoraLoader in the graph.
* with --clip-vision PATH: a random CLIP-vision ViT-L/14 (fp16, ~600 MB) for CLIP_VISION inputs.

Deterministic (seeded). Never committed: it lives in `.cache/comfyui/`. Images it samples are noise (random
UNet); that is all tests need (shapes, model detection, sampling hooks, determinism), and its VAE keeps the
demo pictures apart so a guard trained on them memorises them.
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


# Opponent colours: luminance, red-green, yellow-blue (rows: latent channels 0-2, columns: R, G, B).
_COLOUR = ((1 / 3, 1 / 3, 1 / 3), (1.0, -1.0, 0.0), (0.5, 0.5, -1.0))
# The encoder's own output stays inside the decoder's tanh clamp (|x| < 3); vae_scale then stretches the
# latents the host sees to about SD1.5's spread (scaled latents of order 1 apart, σ_min is 0.03).
_ENCODER_GAIN = 3.0
_VAE_SCALE = 0.2


def _set_conv(sd: dict, key: str, pairs, tap=None) -> None:
    """Zero a conv weight, then put `value` at (out, in) for each (out, in, value): centre tap, or a kernel."""
    import torch
    w = sd[key]
    w.zero_()
    for o, i, v in pairs:
        if tap is None:
            w[o, i, 1, 1] = v
        else:
            w[o, i] = v * torch.as_tensor(tap, dtype=w.dtype)


def opponent_vae(gen, channels: int = 4) -> dict:
    """TAESD state dict whose encoder keeps the picture: channels 0-2 carry +(RGB − ½), 3-5 −(RGB − ½)
    (ReLU passes both halves), each Block is the identity (zero convs, identity skip), each stride-2 conv is
    a 2x2 average pool, and the last conv maps the colour differences to opponent colours; channel 3 is a
    horizontal luminance edge; with 16 channels, channel 4 is the vertical edge and 5-15 repeat 0-4 with
    alternating sign, so that all of them carry the picture as a trained 16-channel VAE's do (the decoder
    reads channels 0-2 only). The decoder inverts the colour transform and upsamples (nearest)."""
    import torch
    import comfy.taesd.taesd as taesd
    sd = {k: torch.zeros_like(v) for k, v in taesd.TAESD(latent_channels=channels).state_dict().items()}
    rgb = range(3)
    # Encoder: 0 conv(3,64) | 1 Block | 2 s2 | 3-5 Blocks | 6 s2 | 7-9 | 10 s2 | 11-13 | 14 conv(64,4).
    e = "taesd_encoder."
    _set_conv(sd, e + "0.weight", [(k, k, 1.0) for k in rgb] + [(k + 3, k, -1.0) for k in rgb])
    sd[e + "0.bias"][:6] = torch.tensor([-0.5] * 3 + [0.5] * 3)
    pool = [[0, 0, 0], [0, 0.25, 0.25], [0, 0.25, 0.25]]  # stride 2, padding 1: the 2x2 block at (2i, 2j)
    for n in (2, 6, 10):
        _set_conv(sd, f"{e}{n}.weight", [(c, c, 1.0) for c in range(6)], tap=pool)
    pairs = []
    for o, row in enumerate(_COLOUR):
        for k, v in zip(rgb, row):
            pairs += [(o, k, _ENCODER_GAIN * v), (o, k + 3, -_ENCODER_GAIN * v)]
    _set_conv(sd, e + "14.weight", pairs)
    edges = [[[0, 0, 0], [-1, 0, 1], [0, 0, 0]], [[0, -1, 0], [0, 0, 0], [0, 1, 0]]]  # d/dx, d/dy
    for c, edge in zip((3, 4), edges[: max(1, min(2, channels - 3))]):  # channel 3 (and 4): luminance edges
        for k in rgb:
            sd[e + "14.weight"][c, k] = _ENCODER_GAIN * torch.tensor(edge, dtype=torch.float32) / 3
            sd[e + "14.weight"][c, k + 3] = -_ENCODER_GAIN * torch.tensor(edge, dtype=torch.float32) / 3
    w = sd[e + "14.weight"]
    for c in range(5, channels):
        w[c] = w[(c - 5) % 5] * (-1.0 if (c - 5) // 5 % 2 == 0 else 1.0)
    # Decoder: 0 clamp | 1 conv(4,64) | 2 ReLU | 3-5 | 6 up | 7 conv | 8-10 | 11 up | 12 conv | 13-15 | 16 up
    # | 17 conv | 18 Block | 19 conv(64,3).
    d = "taesd_decoder."
    inv = torch.linalg.inv(torch.tensor(_COLOUR)) / _ENCODER_GAIN  # opponent colours -> RGB − ½
    _set_conv(sd, d + "1.weight", [(k, o, float(inv[k, o])) for k in rgb for o in rgb]
              + [(k + 3, o, -float(inv[k, o])) for k in rgb for o in rgb])
    for n in (7, 12, 17):
        _set_conv(sd, f"{d}{n}.weight", [(c, c, 1.0) for c in range(6)])
    _set_conv(sd, d + "19.weight", [(k, k, 1.0) for k in rgb] + [(k, k + 3, -1.0) for k in rgb])
    sd[d + "19.bias"][:] = 0.5
    # A little randomness in the otherwise unused weights, as in a real network; small enough (1e-3) to
    # leave the map above intact.
    for k, v in sd.items():
        if v.ndim == 4 and not v.any():
            v.copy_(torch.randn(v.shape, generator=gen) * 1e-3)
    return sd


def demo_vae(gen) -> dict:
    """opponent_vae with 4 channels and the SD1.5 tiny checkpoint's scale."""
    import torch
    sd = opponent_vae(gen, 4)
    sd["vae_scale"] = torch.tensor(_VAE_SCALE)
    sd["vae_shift"] = torch.tensor(0.0)
    return sd


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

    for k, v in demo_vae(gen).items():
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
