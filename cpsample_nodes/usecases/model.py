"""What a guard needs to know about a model, in ComfyUI's names, and whether a guard fits it.

A guard file records the latent format and noise kind it was trained for ("SD15", "SDXL", ...;
"ModelSamplingDiscrete+EPS"). Each host describes its model in these terms (ComfyUI from its
model_sampling and latent_format, Forge from its predictor, A1111 from its flags), so a guard trained
in one host is checked the same way in the other.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.compat import latent_mismatch, noise_mismatch


class GuardMismatch(ValueError):
    """A guard that does not fit the model (channels, latent format or noise kind)."""


@dataclass(frozen=True)
class ModelFamily:
    latent_format: str  # ComfyUI's latent format class name: "SD15", "SDXL", "SD3", "Flux", ...
    latent_channels: int
    model_sampling: str  # e.g. "ModelSamplingDiscrete+EPS"
    noise_kind: str  # "vp" or "flow"

    def info(self) -> dict:
        """What a guard trained on this model records about it."""
        return {"latent_format": self.latent_format, "model_sampling": self.model_sampling}


def check_guard(guard, family: ModelFamily) -> None:
    """Raise GuardMismatch with the reason unless ``guard`` was trained for this family's latents."""
    why = (latent_mismatch(guard, family.latent_format, family.latent_channels)
           or noise_mismatch(guard, family.noise_kind, family.model_sampling))
    if why:
        raise GuardMismatch(why)
