"""Helpers shared by the Forge tests whose guards cross to a real ComfyUI and back (test_webui_both_worlds.py,
test_families_forge.py): a ComfyUI server beside the session's Forge, its prompts and sampled latents with or
without a guard, Forge's txt2img pixels, and the model family a guard file names. conftest.py puts this folder
on sys.path.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cpsample_nodes.core import read_metadata

import comfyui_harness as H


@contextlib.contextmanager
def comfy_server(comfy_env: dict, root: Path, prepare: Callable[[dict], None] | None = None) -> Iterator[tuple]:
    """A ComfyUI (one thread) on its own layout under `root` with the demo pictures; `prepare(layout)` runs
    before it starts. Yields (server, layout); stops it and removes `root` after."""
    layout = H.make_layout(root, Path(comfy_env["checkpoint"]), demo_only=True)
    if prepare is not None:
        prepare(layout)
    server = H.ComfyServer(layout, comfy_env["python"], comfy_env["comfyui"], threads=1)
    server.start(timeout=240)
    try:
        yield server, layout
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def comfy_run(server, prompt: dict, timeout: float = 600) -> dict:
    entry = server.run(prompt, timeout=timeout)
    assert entry["status"]["status_str"] == "success", H.history_error(entry)
    return entry


def comfy_sample(server, layout, graph: dict, model: list, positive: list, negative: list, prefix: str,
                 guard: str | None, scale: float = 1000.0, batch: int = 1) -> torch.Tensor:
    """`graph` (the loaders and conditioning) + a KSampler (Euler, normal, 4 steps, CFG 5, seed 3, 64×64,
    `batch` latents) on `model`, protected by the guard file `guard` (manual settings: `scale`, α 0.5,
    the whole σ range) unless None; returns the sampled latents."""
    p = dict(graph)
    if guard is not None:
        p["10"] = {"class_type": "CPSampleLoadGuard", "inputs": {"guard_name": guard}}
        p["11"] = {"class_type": "CPSampleProtectModel",
                   "inputs": {"model": model, "guard": ["10", 0], "scale": scale, "alpha": 0.5, "start_percent": 0.0,
                              "end_percent": 1.0, "objective": "uncertainty", "guard_input": "denoised",
                              "settings": "manual"}}
        model = ["11", 0]
    p["12"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}}
    p["13"] = {"class_type": "KSampler",
               "inputs": {"model": model, "positive": positive, "negative": negative, "latent_image": ["12", 0],
                          "seed": 3, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                          "denoise": 1.0}}
    p["14"] = {"class_type": "SaveLatent", "inputs": {"samples": ["13", 0], "filename_prefix": f"latents/{prefix}"}}
    comfy_run(server, p)
    files = sorted((Path(layout["output"]) / "latents").glob(f"{prefix}_*.latent"))
    assert files, f"ComfyUI saved no latent for {prefix}"
    return load_file(str(files[-1]))["latent_tensor"]


def forge_txt2img(forge, payload: dict, args: list | None = None) -> tuple[np.ndarray, dict]:
    """Forge's txt2img through its API, with CPSample's accordion `args` when given: (RGB pixels, its info)."""
    if args is not None:
        payload = {**payload, "alwayson_scripts": {"CPSample": {"args": args}}}
    body = forge.txt2img(payload)
    return png_pixels(body["images"][0]), json.loads(body["info"])


def png_pixels(b64: str) -> np.ndarray:
    """A base64 PNG as the API returns it (a data: prefix allowed) → RGB pixels [H, W, 3]."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1]))).convert("RGB"))


def forge_pixels(forge, payload: dict, args: list | None = None) -> np.ndarray:
    return forge_txt2img(forge, payload, args)[0]


def guard_family(path: Path) -> dict:
    """What a guard file says about the model it was trained on."""
    meta = read_metadata(path)
    info = json.loads(meta["info"])
    return {"latent_channels": meta["latent_channels"], "latent_format": info.get("latent_format"),
            "model_sampling": info.get("model_sampling"), "noise_space": json.loads(meta["noise_space"])}


def assert_same_family(a: Path, b: Path, latent_format: str, model_sampling: str, rel: float = 1e-5) -> dict:
    """Two guard files name the same family: latent format and channels, sampling, noise kind and σ range
    (its ends within `rel`). Returns the first one's noise space."""
    fa, fb = guard_family(a), guard_family(b)
    assert fa["latent_format"] == fb["latent_format"] == latent_format, (fa, fb)
    assert fa["latent_channels"] == fb["latent_channels"] == "4", (fa, fb)
    assert fa["model_sampling"] == fb["model_sampling"] == model_sampling, (fa, fb)
    assert fa["noise_space"]["kind"] == fb["noise_space"]["kind"] == "vp", (fa, fb)
    for end in ("sigma_min", "sigma_max"):
        assert fa["noise_space"][end] == pytest.approx(fb["noise_space"][end], rel=rel), (fa, fb)
    return fa["noise_space"]
