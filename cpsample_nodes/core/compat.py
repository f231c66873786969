"""Whether a guard fits a model, host-free: the reasons ComfyUI's nodes and the A1111/Forge extension give
(each raises them as its own ValueError: comfyui.host.HostMismatch, webui.family.FamilyMismatch)."""
from __future__ import annotations

from .guard import Guard


def latent_mismatch(guard: Guard, latent_format: str, latent_channels: int) -> str | None:
    """Why ``guard`` cannot read this model's latents (channel count, then latent format), or None."""
    g_format = (guard.info or {}).get("latent_format")
    if guard.latent_channels != latent_channels:
        return (f"this guard takes {guard.latent_channels}-channel latents"
                f"{f' ({g_format})' if g_format else ''} but the model's latent format {latent_format} has "
                f"{latent_channels} channels: train a guard with this model's VAE")
    if g_format and g_format != latent_format:
        return (f"this guard was trained on {g_format} latents but the model uses {latent_format} latents "
                f"(same channel count, different latent space): train a guard for this model")
    return None


def noise_mismatch(guard: Guard, noise_kind: str, model_sampling: str) -> str | None:
    """Why ``guard`` was trained for another kind of noise (vp or flow) than this model's sampling, or None."""
    if guard.space.kind != noise_kind:
        return (f"this guard was trained for a {guard.space.kind} model but this model's sampling "
                f"({model_sampling}) is {noise_kind}")
    return None
