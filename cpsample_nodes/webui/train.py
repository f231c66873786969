"""Training a guard from a folder of images on the webui's current model, saved under models/cpsample/:
the tab's and the API's request, then ``usecases.training`` (as ComfyUI's Train Guard node)."""
from __future__ import annotations

import inspect
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..core import NoiseSpace, save_guard, train_guard
from ..core import images as imgs
from ..core.network import DEFAULT_HEADS
from ..core.training import MAX_HEADS, progress_text
from ..usecases import guard_files
from ..usecases.model import ModelFamily
from ..usecases.training import class_images, train_from_images, training_images
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
    resolution_policy: str = "bucket"
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
    target = guard_files.new_path(out_folder, req.name, req.overwrite)  # a bad name fails before any work
    images = training_images(folder_path(req.folder), req.resolution_policy, req.resolution, multiple)
    classes = class_images(images, folder_path(req.class_folder)) if req.class_folder else None

    def report_progress(step: int, total: int, stats: dict) -> None:
        if progress is not None:
            progress(step, total, progress_text(step, total, stats))

    trained = train_from_images(images, encode=encode, family=family, space=space, host=host, seed=req.seed,
                                max_steps=req.max_steps, batch_size=req.batch_size, heads=req.heads, classes=classes,
                                progress=report_progress, should_stop=should_stop, device=device)
    save_guard(trained.guard, target)
    return {"path": str(target), "name": target.relative_to(out_folder).as_posix(),
            "report": f"CPSample guard {target.name}: {trained.report}", "info": trained.guard.info}
