"""Which model family a webui model is, in ComfyUI's names (``usecases.model.ModelFamily``).

Forge's backend comes from ComfyUI's and its model configs carry the same latent format classes; its
predictor is named as ComfyUI names model_sampling. A1111's models are read in ``a1111.py``.
"""
from __future__ import annotations

import copy

from ..core import NoiseSpace
from ..usecases.model import ModelFamily

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


def forge_zero_terminal_snr(sd_model) -> bool:
    """Whether Forge samples this model on a zero-terminal-SNR schedule: its loader sets
    ``model_config.ztsnr`` when the checkpoint has the ``ztsnr`` marker key, and the "Noise schedule for
    sampling" option can ask for it on any model (Forge's ``modules/processing.py``)."""
    if getattr(sd_model.model_config, "ztsnr", False):
        return True
    try:
        from modules.shared import opts
    except ImportError:  # no webui: the tests of this glue
        return False
    return getattr(opts, "sd_noise_schedule", "Default") == "Zero Terminal SNR"


def forge_sampling_predictor(sd_model):
    """The predictor with the σ schedule Forge samples with. Forge rescales the predictor's sigmas to zero
    terminal SNR only around each sampling call (``processing.py``; σ_max 14.6 becomes about 4,500) and puts
    them back after, so outside a generation (training, calibration set-up) the loaded predictor has the
    plain schedule: here a copy gets the same rescale. Already rescaled (inside a generation): as it is."""
    predictor = forge_predictor(sd_model)
    if not forge_zero_terminal_snr(sd_model) or float(predictor.sigmas[-1]) > 1e3:
        return predictor
    from backend.modules.k_prediction import rescale_zero_terminal_snr_sigmas

    rescaled = copy.deepcopy(predictor)
    rescaled.set_sigmas(rescale_zero_terminal_snr_sigmas(predictor.sigmas.clone()))
    return rescaled


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
