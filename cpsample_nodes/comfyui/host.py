"""What a ComfyUI MODEL says about its noise: model_sampling kind, latent format, and the NoiseSpace.

Only attributes present in ComfyUI 0.3.64 through 0.38 are used (ModelPatcher.get_model_object,
model_sampling.noise_scaling / calculate_input / percent_to_sigma, latent_format.latent_channels).
"""
from __future__ import annotations

from ..core import NoiseSpace
from ..core.compat import latent_mismatch, noise_mismatch
from ..usecases.model import ModelFamily


class HostMismatch(ValueError):
    """A guard that does not fit a MODEL (channels, latent format or noise kind)."""


def model_sampling(model):
    """The MODEL's current model_sampling (object patches such as ModelSamplingSD3 included)."""
    return model.get_model_object("model_sampling")


def latent_format(model):
    return model.get_model_object("latent_format")


def sampling_name(ms) -> str:
    """e.g. 'ModelSamplingDiscrete+EPS' (ComfyUI builds model_sampling as a class combining both)."""
    import comfy.model_sampling as cms

    names = [c.__name__ for c in type(ms).__mro__
             if c.__module__ == cms.__name__ and c.__name__ not in ("ModelSampling",)]
    # keep the first schedule class and the first prediction class
    sched = next((n for n in names if n.startswith(("ModelSampling", "StableCascade"))), None)
    pred = next((n for n in names if not n.startswith(("ModelSampling", "StableCascade"))), None)
    return "+".join(n for n in (sched, pred) if n) or type(ms).__name__


def noise_kind(ms) -> str:
    """'vp' for EPS / V_PREDICTION / EDM-style noising (x0 + σε), 'flow' for CONST ((1−σ)x0 + σε)."""
    import comfy.model_sampling as cms

    if isinstance(ms, cms.CONST):
        return "flow"
    img2img = getattr(cms, "IMG_TO_IMG", None)
    if isinstance(ms, cms.EPS) and not (img2img is not None and isinstance(ms, img2img)):
        return "vp"
    raise HostMismatch(f"CPSample supports models whose sampling is EPS, V_PREDICTION or CONST (flow); "
                       f"this model uses {sampling_name(ms)}")


def noise_space(ms) -> NoiseSpace:
    return NoiseSpace.from_host(kind=noise_kind(ms), noise_scaling=ms.noise_scaling,
                                calculate_input=ms.calculate_input, percent_to_sigma=ms.percent_to_sigma,
                                name=sampling_name(ms))


def describe(model) -> dict:
    ms = model_sampling(model)
    lf = latent_format(model)
    return {"latent_format": type(lf).__name__, "latent_channels": int(getattr(lf, "latent_channels", 4)),
            "model_sampling": sampling_name(ms), "noise_kind": noise_kind(ms)}


def check_guard(guard, model) -> dict:
    """Raise HostMismatch with a clear message unless ``guard`` was trained for this MODEL's latents."""
    ms = model_sampling(model)
    lf = latent_format(model)
    lf_name = type(lf).__name__
    channels = int(getattr(lf, "latent_channels", guard.latent_channels))
    why = latent_mismatch(guard, lf_name, channels)
    if why:
        raise HostMismatch(why)
    kind = noise_kind(ms)  # after the latent checks: it raises for a sampling CPSample does not support
    why = noise_mismatch(guard, kind, sampling_name(ms))
    if why:
        raise HostMismatch(why)
    return {"latent_format": lf_name, "model_sampling": sampling_name(ms), "noise_kind": kind}


def family(model) -> ModelFamily:
    """The MODEL's family in the names guard files record (usecases.model)."""
    d = describe(model)
    return ModelFamily(d["latent_format"], d["latent_channels"], d["model_sampling"], d["noise_kind"])


def vae_downscale(vae) -> int:
    """Pixels per latent cell of a VAE (8 for SD); images are cropped to a multiple of it."""
    try:
        r = vae.spacial_compression_encode()
    except AttributeError:
        r = getattr(vae, "downscale_ratio", 8)
    if isinstance(r, (tuple, list)):
        r = r[-1]
    try:
        return max(1, int(r))
    except (TypeError, ValueError):
        return 8


def version() -> str:
    """e.g. 'ComfyUI 0.3.75' (recorded in a guard's metadata)."""
    try:
        import comfyui_version

        return f"ComfyUI {comfyui_version.__version__}"
    except Exception:  # noqa: BLE001
        return "ComfyUI"
