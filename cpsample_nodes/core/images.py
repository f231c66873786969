"""Loading a folder of training images for a guard (pure torch + Pillow, no host imports).

Images come back as ComfyUI-style IMAGE tensors: float32 [N, H, W, 3] in [0, 1]. Every file is
EXIF-transposed and converted to RGB; a folder of mixed sizes is brought to one size by a policy:

* ``resize``: resize each image so its short side is ``size`` (default: the smallest short side in
  the folder), then centre-crop to ``size`` × ``size`` rounded down to a multiple of ``multiple``
  (the VAE's downscale factor).
* ``crop``: no resampling; centre-crop every image to the largest common height × width (the smallest
  height and width in the folder, rounded down to the multiple).
* ``exact``: all images must already have one size (rounded down to the multiple); a mismatch is an
  error naming the file.
* ``bucket``: no square crop; each image keeps its aspect, brought to the nearest of a few sizes of
  about ``size`` × ``size`` pixels (default: the square root of the smallest image's area), as LoRA
  trainers' aspect-ratio buckets (``buckets.py``). The result is one batch per size (``ImageGroup``).

A folder is read with its sub-folders (a LoRA trainer's dataset tree, kohya's ``10_name`` repeat
folders among them: each image is read once, whatever its folder's repeat count); files that are not
images (captions ``.txt``/``.caption``/``.json``, ``.npz`` caches) are skipped. Names are paths
relative to the folder.

Errors are ``ImageFolderError`` (a ValueError) and name the folder or file.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from . import buckets
from .training import dataset_digest

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
POLICIES = ("resize", "crop", "exact", "bucket")
MAX_SIDE = 4096


class ImageFolderError(ValueError):
    """A folder or image that cannot be used; the message names it."""


def _walk(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder`` (hidden files and folders such as .git skipped), sorted
    by path relative to it."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files if not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in ``folder`` and its sub-folders, sorted by relative path."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageFolderError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise ImageFolderError(f"{folder} is not a folder")
    files = _walk(folder)
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise ImageFolderError(f"image folder {folder} is empty (sub-folders included)")
    if not images:
        shown = [p.relative_to(folder).as_posix() for p in files[:5]]
        others = ", ".join(shown) + (f" … ({len(files)} files)" if len(files) > 5 else "")
        raise ImageFolderError(f"image folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}) in it or its "
                               f"sub-folders; it holds: {others}")
    return images


def image_names(folder: str | os.PathLike, files: Sequence[Path]) -> list[str]:
    """Each file's path relative to ``folder`` ("10_sks dog/a.png"): names that tell files apart."""
    return [Path(p).relative_to(folder).as_posix() for p in files]


REPEAT_FOLDER = re.compile(r"(\d+)_(.+)")  # kohya's "<repeats>_<name>" dataset folders


def repeat_folders(names: Sequence[str]) -> list[str]:
    """The kohya repeat folders ("10_sks dog") among these relative names: the report says each image
    in them is used once (a repeat count weights an epoch; the guard memorises every image anyway)."""
    found = {part for n in names for part in n.split("/")[:-1] if REPEAT_FOLDER.fullmatch(part)}
    return sorted(found)


def open_rgb(path: str | os.PathLike):
    """Open one image fully decoded, EXIF-transposed, as RGB; a clear error names a bad file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated or corrupt file fails here, not later
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise ImageFolderError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageFolderError(f"{path}: corrupt or truncated image ({e})") from None
    if min(rgb.size) < 1 or max(rgb.size) > MAX_SIDE * 4:
        raise ImageFolderError(f"{path}: unusable size {rgb.size[0]}x{rgb.size[1]}")
    return rgb


def _floor_multiple(v: int, multiple: int) -> int:
    return (int(v) // multiple) * multiple


def fit(img, height: int, width: int):
    """Resize ``img`` (PIL) to cover height × width keeping its aspect ratio, then centre-crop."""
    from PIL import Image

    w, h = img.size
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - width) // 2, (nh - height) // 2
    return img.crop((left, top, left + width, top + height))


def centre_crop(img, height: int, width: int):
    w, h = img.size
    left, top = (w - width) // 2, (h - height) // 2
    return img.crop((left, top, left + width, top + height))


def to_tensor(images: Sequence) -> torch.Tensor:
    """PIL RGB images of one size → float32 [N, H, W, 3] in [0, 1]."""
    arrs = [np.asarray(im, dtype=np.uint8) for im in images]
    return torch.from_numpy(np.stack(arrs)).float().div_(255.0)


def target_size(sizes: Iterable[tuple[int, int]], policy: str, size: int = 0, multiple: int = 8
                ) -> tuple[int, int]:
    """(height, width) that ``policy`` brings images of these (width, height) sizes to."""
    sizes = list(sizes)
    if policy not in POLICIES:
        raise ImageFolderError(f"unknown resolution policy {policy!r}; use one of {', '.join(POLICIES)}")
    if policy in ("resize", "bucket"):  # bucket brought to one size (class images, probes): a square
        side = int(size) if size else min(min(w, h) for w, h in sizes)
        side = min(side, MAX_SIDE)
        side = _floor_multiple(side, multiple)
        if side < multiple:
            raise ImageFolderError(f"resolution {size or side} is below the VAE's multiple of {multiple}")
        return side, side
    h = _floor_multiple(min(hh for _, hh in sizes), multiple)
    w = _floor_multiple(min(ww for ww, _ in sizes), multiple)
    if h < multiple or w < multiple:
        raise ImageFolderError(f"images are smaller than the VAE's multiple of {multiple} pixels")
    return h, w


def load_image_folder(folder: str | os.PathLike, policy: str = "resize", size: int = 0, multiple: int = 8,
                      max_images: int = 0, hw: tuple[int, int] | None = None
                      ) -> tuple[torch.Tensor, list[str], tuple[int, int]]:
    """Load every image directly in ``folder`` → (IMAGE [N, H, W, 3], file names, (H, W) used);
    with ``hw`` every image is brought to that size instead of one chosen by ``policy``."""
    files = list_images(folder)
    if max_images and len(files) > max_images:
        raise ImageFolderError(f"image folder {folder} has {len(files)} images; the limit is {max_images}")
    names = image_names(folder, files)
    if policy == "bucket" and hw is None:
        raise ImageFolderError("policy 'bucket' gives one batch per size: use load_image_groups")
    batch, hw = conform([open_rgb(p) for p in files], policy, size, multiple, names=names, hw=hw)
    return batch, names, hw


@dataclass(frozen=True)
class ImageGroup:
    """Images of one size: IMAGE [N, H, W, 3] and their names."""
    batch: torch.Tensor
    names: list[str]

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.batch.shape[1]), int(self.batch.shape[2])


def load_image_groups(folder: str | os.PathLike, policy: str = "bucket", size: int = 0, multiple: int = 8,
                      max_images: int = 0) -> list[ImageGroup]:
    """Every image under ``folder`` as batches of one size each: one batch for resize/crop/exact, one
    per bucket for ``bucket``."""
    files = list_images(folder)
    if max_images and len(files) > max_images:
        raise ImageFolderError(f"image folder {folder} has {len(files)} images; the limit is {max_images}")
    return group_images([open_rgb(p) for p in files], image_names(folder, files), policy, size, multiple)


def group_images(imgs: Sequence, names: Sequence[str], policy: str = "bucket", size: int = 0, multiple: int = 8
                 ) -> list[ImageGroup]:
    """PIL images → batches of one size each (sorted by height, width), by ``policy``."""
    if not imgs:
        raise ImageFolderError("no images to load")
    if policy != "bucket":
        batch, _ = conform(imgs, policy, size, multiple, names=names)
        return [ImageGroup(batch, list(names))]
    side = buckets.bucket_side([im.size for im in imgs], size, multiple)
    table = buckets.bucket_sizes(side, multiple)
    members: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(imgs):
        members.setdefault(buckets.nearest_bucket(im.size, table), []).append(i)
    return [ImageGroup(to_tensor([fit(imgs[i], h, w) for i in idx]), [names[i] for i in idx])
            for (h, w), idx in sorted(members.items())]


def describe_groups(groups: Sequence[ImageGroup]) -> str:
    """"12 images: 8 at 832x1216, 4 at 1024x1024 px" (width x height, the most common size first)."""
    total = sum(len(g.names) for g in groups)
    if len(groups) == 1:
        return f"{total} images at {groups[0].hw[1]}x{groups[0].hw[0]} px"
    parts = [f"{len(g.names)} at {g.hw[1]}x{g.hw[0]}" for g in sorted(groups, key=lambda g: -len(g.names))]
    return f"{total} images in {len(groups)} sizes: {', '.join(parts)} px"


def conform(imgs: Sequence, policy: str = "resize", size: int = 0, multiple: int = 8,
            names: Sequence[str] | None = None, hw: tuple[int, int] | None = None
            ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Bring PIL images to one size by ``policy`` (or to ``hw`` when given) → (IMAGE, (H, W))."""
    if not imgs:
        raise ImageFolderError("no images to load")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(imgs))]
    if hw is None:
        hw = target_size([im.size for im in imgs], policy, size, multiple)
    h, w = hw
    out = []
    for im, name in zip(imgs, names):
        if policy == "exact":
            eh, ew = _floor_multiple(im.size[1], multiple), _floor_multiple(im.size[0], multiple)
            if (eh, ew) != (h, w):
                raise ImageFolderError(f"{name} is {im.size[0]}x{im.size[1]} but the others are {w}x{h} "
                                       f"(policy 'exact' needs one size; use 'resize' or 'crop')")
            out.append(centre_crop(im, h, w))
        elif policy == "crop" and im.size[0] >= w and im.size[1] >= h:
            out.append(centre_crop(im, h, w))
        else:
            out.append(fit(im, h, w))
    return to_tensor(out), (h, w)


def tensor_to_pil(images: torch.Tensor) -> list:
    """IMAGE [N, H, W, C] in [0, 1] → PIL RGB images."""
    from PIL import Image

    if images.dim() != 4:
        raise ImageFolderError(f"expected an IMAGE batch [N, H, W, C], got shape {tuple(images.shape)}")
    arr = (images[..., :3].detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return [Image.fromarray(a, "RGB") for a in arr]


def conform_tensor(images: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize + centre-crop an IMAGE batch to (H, W) (no-op when it already has that size)."""
    if tuple(images.shape[1:3]) == tuple(hw):
        return images[..., :3].float()
    return conform(tensor_to_pil(images), hw=hw)[0]


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """Cheap change detector for a folder and its sub-folders: paths, sizes and mtimes of its files
    (no content read)."""
    folder = Path(folder)
    h = hashlib.sha256(str(folder).encode())
    try:
        for p in _walk(folder):
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except OSError as e:
        h.update(repr(e).encode())
    return h.hexdigest()


def content_hash(images: torch.Tensor) -> str:
    """SHA-256 of an IMAGE batch's shape and values (the key of the latent cache); the same digest
    a guard file stores for its whole training set."""
    return dataset_digest(images)


def refuse_training_images_as_class(batch: torch.Tensor, names: list[str], class_batch: torch.Tensor) -> None:
    """A training image among the class images would teach the guard to be unsure of it: raise a
    ValueError naming it (images compared at 8 bits)."""
    def keys(x: torch.Tensor) -> list[bytes]:
        return [bytes((im * 255).round().to(torch.uint8).numpy()) for im in x.cpu()]

    train = {k: i for i, k in enumerate(keys(batch))}
    for j, k in enumerate(keys(class_batch)):
        if k in train:
            raise ValueError(f"class image #{j} is the training image {names[train[k]]}: class images must be other "
                             f"pictures of the same kind, not the ones the guard protects")


def trained_size(info: dict | None) -> tuple[int, int] | None:
    """(H, W) of a guard's training images as Train Guard recorded it ("WxH"), or None."""
    m = re.fullmatch(r"(\d+)x(\d+)", str((info or {}).get("image_size", "")))
    return (int(m.group(2)), int(m.group(1))) if m else None


def calibration_images(info: dict | None, folder: str | os.PathLike, multiple: int, width: int = 0,
                       height: int = 0) -> tuple[torch.Tensor, list[str], bool]:
    """A guard's training folder as Train Guard loaded it (the guard's resolution policy and size), or
    brought to width x height when the probes are sampled at another size (scaled and centre-cropped, as
    Replication Check does). → (IMAGE, names, loaded at the guard's own size)."""
    if (width == 0) != (height == 0):
        raise ValueError(f"width {width} and height {height}: set both, or both to 0 for the training images' size")
    if width % multiple or height % multiple:
        raise ValueError(f"width {width} and height {height} must be multiples of the VAE's {multiple} pixels")
    trained = trained_size(info)
    want = (height, width) if width else trained
    policy = str((info or {}).get("resolution_policy", "resize"))
    # a bucketed guard's images are brought to its most common bucket (one size: probes are sampled at one)
    if policy not in ("resize", "crop", "exact") or (trained is not None and want != trained):
        policy = "resize"
    batch, names, hw = load_image_folder(folder, policy=policy, multiple=multiple, hw=want)
    if batch.shape[0] < 2:
        raise ValueError(f"folder {str(folder)!r} has {batch.shape[0]} image: a copy is measured against at least 2")
    return batch, names, trained is not None and hw == trained
