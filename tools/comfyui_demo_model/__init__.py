"""The browser demo's fine-tune that copies: a demo-only ComfyUI pack, never part of CPSample itself.

`tools/serve_comfyui.py` (and the test and thumbnail servers, through `comfyui_harness.make_layout`) link
this folder into `custom_nodes/` next to CPSample, and a checkpoint name, `cpsample-demo-finetune.safetensors`,
next to the tiny random checkpoint it points to. Loading that name with Load Checkpoint gives the tiny
checkpoint (its CLIP and VAE as they are) with its denoiser replaced by the exact denoiser of a kernel
density: narrow Gaussians around the VAE latents of the 8 pictures in the input folder `cpsample_demo`
(the "fine-tuning set") and around 8 other synthetic pictures that are not in it (what the model learnt
elsewhere). So it behaves like a fine-tune that memorised its training set: about half of its samples are
copies of a `cpsample_demo` picture, the rest are pictures of the other kind, and a sample pushed off a
training picture while the noise is still high ends on another picture. The tiny checkpoint itself, under
its own name, is not changed. The pack adds no node; it wraps Load Checkpoint's method for that one name.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

DEMO_CHECKPOINT = "cpsample-demo-finetune.safetensors"
FOLDER = "cpsample_demo"
OTHER_SEEDS = range(1000, 1008)  # the pictures the demo model knows besides its fine-tuning set
BANDWIDTH = 0.1  # latent units; the demo pictures are 0.48-0.91 per element apart (docs/comfyui.md)


class KernelDenoiser:
    """ComfyUI unet function wrapper: the exact denoiser of a Gaussian kernel density on ``latents``."""

    def __init__(self, latents: torch.Tensor, bandwidth: float):
        self.latents = latents  # [N, C, H, W] in the model's latent space (process_in)
        self.h2 = float(bandwidth) ** 2

    def __call__(self, apply_model, args: dict) -> torch.Tensor:
        x, sigma = args["input"], args["timestep"]
        lat = self.latents.to(x.device, x.dtype)
        if lat.shape[1:] != x.shape[1:]:
            raise ValueError(f"the CPSample demo model makes {tuple(lat.shape[2:])} latents "
                             f"({lat.shape[2] * 8}x{lat.shape[3] * 8} px); this sampler asked for {tuple(x.shape[2:])}")
        s2 = sigma.reshape(-1, 1).to(x.dtype) ** 2 + self.h2
        d2 = (x.flatten(1)[:, None, :] - lat.flatten(1)[None]).pow(2).sum(-1)  # [B, N]
        w = torch.softmax(-d2 / (2 * s2), dim=1)
        mean = torch.einsum("bn,nchw->bchw", w, lat)
        keep = (self.h2 / s2).view(-1, 1, 1, 1)
        return mean + keep * (x - mean)


def _pictures(paths: list[Path]) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])).float() / 255.0


def _demo_pictures() -> torch.Tensor:
    import folder_paths

    folder = Path(folder_paths.get_input_directory()) / FOLDER
    train = sorted(p for p in folder.glob("*.png"))
    if not train:
        raise ValueError(f"the CPSample demo model copies the pictures in {folder}, and there are none")
    tools = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(tools))
    from comfyui_harness import synthetic_png  # the generator that made the demo folder

    with tempfile.TemporaryDirectory() as tmp:
        other = [Path(tmp) / f"other_{s}.png" for s in OTHER_SEEDS]
        for p, s in zip(other, OTHER_SEEDS):
            synthetic_png(p, 64, 64, seed=s)
        return torch.cat([_pictures(train), _pictures(other)])


def copying_model(model, vae):
    latents = model.get_model_object("latent_format").process_in(vae.encode(_demo_pictures()).float().cpu())
    m = model.clone()
    m.set_model_unet_function_wrapper(KernelDenoiser(latents, BANDWIDTH))
    return m


def _install() -> None:
    import folder_paths
    import nodes

    loader = nodes.CheckpointLoaderSimple
    if getattr(loader.load_checkpoint, "_cpsample_demo", False):
        return
    plain = loader.load_checkpoint

    def load_checkpoint(self, ckpt_name, *args, **kwargs):
        out = plain(self, ckpt_name, *args, **kwargs)
        if os.path.basename(ckpt_name) != DEMO_CHECKPOINT:
            return out
        model, clip, vae = out[:3]
        return (copying_model(model, vae), clip, vae, *out[3:])

    load_checkpoint._cpsample_demo = True
    loader.load_checkpoint = load_checkpoint
    if not any(n == DEMO_CHECKPOINT for n in folder_paths.get_filename_list("checkpoints")):
        print(f"[CPSample demo model] no {DEMO_CHECKPOINT} among the checkpoints: nothing to do", flush=True)


_install()
NODE_CLASS_MAPPINGS: dict = {}
