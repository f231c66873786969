"""Guard files: safetensors weights plus JSON metadata, written atomically.

No per-image hash or name is stored: with one, anyone holding the file could test whether a
given picture was in the training set. (The guard itself still reveals membership to whoever
holds it, since it is confident on its training images.)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .guard import Guard
from .network import GuardConfig, GuardNet
from .noise import KINDS, NoiseSpace

FORMAT = "cpsample.guard"
FORMAT_VERSION = 1


class GuardFileError(ValueError):
    """A guard file that cannot be used; the message says which file and why."""


def save_guard(guard: Guard, path: str | os.PathLike) -> Path:
    """Write ``guard`` to ``path`` (temporary file in the same folder, then rename)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone()
               for k, v in guard.net.state_dict().items()}
    info = dict(guard.info)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(guard.config.to_dict()),
        "latent_channels": str(guard.latent_channels),
        "noise_space": json.dumps(guard.space.describe()),
        "label_seed": str(info.get("label_seed", "")),
        "n_images": str(info.get("n_images", "")),
        "dataset_digest": str(info.get("dataset_digest", "")),
        "accuracy": json.dumps(info.get("accuracy", {})),
        "created": str(info.get("created", "")),
        "info": json.dumps(info, default=str),
    }
    if info.get("calibration") is not None:  # readable without loading the weights (read_metadata)
        meta["calibration"] = json.dumps(info["calibration"], default=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        # mkstemp makes the file owner-only; a saved guard gets the permissions of any new file
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (a host's other threads
    may be creating files meanwhile)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fail(path: Path, why: str) -> GuardFileError:
    return GuardFileError(f"{path}: {why}")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a guard file, without loading weights."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _fail(path, f"not a safetensors file ({e})") from None


def load_guard(path: str | os.PathLike, device: str | torch.device = "cpu") -> Guard:
    """Load a guard written by ``save_guard``; raises ``GuardFileError`` saying what is wrong."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise _fail(path, f"not a CPSample guard (metadata format is {meta.get('format')!r})")
    try:
        version = int(meta["format_version"])
        config = GuardConfig.from_dict(json.loads(meta["config"]))
        space_d = json.loads(meta["noise_space"])
        info: dict[str, Any] = json.loads(meta.get("info") or "{}")
        accuracy = json.loads(meta.get("accuracy") or "{}")
        channels = int(meta["latent_channels"])
    except (KeyError, ValueError, TypeError) as e:
        raise _fail(path, f"guard metadata does not parse ({type(e).__name__}: {e})") from None
    if version > FORMAT_VERSION:
        raise _fail(path, f"format version {version} is newer than this CPSample reads "
                          f"({FORMAT_VERSION}); update CPSample")
    if version < 1:
        raise _fail(path, f"unknown format version {version}")
    if channels != config.in_channels:
        raise _fail(path, f"metadata says {channels} latent channels but the network takes {config.in_channels}")
    if space_d.get("kind") not in KINDS:
        raise _fail(path, f"unknown noise space {space_d.get('kind')!r}")
    try:
        space = NoiseSpace(space_d["kind"], float(space_d["sigma_min"]), float(space_d["sigma_max"]),
                           str(space_d.get("name", "")))
        with torch.inference_mode(False):
            net = GuardNet(config)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise _fail(path, f"guard metadata describes an invalid guard ({e})") from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise _fail(path, f"weights do not read ({e})") from None
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise _fail(path, f"missing tensors: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    if unexpected:
        raise _fail(path, f"unexpected tensors: {', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise _fail(path, f"tensor {k} has shape {tuple(tensors[k].shape)}, expected {tuple(v.shape)}")
        if not torch.isfinite(tensors[k]).all():
            raise _fail(path, f"tensor {k} holds NaN or infinite values")
    with torch.inference_mode(False):
        net.load_state_dict({k: t.float().clone() for k, t in tensors.items()})
        net.to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
    info["accuracy"] = accuracy
    return Guard(net, space, info)
