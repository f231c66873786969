"""A test-only ComfyUI node pack: a model that copies its training images, for Calibrate Guard's tests.

CPSampleTestKernelModel wraps a MODEL's denoiser with the exact denoiser of a kernel density on the
training latents (Gaussian kernels of width `bandwidth` around each VAE-encoded image): a real
diffusion model that memorises, with closed-form outputs. With a small bandwidth most samples land
within `bandwidth` of a training latent, i.e. copies; samples pushed off a training latent at low
noise stay off it, as with a fine-tune that generalises a little. The tiny random checkpoint never
copies, so without this the tests could not see calibration choose a setting.
"""
from __future__ import annotations

import os

import torch


class KernelDenoiser:
    def __init__(self, latents: torch.Tensor, bandwidth: float):
        self.latents = latents  # [N, C, H, W] in the model's latent space (process_in)
        self.h2 = float(bandwidth) ** 2

    def __call__(self, apply_model, args: dict) -> torch.Tensor:
        x, sigma = args["input"], args["timestep"]
        lat = self.latents.to(x.device, x.dtype)
        s2 = sigma.reshape(-1, 1).to(x.dtype) ** 2 + self.h2
        d2 = (x.flatten(1)[:, None, :] - lat.flatten(1)[None]).pow(2).sum(-1)  # [B, N]
        w = torch.softmax(-d2 / (2 * s2), dim=1)
        mean = torch.einsum("bn,nchw->bchw", w, lat)
        keep = (self.h2 / s2).view(-1, 1, 1, 1)
        return mean + keep * (x - mean)


class TestKernelModel:
    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"model": ("MODEL",), "vae": ("VAE",),
                             "folder": (sorted(folder_paths.get_input_subfolders()),),
                             "bandwidth": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.01})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, vae, folder, bandwidth):
        import folder_paths
        import numpy as np
        from PIL import Image

        path = os.path.join(folder_paths.get_input_directory(), folder)
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(".png"))
        batch = torch.from_numpy(np.stack([np.asarray(Image.open(os.path.join(path, f)).convert("RGB"))
                                           for f in files])).float() / 255.0
        latents = model.get_model_object("latent_format").process_in(vae.encode(batch).float().cpu())
        m = model.clone()
        m.set_model_unet_function_wrapper(KernelDenoiser(latents, bandwidth))
        return (m,)


NODE_CLASS_MAPPINGS = {"CPSampleTestKernelModel": TestKernelModel}
