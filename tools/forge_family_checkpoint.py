#!/usr/bin/env python3
"""Write a random-weight SDXL-family checkpoint that Forge loads, its UNet as small as Forge's detector allows.

    <forge venv>/bin/python tools/forge_family_checkpoint.py --forge .cache/forge/webui --out FILE [--vpred]

The UNet has the layout tools/family_models.py gives ComfyUI (KOALA-700M's detection keys: model_channels
320, linear-in-transformer, context 2048, ADM 2816, transformer depths [0, 2, 5]; one level of three res
blocks, no middle block; 50 M parameters), built from Forge's own UNet class; huggingface_guess takes it
for SDXL (KOALA_700M, a subclass Forge's SDXL engine matches). Forge builds the text encoders and the VAE
from the SDXL repository's fixed configs, so those are full size: CLIP-L, CLIP-G (OpenCLIP key layout, as
an SDXL checkpoint has it), random; the SDXL AutoencoderKL hand-set to pass pictures through (its latents are
8×8 block averages of the pixels, forge_checkpoint.pass_through_vae), so pictures stay apart as with a trained
VAE; fp16 (1.9 GB). `--vpred` adds the
`v_pred` and `ztsnr` marker keys (zero-terminal-SNR v-prediction). After writing, Forge's own detection and
key split must say SDXL with no missing or unexpected keys, and Forge's guess must read the markers back
(model type V_PREDICTION and ztsnr with `--vpred`, EPS and no ztsnr without).

Why only SDXL: in Forge dfdcbab6 huggingface_guess fixes Flux's depth at 19 double and 38 single blocks
(the full 12 B DiT), and both Flux and SD3 load a full T5-XXL (4.8 B parameters); see docs/webui.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

from forge_checkpoint import check_components, offset_layer_norms, unet_and_vae, write_checked

SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
UNET_CONFIG = dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=[1], num_res_blocks=[3],
                   transformer_depth=[0, 2, 5], transformer_depth_output=[0, 0, 0, 0], transformer_depth_middle=-2,
                   context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential",
                   use_spatial_transformer=True, num_head_channels=64, num_heads=-1)


def build_state_dict(forge: Path, seed: int, vpred: bool) -> dict:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    import huggingface_guess.model_list as ml

    sd = unet_and_vae(forge, SDXL_REPO, UNET_CONFIG, seed, pass_through=True)
    repo = forge / "backend" / "huggingface" / SDXL_REPO
    with torch.no_grad():
        clips = {}
        for name, cls, folder in (("clip_l", CLIPTextModel, "text_encoder"),
                                  ("clip_g", CLIPTextModelWithProjection, "text_encoder_2")):
            clip = cls(CLIPTextConfig.from_pretrained(str(repo / folder)))
            offset_layer_norms(clip)
            clips.update({f"{name}.transformer.{k}": v for k, v in clip.state_dict().items()
                          if not k.endswith("position_ids")})
            del clip
        sd.update(ml.SDXL({}).process_clip_state_dict_for_saving(clips))
    out = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    if vpred:
        out["v_pred"] = torch.tensor([])
        out["ztsnr"] = torch.tensor([])
    return out


def check(path: Path, forge: Path, vpred: bool) -> dict:
    """Forge's own detection and key split: SDXL, every component's keys present, nothing left over; and the
    prediction type and zero-terminal-SNR flag Forge reads from the markers are the ones written."""
    report, guess = check_components(path, forge, SDXL_REPO, {"text_encoder": False, "text_encoder_2": True})
    model_type, ztsnr = guess.model_type.name, bool(guess.ztsnr)
    if (model_type, ztsnr) != (("V_PREDICTION", True) if vpred else ("EPS", False)):
        raise SystemExit(f"Forge reads model type {model_type}, ztsnr {ztsnr} (written: vpred={vpred})")
    return {"detected": guess.huggingface_repo, "config": type(guess).__name__, "model_type": model_type,
            "ztsnr": ztsnr, "tensors": report}


def main() -> int:
    return write_checked("forge_family_checkpoint", __doc__, "random-weight SDXL-family model for tests",
                         build_state_dict, check, flags=("vpred",))


if __name__ == "__main__":
    sys.exit(main())
