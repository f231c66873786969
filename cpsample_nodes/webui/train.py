"""Training a guard from a folder of images on the webui's current model, saved under models/cpsample/.

It feeds ``train_guard`` exactly what ComfyUI's Train Guard node feeds it (images brought to one size
by the same policy, encoded by the model's own VAE into the latents the sampler works in, the model's
own noise schedule, the same metadata), so a guard trained here and one trained in ComfyUI on the
same model and images are the same kind of file. The host hands in the encoder and the model's
noise space; everything else is here.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..core import NoiseSpace, TrainingStopped, save_guard, train_guard
from ..core import images as imgs
from ..core.images import refuse_training_images_as_class
from ..core.network import DEFAULT_HEADS
from ..core.training import DEFAULT_NEGATIVES, MAX_HEADS, outcome_text, progress_text
from .family import ModelFamily
from .guards import new_path
from .request import typed_fields

DEFAULT_MAX_STEPS = int(inspect.signature(train_guard).parameters["max_steps"].default)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class TrainRequest:
    folder: str
    name: str = "guard"
    class_folder: str = ""
    seed: int = 0
    max_steps: int = DEFAULT_MAX_STEPS
    batch_size: int = 32
    resolution_policy: str = "resize"
    resolution: int = 0
    overwrite: bool = False
    heads: int = DEFAULT_HEADS

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainRequest":
        """From the tab or a JSON body; a clear error names a missing, unknown or mistyped field."""
        kw = typed_fields(cls, values)
        if not kw.get("folder"):
            raise ValueError("no training images: give the folder that holds them")
        req = cls(**kw)
        if req.max_steps < 1 or req.batch_size < 1 or req.seed < 0 or req.resolution < 0:
            raise ValueError(f"max_steps and batch_size must be at least 1, seed and resolution at least 0; got "
                             f"max_steps {req.max_steps}, batch_size {req.batch_size}, seed {req.seed}, "
                             f"resolution {req.resolution}")
        if not 1 <= req.heads <= MAX_HEADS:
            raise ValueError(f"heads must lie between 1 and {MAX_HEADS}, got {req.heads}")
        if req.resolution_policy not in imgs.POLICIES:
            raise ValueError(f"resolution_policy must be one of {', '.join(imgs.POLICIES)}, "
                             f"got {req.resolution_policy!r}")
        return req

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def folder_path(folder: str) -> Path:
    """A folder as the user typed it (absolute, ~, or relative to the webui's working directory)."""
    return Path(os.path.expanduser(folder.strip())).resolve()


def train(req: TrainRequest, *, encode: Callable[[torch.Tensor], torch.Tensor], family: ModelFamily,
          space: NoiseSpace, out_folder: str | os.PathLike, host: str, multiple: int = 8,
          device: str | torch.device | None = None, progress: Progress | None = None,
          should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train and save a guard. ``encode`` turns IMAGE batches [N, H, W, 3] in [0, 1] into the model's
    sampling latents. Returns {"path", "name", "report", "info"}; raises ValueError for bad input and
    TrainingStopped when ``should_stop`` ended it (nothing is written then)."""
    out_folder = Path(out_folder)
    target = new_path(out_folder, req.name, req.overwrite)  # a bad name fails before any work
    batch, names, hw = imgs.load_image_folder(folder_path(req.folder), policy=req.resolution_policy,
                                              size=req.resolution, multiple=multiple)
    if batch.shape[0] < 2:
        raise ValueError(f"a guard needs at least 2 training images, got {batch.shape[0]} in {req.folder}")
    class_batch = None
    if req.class_folder:
        class_batch = imgs.load_image_folder(folder_path(req.class_folder), hw=hw)[0]
        refuse_training_images_as_class(batch, names, class_batch)

    latents = encode(batch).to("cpu", torch.float32)
    if latents.shape[1] != family.latent_channels:
        raise ValueError(f"the VAE makes {latents.shape[1]}-channel latents but the model's latent format "
                         f"{family.latent_format} has {family.latent_channels}: use this model's VAE")
    negatives: str | torch.Tensor = DEFAULT_NEGATIVES
    if class_batch is not None:
        negatives = encode(class_batch).to("cpu", torch.float32)

    def report_progress(step: int, total: int, stats: dict) -> None:
        if progress is None:
            return
        progress(step, total, progress_text(step, total, stats))

    info = {**family.info(), "host": host, "image_size": f"{hw[1]}x{hw[0]}",
            "resolution_policy": req.resolution_policy}
    if class_batch is not None:
        info["class_images"] = int(class_batch.shape[0])
    with torch.inference_mode(False):
        guard = train_guard(latents, space=space, seed=req.seed, progress=report_progress, should_stop=should_stop,
                            max_steps=req.max_steps, batch_size=req.batch_size, info=info, negatives=negatives,
                            heads=req.heads, device=device)
    guard = guard.with_space(space.builtin())  # no references to this model's objects
    guard.info = dict(guard.info)
    if should_stop is not None and should_stop():
        raise TrainingStopped("guard training stopped before the guard was saved")
    save_guard(guard, target)
    report = (f"CPSample guard {target.name}: {batch.shape[0]} images at {hw[1]}x{hw[0]} px "
              f"(policy {req.resolution_policy}, multiple of {multiple}), latents {tuple(latents.shape[1:])}; "
              f"{f'{class_batch.shape[0]} class images as negatives; ' if class_batch is not None else ''}"
              f"{family.latent_format}, {family.model_sampling} ({space.kind}); "
              f"{outcome_text(guard.info)}")
    return {"path": str(target), "name": target.relative_to(out_folder).as_posix(), "report": report,
            "info": guard.info}
