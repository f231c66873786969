"""Train a guard from images: a folder and/or image tensors → the model's latents → ``train_guard``.

Both hosts feed ``train_guard`` the same way (images brought to one size by one policy, or to a few
aspect buckets with a batch per size, encoded by
the model's own VAE into the latents the sampler works in, the model's own noise schedule, the same
metadata), so a guard trained in ComfyUI and one trained in the webui on the same model and images
are the same kind of file. The host hands in its encode function, the model's family and noise space.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..core import Guard, NoiseSpace, TrainingStopped, train_guard
from ..core import images as imgs
from ..core.training import DEFAULT_NEGATIVES, outcome_text
from .model import ModelFamily

Encode = Callable[[torch.Tensor], torch.Tensor]  # IMAGE [N, H, W, 3] in [0, 1] → the model's sampling latents
TrainProgress = Callable[[int, int, dict], None]  # (step, total, the core's stats)


@dataclass(frozen=True)
class TrainingImages:
    groups: list[imgs.ImageGroup]  # one per size (several only for the 'bucket' policy)
    policy: str
    multiple: int
    note: str = ""  # a word on how the folder was read (kohya repeat folders)

    @property
    def names(self) -> list[str]:
        return [n for g in self.groups for n in g.names]

    @property
    def count(self) -> int:
        return sum(len(g.names) for g in self.groups)

    @property
    def hw(self) -> tuple[int, int]:
        """The most common size (the first of equals): what class images and calibration are brought to."""
        return max(self.groups, key=lambda g: len(g.names)).hw

    def describe(self) -> str:
        return imgs.describe_groups(self.groups)


def training_images(folder: Path | None, policy: str = "resize", size: int = 0, multiple: int = 8,
                    extra: torch.Tensor | None = None, extra_name: str = "images input") -> TrainingImages:
    """The images of ``folder`` (sub-folders included) and/or the IMAGE tensor ``extra``: brought to one
    size (``extra`` to the folder's), or for ``bucket`` each to its aspect bucket, one group per size.
    ValueError unless there are at least two."""
    if policy not in imgs.POLICIES:
        raise ValueError(f"unknown resolution policy {policy!r}; use one of {', '.join(imgs.POLICIES)}")
    pils, names = [], []
    if folder is not None:
        files = imgs.list_images(folder)
        pils, names = [imgs.open_rgb(p) for p in files], imgs.image_names(folder, files)
    if extra is not None:
        names = names + [f"{extra_name} #{i}" for i in range(extra.shape[0])]
        if policy == "bucket" or folder is None:
            pils = pils + imgs.tensor_to_pil(extra)
    if not names:
        raise ValueError("no training images: choose an image folder or connect the images input")
    if len(names) < 2:
        where = f" in {folder}" if folder is not None else ""
        raise ValueError(f"a guard needs at least 2 training images, got {len(names)}{where}")
    if policy != "bucket" and folder is not None and extra is not None:  # the extra images to the folder's size
        batch, hw = imgs.conform(pils, policy, size, multiple, names=names[:len(pils)])
        batch = torch.cat([batch, imgs.conform_tensor(extra, hw).to(batch)])
        groups = [imgs.ImageGroup(batch, names)]
    else:
        groups = imgs.group_images(pils, names, policy, size, multiple)
    repeats = imgs.repeat_folders(names)
    note = (f"; kohya repeat folders {', '.join(repeats)}: each image used once" if repeats else "")
    return TrainingImages(groups, policy, multiple, note)


def class_images(training: TrainingImages, folder: Path | None = None,
                 extra: torch.Tensor | None = None) -> torch.Tensor | None:
    """Class images (the same kind of picture, none of the training ones) at the training set's most
    common size, or None. A training image among them is refused by name: it would be learnt as "not a
    training image"."""
    parts = []
    if folder is not None:
        parts.append(imgs.load_image_folder(folder, hw=training.hw)[0])
    if extra is not None:
        parts.append(imgs.conform_tensor(extra, training.hw))
    if not parts:
        return None
    batch = torch.cat(parts)
    for group in training.groups:
        if group.hw == training.hw:
            imgs.refuse_training_images_as_class(group.batch, group.names, batch)
    return batch


@dataclass(frozen=True)
class TrainedGuard:
    guard: Guard  # in the built-in noise space: the file holds no reference to the host's model
    report: str  # one paragraph for the node / tab: images, latents, model, outcome


def train_from_images(images: TrainingImages, *, encode: Encode, family: ModelFamily, space: NoiseSpace,
                      host: str, seed: int = 0, max_steps: int | None = None, batch_size: int = 32,
                      heads: int | None = None, classes: torch.Tensor | None = None,
                      progress: TrainProgress | None = None, should_stop: Callable[[], bool] | None = None,
                      device: str | torch.device | None = None,
                      latents_note: Callable[[], str] | None = None) -> TrainedGuard:
    """Encode the images (and class images), train the guard, and say what happened. ``latents_note()``,
    asked after encoding: a word on where the latents came from ("from cache"). TrainingStopped when
    ``should_stop`` ended it."""
    groups = [encode(g.batch).to("cpu", torch.float32) for g in images.groups]  # a batch per size
    latents = groups[0] if len(groups) == 1 else groups
    note = f" {latents_note()}" if latents_note is not None else ""
    if groups[0].shape[1] != family.latent_channels:
        raise ValueError(f"the VAE makes {groups[0].shape[1]}-channel latents but the model's latent format "
                         f"{family.latent_format} has {family.latent_channels}: use this model's VAE")
    negatives: str | torch.Tensor = DEFAULT_NEGATIVES
    if classes is not None:
        negatives = encode(classes).to("cpu", torch.float32)
    h, w = images.hw
    info: dict[str, Any] = {**family.info(), "host": host, "image_size": f"{w}x{h}",
                            "resolution_policy": images.policy}
    if len(groups) > 1:  # "image_size" is the most common one (calibration samples at it)
        info["image_sizes"] = {f"{g.hw[1]}x{g.hw[0]}": len(g.names) for g in images.groups}
    if classes is not None:
        info["class_images"] = int(classes.shape[0])
    options: dict[str, Any] = {"batch_size": batch_size, "device": device}
    if max_steps is not None:
        options["max_steps"] = max_steps
    if heads is not None:
        options["heads"] = int(heads)
    with torch.inference_mode(False):
        guard = train_guard(latents, space=space, seed=seed, progress=progress, should_stop=should_stop, info=info,
                            negatives=negatives, **options)
    if should_stop is not None and should_stop():
        raise TrainingStopped("guard training stopped before the guard was saved")
    guard = guard.with_space(space.builtin())  # no references to this model's objects
    guard.info = dict(guard.info)
    shapes = ", ".join(str(tuple(x.shape[1:])) for x in groups)
    report = (f"{images.describe()} (policy {images.policy}, multiple of {images.multiple}{images.note}), "
              f"latents {shapes}{note}; "
              f"{f'{classes.shape[0]} class images as negatives; ' if classes is not None else ''}"
              f"{family.latent_format}, {family.model_sampling} ({space.kind}); {outcome_text(guard.info)}")
    return TrainedGuard(guard, report)
