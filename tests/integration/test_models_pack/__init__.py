"""A test-only ComfyUI node pack: a model that copies its training images, for Calibrate Guard's tests.

CPSampleTestKernelModel wraps a MODEL's denoiser with the exact denoiser of a kernel density on the
training latents (Gaussian kernels of width `bandwidth` around each VAE-encoded image): a real
diffusion model that memorises, with closed-form outputs. With a small bandwidth most samples land
within `bandwidth` of a training latent, i.e. copies; samples pushed off a training latent at low
noise stay off it, as with a fine-tune that generalises a little. The tiny random checkpoint never
copies, so without this the tests could not see calibration choose a setting. In flow models (SD3, Flux:
x = (1 − σ)·x0 + σ·ε) the same density is used on x / (1 − σ) with noise level σ / (1 − σ).

CPSampleTestConditioning gives a MODEL the conditioning its family needs (text context and pooled vector
of the shapes its diffusion model takes, Flux's distilled guidance), all zeros: the family tests load
diffusion-model files with no text encoder (a random CLIP-G or T5-XXL would be gigabytes), and a random
text encoder's output would mean no more than zeros.
"""
from __future__ import annotations

import os

import torch


class KernelDenoiser:
    def __init__(self, latents: torch.Tensor, bandwidth: float):
        self.latents = latents  # [N, C, H, W] in the model's latent space (process_in)
        self.h2 = float(bandwidth) ** 2

        self.flow = False

    def __call__(self, apply_model, args: dict) -> torch.Tensor:
        x, sigma = args["input"], args["timestep"]
        lat = self.latents.to(x.device, x.dtype)
        if self.flow:  # x / (1 − σ) = x0 + σ/(1 − σ)·ε
            a = (1 - sigma.to(x.dtype)).clamp_min(1e-6)
            x, sigma = x / a.view(-1, 1, 1, 1), sigma.to(x.dtype) / a
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
        import comfy.model_sampling

        m = model.clone()
        denoiser = KernelDenoiser(latents, bandwidth)
        denoiser.flow = isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.CONST)
        m.set_model_unet_function_wrapper(denoiser)
        return (m,)


class TestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "tokens": ("INT", {"default": 8, "min": 1, "max": 512})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, model, tokens):
        base = model.model
        cfg = base.model_config.unet_config
        family = type(base).__name__
        if family == "SDXL":
            context, pooled, extra = cfg["context_dim"], 1280, {}
        elif family == "SD3":
            context, pooled, extra = cfg["context_embedder_config"]["params"]["in_features"], cfg["adm_in_channels"], {}
        elif family == "Flux":
            context, pooled, extra = cfg["context_in_dim"], cfg["vec_in_dim"], {"guidance": 3.5}
        else:
            raise ValueError(f"no test conditioning for {family}")
        return ([[torch.zeros(1, tokens, context), {"pooled_output": torch.zeros(1, pooled), **extra}]],)


NODE_CLASS_MAPPINGS = {"CPSampleTestKernelModel": TestKernelModel, "CPSampleTestConditioning": TestConditioning}
