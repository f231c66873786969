#!/usr/bin/env python3
"""Write the smallest random-weight models of each family ComfyUI's own detection accepts, with VAEs that
keep the test pictures apart: SDXL (EPS and v-prediction), SD3 and Flux dev (guidance-distilled).

Run with the ComfyUI venv's python (comfy's own classes give the exact key names and shapes):

    .cache/comfyui/venv/bin/python tools/family_models.py --comfyui .cache/comfyui/ComfyUI --out DIR

Writes into DIR (never committed; tests cache it under .cache/comfyui/models/families/):

* `sdxl-eps.safetensors`, `sdxl-vpred.safetensors` (diffusion-model files, UNETLoader): an SDXL-family UNet
  in KOALA-700M's detection layout (model_channels 320, linear-in-transformer, context 2048, ADM 2816,
  transformer depths [0, 2, 5]) but one level of three res blocks, no transformer in the output blocks
  and no middle block; the v-prediction file carries the `v_pred` and `ztsnr` marker keys ComfyUI reads
  (zero-terminal-SNR v-prediction, as NoobAI-style checkpoints).
* `sd3.safetensors`: an SD3 MMDiT of depth 1 (hidden 64, one head), context 4096, pooled 2048, position
  embedding for latents up to 64x64 (0.6 M parameters).
* `flux-dev.safetensors`: a Flux DiT with guidance embedding (dev), one double block and no single
  block; hidden size 3072 is fixed by ComfyUI's detection (24 heads, rope axes 16+56+56), fp16.
* `vae4.safetensors`, `vae16-sd3.safetensors`, `vae16-flux.safetensors`: TAESD-shaped VAEs (4 and 16 latent
  channels) with the hand-set encoder of tools/tiny_checkpoint.py (each picture's 8x downsampled colours
  and luminance edges; a 16-channel VAE repeats them over all channels), `vae_scale` / `vae_shift` set so
  that the family's latent format (`process_in`) gives latents of about the SD1.5 test's spread.
* `families.json`: for each file, what ComfyUI's detection said (model class, model type, latent format)
  and the parameter count.

Deterministic (seeded).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SEED = 2035
REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "comfyui" / "models" / "families"


def recipe_stamp() -> str:
    import hashlib
    h = hashlib.sha256()
    for f in ("family_models.py", "tiny_checkpoint.py"):
        h.update((REPO / "tools" / f).read_bytes())
    return h.hexdigest()[:16]


def ensure(python, comfyui) -> Path:
    """Build the models into CACHE with ComfyUI's venv `python` unless built by this recipe already."""
    import subprocess
    stamp = CACHE / "stamp.txt"
    if not (stamp.exists() and stamp.read_text() == recipe_stamp()):
        subprocess.run([str(python), str(Path(__file__).resolve()), "--comfyui", str(comfyui), "--out", str(CACHE)],
                       check=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
        stamp.write_text(recipe_stamp())
    return CACHE


def link_into(shared_models: Path) -> None:
    """Symlink the built files into a test layout's diffusion_models/ and vae/ (tools/comfyui_harness.py)."""
    for f in CACHE.glob("*.safetensors"):
        link = Path(shared_models) / ("vae" if f.stem.startswith("vae") else "diffusion_models") / f.name
        if not link.exists():
            link.symlink_to(f)

# family -> (latent channels, the latent format's scale and shift: process_in(x) = (x - shift) * scale)
VAE_FOR = {"vae4": (4, 0.13025, 0.0), "vae16-sd3": (16, 1.5305, 0.0609), "vae16-flux": (16, 0.3611, 0.1159)}


def _meta_state(model_cls_cfg, unet_cfg: dict) -> dict:
    """Keys and shapes of the diffusion model ComfyUI builds from `unet_cfg`, without allocating it."""
    import torch
    with torch.device("meta"):
        m = model_cls_cfg(dict(unet_cfg)).get_model({})
    return {k: v for k, v in m.diffusion_model.state_dict().items()}


def _fill(meta: dict, gen, scale: float = 0.02) -> dict:
    import torch
    out = {}
    for k, v in meta.items():
        name = k.rsplit(".", 1)[-1]
        if name == "bias":
            t = torch.zeros(v.shape)
        elif v.ndim == 1 and name in ("weight", "scale"):
            t = torch.ones(v.shape)
        else:
            t = torch.randn(v.shape, generator=gen) * scale
        out[k] = t
    return out


def family_vae(gen, channels: int, scale: float, shift: float) -> dict:
    """tiny_checkpoint.opponent_vae for `channels` latent channels, with the family's scale and shift."""
    import torch
    from tiny_checkpoint import opponent_vae

    sd = opponent_vae(gen, channels)
    # encode: enc / vae_scale + vae_shift; the latent format then takes (x - shift) * scale = enc · (scale/vae_scale).
    # vae_scale = scale / 0.9 gives process_in ≈ 0.9 · enc, as the SD1.5 tiny checkpoint (0.18215 / 0.2).
    sd["vae_scale"] = torch.tensor(scale / 0.9)
    sd["vae_shift"] = torch.tensor(shift)
    return sd


SDXL_CFG = dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=[1], num_res_blocks=[3],
                transformer_depth=[0, 2, 5], transformer_depth_output=[0, 0, 0, 0], transformer_depth_middle=-2,
                context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential",
                use_spatial_transformer=True, legacy=False, use_temporal_resblock=False,
                use_temporal_attention=False, image_size=32, num_head_channels=64, num_heads=-1)
SD3_CFG = dict(in_channels=16, out_channels=16, patch_size=2, depth=1, adm_in_channels=2048, num_patches=1024,
               pos_embed_max_size=32, pos_embed_scaling_factor=None, input_size=None, x_block_self_attn_layers=[],
               context_embedder_config={"target": "torch.nn.Linear",
                                        "params": {"in_features": 4096, "out_features": 64}})
FLUX_CFG = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=0,
                axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True, patch_size=2)


def detect(sd: dict) -> dict:
    import comfy.model_detection as md
    cfg = md.model_config_from_unet(sd, "")
    if cfg is None:
        raise RuntimeError("ComfyUI's detection did not accept the model")
    model_type = cfg.get_model(sd, "", device="meta").model_type if hasattr(cfg, "get_model") else None
    return {"config": type(cfg).__name__, "model_type": getattr(model_type, "name", str(model_type)),
            "latent_format": type(cfg.latent_format).__name__ if not isinstance(cfg.latent_format, type)
            else cfg.latent_format.__name__}


def build(comfy_root: Path, out: Path) -> dict:
    t0 = time.time()
    sys.path.insert(0, str(comfy_root))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.chdir(comfy_root)
    import comfy.options
    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import torch
    from safetensors.torch import save_file
    import comfy.supported_models as sm

    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    report = {}

    def write(name: str, sd: dict, dtype=torch.float32, meta: str = "") -> None:
        path = out / f"{name}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({k: (v.to(dtype) if torch.is_floating_point(v) else v).contiguous() for k, v in sd.items()},
                  str(tmp), metadata={"cpsample": f"random-weight {meta} test model"})
        os.replace(tmp, path)

    sdxl = _fill(_meta_state(sm.KOALA_700M, SDXL_CFG), gen)
    info = detect(sdxl)
    n = sum(v.numel() for v in sdxl.values())
    write("sdxl-eps", sdxl, meta="SDXL-family EPS")
    report["sdxl-eps"] = {**info, "params": n}
    vpred = {**sdxl, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}
    report["sdxl-vpred"] = {**detect(vpred), "params": n}
    write("sdxl-vpred", vpred, meta="SDXL-family zero-terminal-SNR v-prediction")
    del sdxl, vpred

    sd3 = _fill(_meta_state(sm.SD3, SD3_CFG), gen)
    report["sd3"] = {**detect(sd3), "params": sum(v.numel() for v in sd3.values())}
    write("sd3", sd3, meta="SD3 MMDiT")
    del sd3

    flux = _fill(_meta_state(sm.Flux, FLUX_CFG), gen)
    report["flux-dev"] = {**detect(flux), "params": sum(v.numel() for v in flux.values())}
    write("flux-dev", flux, dtype=torch.float16, meta="Flux dev")
    del flux

    for name, (channels, scale, shift) in VAE_FOR.items():
        write(name, family_vae(gen, channels, scale, shift), meta=f"{channels}-channel TAESD-shaped VAE")
    report["build_s"] = round(time.time() - t0, 1)
    (out / "families.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", required=True, type=Path, help="ComfyUI root (has main.py, comfy/)")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    a = ap.parse_args()
    build(a.comfyui.resolve(), a.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
