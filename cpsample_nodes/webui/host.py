"""Everything CPSample takes from the running webui (AUTOMATIC1111 1.10 or Forge).

The webui's modules are imported inside the functions, so the rest of the glue imports and tests
without a webui. Where the two hosts differ, Forge is recognised by its model's ``forge_objects``
and A1111 is served by ``a1111.py``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..core import NoiseSpace
from . import a1111
from ..usecases.model import ModelFamily
from .family import forge_family, forge_noise_space, forge_sampling_predictor

GUARD_FOLDER = "cpsample"


def is_forge(sd_model) -> bool:
    return hasattr(sd_model, "forge_objects")


def guards_dir() -> Path:
    """models/cpsample/ of this webui (its --models-dir honoured)."""
    from modules import paths

    return Path(paths.models_path) / GUARD_FOLDER


def current_model():
    """The loaded checkpoint, loading it first where the host loads lazily (Forge)."""
    from modules import sd_models, shared

    reload = getattr(sd_models, "forge_model_reload", None)
    if reload is not None:
        return reload()[0]
    return shared.sd_model


def model_family(sd_model) -> ModelFamily:
    return forge_family(sd_model) if is_forge(sd_model) else a1111.family(sd_model)


def noise_space(sd_model) -> NoiseSpace:
    """The noise the model samples with (for training: the guard learns exactly this)."""
    if is_forge(sd_model):
        return forge_noise_space(forge_sampling_predictor(sd_model))
    fam = a1111.family(sd_model)
    return a1111.DiscreteSchedule(sd_model.alphas_cumprod).space(fam.model_sampling)


def encoder(sd_model, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """IMAGE [N, H, W, 3] in [0, 1] → the model's sampling latents, through the host's own img2img
    encoding (full VAE, never the TAESD preview; both hosts have images_tensor_to_samples)."""
    from modules import sd_samplers_common

    def encode(images: torch.Tensor) -> torch.Tensor:
        out = []
        # The VAE draws from its posterior: seed it, without disturbing the host's random state.
        with torch.random.fork_rng(), torch.inference_mode():
            torch.manual_seed(seed)
            for i in range(0, images.shape[0], 4):
                chunk = images[i:i + 4].permute(0, 3, 1, 2).contiguous()
                out.append(sd_samplers_common.images_tensor_to_samples(chunk, 0, sd_model).float().cpu())
        return torch.cat(out)

    return encode


def decoder(sd_model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's sampling latents → IMAGE [N, H, W, 3] in [0, 1], through the host's full VAE decode."""
    from modules import sd_samplers_common

    def decode(latents: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, latents.shape[0], 4):
                chunk = latents[i:i + 4].to(device())
                x = sd_samplers_common.samples_to_images_tensor(chunk, 0, sd_model)  # 0: the full VAE
                out.append(((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu())
        return torch.cat(out)

    return decode


def device() -> torch.device:
    from modules import devices

    return devices.device


def host_name(sd_model) -> str:
    try:
        from modules import launch_utils

        tag = launch_utils.git_tag()
    except Exception:  # noqa: BLE001 - a version string is cosmetic
        tag = ""
    return f"{'Forge' if is_forge(sd_model) else 'AUTOMATIC1111'} {tag}".strip()


@contextlib.contextmanager
def job(name: str, total: int, images: bool = False) -> Iterator[Callable[[int, int, str], None]]:
    """Run a long task the way the webui runs a generation: one at a time (the queue lock), with
    the progress bar and the Interrupt button (shared.state). Yields progress(step, total, text).
    ``total``: its steps; with ``images`` (the task generates images itself: calibration's probes) the
    images, counted as jobs, and the webui's sampler fills in the steps of each."""
    from modules import call_queue, shared

    with call_queue.queue_lock:
        shared.state.begin(job=name)
        shared.state.job_count = total if images else 1
        shared.state.sampling_steps = 0 if images else total
        try:
            def progress(step: int, total: int, text: str) -> None:
                if images:
                    shared.state.job_count, shared.state.job_no = total, step
                else:
                    shared.state.sampling_steps, shared.state.sampling_step = total, step
                shared.state.textinfo = text

            yield progress
        finally:
            shared.state.end()


def interrupted() -> bool:
    from modules import shared

    return bool(shared.state.interrupted)
