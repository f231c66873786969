"""Calibrate a guard from its training folder with a host's own sampler.

The host hands in its probe sampler (``make_sampler(width, height)`` → the core's ``sample(guide,
seeds)``: the user's model, prompt and sampler), the model's VAE encode and decode and its noise
space; here the training folder is loaded as the guard was trained, the core's ``calibrate`` runs, and
the report and the evidence picture are made. The result carries a new guard with the calibration;
the input guard stays as it was (ComfyUI caches it, the webui's file cache holds it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..core import CalibrationStopped, Guard, NoiseSpace, calibrate, dataset_digest, evidence
from ..core import images as imgs
from ..core.calibration import SampleFn

Encode = Callable[[torch.Tensor], torch.Tensor]  # IMAGE [N, H, W, 3] → the model's sampling latents
Decode = Callable[[torch.Tensor], torch.Tensor]  # latents → IMAGE [N, H, W, 3] in [0, 1]
Progress = Callable[[int, int, str], None]  # (probe images done, total, a line for people)


@dataclass(frozen=True)
class CalibratedGuard:
    guard: Guard  # the input guard's network and space, its info carrying the calibration
    report: str
    summary: str  # one line: "calibrated: ..."
    picture: torch.Tensor  # IMAGE [1, H, W, 3]: copy rate per setting, then the seeds that copied
    images: int  # training images the calibration compared against
    size: tuple[int, int]  # probe (width, height) in pixels


def progress_text(done: int, stats: dict) -> str:
    return f"calibrating ({stats.get('setting')}): {done} probe images sampled, {stats.get('model_calls')} model calls"


def calibrate_from_folder(guard: Guard, folder: Path, *, make_sampler: Callable[[int, int], SampleFn],
                          encode: Encode, decode: Decode, space: NoiseSpace, seed: int = 0, probes: int = 32,
                          width: int = 0, height: int = 0, multiple: int = 8, header: str = "CPSample calibration",
                          source: str | None = None, footer: str = "",
                          progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                          device: str | torch.device | None = None) -> CalibratedGuard:
    """Calibrate ``guard`` on the host's model. ``header``/``footer`` frame the report (the header goes on
    ": N training images from <source> at WxH px"; ``source``: the folder as the user named it).
    CalibrationStopped when ``should_stop`` ended it (nothing is returned then)."""
    batch, names, at_guard_size = imgs.calibration_images(guard.info, folder, multiple, width, height)
    latents = encode(batch).to("cpu", torch.float32)  # the space the guard was trained in
    if latents.shape[1] != guard.latent_channels:
        raise ValueError(f"the VAE makes {latents.shape[1]}-channel latents but the guard takes "
                         f"{guard.latent_channels}: use the VAE the guard was trained with")
    same_set = at_guard_size and guard.info.get("dataset_digest") == dataset_digest(latents)
    h, w = int(batch.shape[1]), int(batch.shape[2])
    sample = make_sampler(w, h)
    description = getattr(sample, "description", None) or ""

    def report_progress(done: int, total: int, stats: dict) -> None:
        if progress is not None:  # total counts every setting; calibration usually stops well before it
            progress(done, total, progress_text(done, stats))

    g = guard.with_space(space)  # a new Guard with its own info dict
    if device is not None:
        with torch.inference_mode(False):  # parameters moved in inference mode could not be differentiated
            g.net.to(device)
    # not inside inference_mode(False): the host's VAE (ComfyUI runs nodes in inference mode) must not be
    # tracked by autograd; Guard.guide leaves inference mode for the guard alone
    cal = calibrate(g, sample, latents, seeds=range(seed, seed + probes), decode=decode,
                    progress=report_progress, should_stop=should_stop, sampler_description=description or None)
    if should_stop is not None and should_stop():
        raise CalibrationStopped("calibration stopped before the guard was saved")
    text, copies = evidence.report(cal, latents, names, same_set=same_set, footer=footer,
                                   header=f"{header}: {batch.shape[0]} training images from {source or folder} at {w}x{h} px")
    picture = evidence.evidence_picture(cal, copies, decode, batch, names, description)
    return CalibratedGuard(g.with_space(guard.space), text, evidence.calibration_summary(cal), picture,
                           int(batch.shape[0]), (w, h))
