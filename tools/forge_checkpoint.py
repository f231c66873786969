#!/usr/bin/env python3
"""Write a random-weight, full-size SD1.5 checkpoint that Forge loads, built from Forge's own classes.

    <forge venv>/bin/python tools/forge_checkpoint.py --forge .cache/forge/webui --out FILE

Run by tools/forge_env.py inside Forge's venv. Why full size: Forge detects the model family from the
UNet's state dict but always builds the VAE and CLIP text encoder at SD1.5 size, so a shrunken model
is "Failed to recognize model type!". The keys are the original (LDM) layout a downloaded SD1.5
`.safetensors` has; after writing, the file goes through Forge's own detector and key split, which
must say SD15 with no missing or unexpected keys. Weights are seeded, stored in fp16 (2.1 GB).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

# The UNet config Forge's detector derives from an SD1.5 state dict (huggingface_guess SD15 + detection).
UNET_CONFIG = {
    "in_channels": 4, "model_channels": 320, "out_channels": 4, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4], "use_spatial_transformer": True, "context_dim": 768,
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False, "adm_in_channels": None,
}
SD15_REPO = "runwayml/stable-diffusion-v1-5"


def _forge_imports(forge: Path) -> None:
    os.chdir(forge)
    sys.argv = sys.argv[:1] + ["--always-cpu"]  # Forge's backend reads its flags at import: CPU, no CUDA probe
    for p in (forge, forge / "repositories" / "huggingface_guess", forge / "packages_3rdparty"):
        sys.path.insert(0, str(p))


def offset_layer_norms(clip) -> None:
    """Fresh LayerNorms (weight 1, bias 0) make every token's features average exactly zero; the hosts'
    prompt emphasis rescales by original_mean / new_mean and would turn that into 0/0 = NaN (black
    images). A trained CLIP has norms with offsets: give the random one some."""
    for name, p in clip.named_parameters():
        if "layer_norm" in name:
            p.normal_(1.0 if name.endswith("weight") else 0.0, 0.05)
            if name.endswith("final_layer_norm.bias"):
                p.add_(0.1)


def compare_keys(parts: dict, wanted: dict) -> dict:
    """Forge's key split `parts` against the state dicts of the classes Forge builds: every key present with
    its shape, nothing left over; the tensor count per component."""
    ignorable = {"transformer.text_projection.weight", "transformer.text_model.embeddings.position_ids", "logit_scale"}
    report = {}
    for name, model_sd in wanted.items():
        got = parts.get(name, {})
        missing = sorted(set(model_sd) - set(got) - ignorable)
        unexpected = sorted(set(got) - set(model_sd) - ignorable)
        shapes = [k for k in set(got) & set(model_sd) if tuple(got[k].shape) != tuple(model_sd[k].shape)]
        if missing or unexpected or shapes:
            raise SystemExit(f"{name}: missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {shapes[:5]}")
        report[name] = len(got)
    return report


# The pass-through VAE: each signal channel shares its GroupNorm group with its negative and with large constants
# of both signs, so the group's mean is exactly 0 and its spread all but fixed: the norm only scales by a known
# factor. A bias of SILU_SHIFT keeps SiLU linear to 1e-6 over the signal's range; the next convolution removes it.
CONSTANT, SILU_SHIFT = 1000.0, 40.0
LATENT_GAIN = 15.0  # pixels in [-1, 1] → raw latents; ×0.13025 (SDXL's scale) gives about unit spread


def _identity_conv(conv, pairs, taps=((1, 1),)) -> None:
    """conv ← zero, then out[o] = the mean of in[i] over ``taps``, for (o, i) in pairs."""
    conv.weight.zero_()
    if conv.bias is not None:
        conv.bias.zero_()
    for o, i in pairs:
        for ty, tx in taps:
            conv.weight[o, i, ty, tx] = 1.0 / len(taps)


def _signal_group(conv, norm, channels: list[int], gain: float, stride: int) -> None:
    """``conv`` (zeroed) puts input ``channels[c]`` into channel ``stride·c``, its negative into the next and
    ±CONSTANT into the rest of that ``norm`` group; the norm's affine undoes its own scaling (then × ``gain``)
    and adds SILU_SHIFT. Channels outside these groups norm to SILU_SHIFT and are not read."""
    import math

    norm.weight.zero_()
    norm.bias.fill_(SILU_SHIFT)
    spread = CONSTANT * math.sqrt((stride - 2) / stride)  # the group's std, the signal's part aside
    for c, src in enumerate(channels):
        base = stride * c
        conv.weight[base, src, 1, 1] = 1.0
        conv.weight[base + 1, src, 1, 1] = -1.0
        for k in range(2, stride):
            conv.bias[base + k] = CONSTANT if k % 2 == 0 else -CONSTANT
        norm.weight[base] = spread * gain


def pass_through_vae(vae) -> None:
    """Hand-set Forge's AutoencoderKL so it keeps pictures apart, as a trained VAE does (a random one maps small
    pictures almost onto one latent): latent channels 0–2 are LATENT_GAIN × the picture's RGB averaged over each
    8×8 block, channel 3 is 0, the posterior's spread is e^-15; decoding gives back those block averages. Every
    residual branch is zeroed, the up- and downsamplers copy or average, the shortcuts keep the first channels."""
    import torch

    with torch.no_grad():
        for m in vae.modules():
            name = type(m).__name__
            if name == "ResnetBlock":
                m.conv2.weight.zero_()
                m.conv2.bias.zero_()
                if hasattr(m, "nin_shortcut"):
                    n = min(m.in_channels, m.out_channels)
                    _identity_conv(m.nin_shortcut, [(c, c) for c in range(n)], taps=((0, 0),))
            elif name == "AttnBlock":
                m.proj_out.weight.zero_()
                m.proj_out.bias.zero_()
            elif name == "Downsample":  # pads right and bottom; taps (0..1, 0..1) never reach the padding
                _identity_conv(m.conv, [(c, c) for c in range(m.conv.in_channels)],
                               taps=((0, 0), (0, 1), (1, 0), (1, 1)))
            elif name == "Upsample":  # nearest ×2, then the centre tap
                _identity_conv(m.conv, [(c, c) for c in range(m.conv.in_channels)])
        # RGB channel c rides in channel stride·c through both halves (stride: the output norms' group width)
        for half, gain, width in ((vae.encoder, LATENT_GAIN, 3), (vae.decoder, 1.0 / LATENT_GAIN, 3)):
            stride = half.norm_out.num_channels // half.norm_out.num_groups
            half.conv_in.weight.zero_()
            half.conv_in.bias.zero_()
            _signal_group(half.conv_in, half.norm_out, list(range(width)), gain, stride)
            _identity_conv(half.conv_out, [(c, stride * c) for c in range(width)])
            half.conv_out.bias[:width] = -SILU_SHIFT
        vae.encoder.conv_out.bias[vae.encoder.conv_out.out_channels // 2:] = -30.0  # log-variance: a point posterior
        for conv in (vae.quant_conv, vae.post_quant_conv):
            _identity_conv(conv, [(c, c) for c in range(conv.in_channels)], taps=((0, 0),))


def unet_and_vae(forge: Path, repo_id: str, unet_config: dict, seed: int, pass_through: bool = False) -> dict:
    """Seeded random weights of Forge's UNet (``unet_config``) and of the VAE of ``repo_id``'s fixed config, under
    a checkpoint's keys; the text encoders come after, from the same random stream. ``pass_through``: the VAE is
    hand-set instead (pass_through_vae), after drawing its random weights so the stream stays the same."""
    import torch
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL

    torch.manual_seed(seed)
    sd = {}
    with torch.no_grad():
        unet = IntegratedUNet2DConditionModel(**unet_config)
        # The UNet zero-initialises its output convolutions (and projections): it would predict zero noise everywhere.
        for name, p in unet.named_parameters():
            if name.endswith("weight") and p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
        sd.update({"model.diffusion_model." + k: v for k, v in unet.state_dict().items()})
        del unet
        vae_folder = forge / "backend" / "huggingface" / repo_id / "vae"
        vae = IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(str(vae_folder)))
        if pass_through:
            pass_through_vae(vae)
        sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    return sd


def build_state_dict(forge: Path, seed: int) -> dict:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel
    from backend.nn.clip import IntegratedCLIP

    sd = unet_and_vae(forge, SD15_REPO, UNET_CONFIG, seed)
    with torch.no_grad():
        clip = IntegratedCLIP(CLIPTextModel, CLIPTextConfig.from_pretrained(
            str(forge / "backend" / "huggingface" / SD15_REPO / "text_encoder")))
        offset_layer_norms(clip)
        sd.update({"cond_stage_model." + k: v for k, v in clip.state_dict().items()
                   if k.startswith("transformer.text_model.") and not k.endswith("position_ids")})
        del clip
    return {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}


def check_components(path: Path, forge: Path, repo_id: str, text_encoders: dict):
    """Forge's own detection and key split of the file at `path`: it must detect `repo_id`, and every component
    Forge builds (the UNet from the detected config; the VAE and the text encoders, `{folder: with
    projection}`, from the repository's fixed configs) must find each of its keys, with nothing left over.
    Returns the tensor count per component and Forge's guess (its model type and ztsnr flag included)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    from backend.loader import split_state_dict
    from backend.nn.clip import IntegratedCLIP
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL

    parts, guess = split_state_dict(str(path))
    if guess.huggingface_repo != repo_id:
        raise SystemExit(f"Forge detects {guess.huggingface_repo}, not {repo_id}")
    repo = forge / "backend" / "huggingface" / repo_id
    with torch.device("meta"):
        wanted = {
            "unet": IntegratedUNet2DConditionModel.from_config(guess.unet_config).state_dict(),
            "vae": IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(str(repo / "vae"))).state_dict(),
        }
        for folder, with_projection in text_encoders.items():
            # Forge adds a text projection to the plain CLIPTextModel; the WithProjection class has its own
            cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
            wanted[folder] = IntegratedCLIP(cls, CLIPTextConfig.from_pretrained(str(repo / folder)),
                                            add_text_projection=not with_projection).state_dict()
    return compare_keys(parts, wanted), guess


def check(path: Path, forge: Path) -> dict:
    """Forge's own detection and key split: SD15, every component's keys present, nothing left over."""
    report, guess = check_components(path, forge, SD15_REPO, {"text_encoder": False})
    return {"detected": guess.huggingface_repo, "tensors": report}


def write_checked(name: str, doc: str | None, what: str, build: Callable[..., dict], check: Callable[..., dict],
                  flags: tuple[str, ...] = ()) -> int:
    """The command line of the checkpoint writers: --forge, --out, the on/off ``flags``, --seed. Writes
    ``build(forge, seed, **flags)`` next to --out and gives it its name only once ``check(file, forge, **flags)``,
    Forge's own reading of the file, passed."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forge", type=Path, required=True, help="Forge's folder (webui)")
    ap.add_argument("--out", type=Path, required=True)
    for flag in flags:
        ap.add_argument(f"--{flag}", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    forge, out = args.forge.resolve(), args.out.resolve()
    on = {flag: getattr(args, flag) for flag in flags}
    _forge_imports(forge)
    from safetensors.torch import save_file

    t0 = time.time()
    sd = build(forge, args.seed, **on)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.safetensors")  # Forge picks the loader by the suffix
    save_file(sd, str(tmp), metadata={"format": "pt", "cpsample": what})
    del sd
    report = check(tmp, forge, **on)
    tmp.replace(out)  # only a checked file gets the real name
    print(f"[{name}] {out} ({out.stat().st_size / 2**30:.2f} GiB) in {time.time() - t0:.0f} s: {report}")
    return 0


def main() -> int:
    return write_checked("forge_checkpoint", __doc__, "random-weight SD1.5 for tests", build_state_dict, check)


if __name__ == "__main__":
    sys.exit(main())
