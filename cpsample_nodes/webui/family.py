"""Which model family a webui model is, and whether a guard fits it.

A guard file records the latent format and noise kind it was trained for, under the names ComfyUI
uses (latent format "SD15", "SDXL", ...; sampling "ModelSamplingDiscrete+EPS"). Forge's backend
comes from ComfyUI's and its model configs carry the same latent format classes, so a guard
trained in one host is checked the same way in the other. The checks and their messages are the
ones Protect Model gives in ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core import NoiseSpace
from ..core.compat import latent_mismatch, noise_mismatch


class FamilyMismatch(ValueError):
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
    """Raise FamilyMismatch with the reason unless ``guard`` was trained for this family's latents."""
    why = (latent_mismatch(guard, family.latent_format, family.latent_channels)
           or noise_mismatch(guard, family.noise_kind, family.model_sampling))
    if why:
        raise FamilyMismatch(why)


# --- Forge: the backend's predictor and the model config's latent format ------------------------

# Forge's predictor classes and prediction types under ComfyUI's model_sampling names.
_FORGE_SCHEDULES = {
    "Prediction": "ModelSamplingDiscrete",
    "PredictionEDM": "ModelSamplingDiscrete",
    "PredictionContinuousEDM": "ModelSamplingContinuousEDM",
    "PredictionContinuousV": "ModelSamplingContinuousV",
    "PredictionFlow": "ModelSamplingDiscreteFlow",
    "PredictionDiscreteFlow": "ModelSamplingDiscreteFlow",
    "PredictionFlux": "ModelSamplingFlux",
}
_FORGE_PREDICTIONS = {"epsilon": "EPS", "eps": "EPS", "v_prediction": "V_PREDICTION", "edm": "EDM",
                      "const": "CONST"}


def forge_predictor(sd_model):
    return sd_model.forge_objects.unet.model.predictor


def forge_sampling_name(predictor) -> str:
    sched = _FORGE_SCHEDULES.get(type(predictor).__name__, type(predictor).__name__)
    pred = getattr(predictor, "prediction_type", "")
    return "+".join(n for n in (sched, _FORGE_PREDICTIONS.get(pred, str(pred).upper())) if n)


def forge_noise_kind(predictor) -> str:
    # CONST is rectified flow; EPS, V_PREDICTION and EDM all noise as x0 + σε.
    return "flow" if getattr(predictor, "prediction_type", "") == "const" else "vp"


def forge_family(sd_model) -> ModelFamily:
    lf = sd_model.model_config.latent_format
    predictor = forge_predictor(sd_model)
    return ModelFamily(latent_format=type(lf).__name__, latent_channels=int(getattr(lf, "latent_channels", 4)),
                       model_sampling=forge_sampling_name(predictor), noise_kind=forge_noise_kind(predictor))


def forge_noise_space(predictor) -> NoiseSpace:
    """The predictor's own noising, as ComfyUI's model_sampling is wrapped for training and guidance."""
    def noise_scaling(sigma, noise, latent):
        # Forge's noise_scaling wants σ shaped like the latents (ComfyUI's reshapes it itself)
        return predictor.noise_scaling(sigma.reshape(-1, *([1] * (noise.dim() - 1))), noise, latent)

    return NoiseSpace.from_host(kind=forge_noise_kind(predictor), noise_scaling=noise_scaling,
                                calculate_input=predictor.calculate_input,
                                percent_to_sigma=predictor.percent_to_sigma, name=forge_sampling_name(predictor))
