"""One guard, both worlds: a guard trained in a real ComfyUI protects in a real Forge, and one trained
in Forge protects in ComfyUI, as the same file with the same metadata and the same noise space.

Both hosts run SD1.5-family checkpoints (ComfyUI the project's tiny SD1.5-shaped one, Forge the
full-size random one), so the guards describe the same family: latent format SD15, sampling
ModelSamplingDiscrete+EPS, the same σ range. ComfyUI runs in this module only (a second server
next to the session's Forge).
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cpsample_nodes.core import load_guard, read_metadata

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import comfyui_harness as H  # noqa: E402

pytestmark = [pytest.mark.forge, pytest.mark.integration]


@pytest.fixture(scope="module")
def comfy(comfy_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("comfyui_both")
    layout = H.make_layout(root, Path(comfy_env["checkpoint"]), demo_only=True)
    server = H.ComfyServer(layout, comfy_env["python"], comfy_env["comfyui"], threads=1)
    server.start(timeout=240)
    yield server, layout
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def _comfy_run(server, prompt: dict) -> dict:
    entry = server.run(prompt, timeout=400)
    assert entry["status"]["status_str"] == "success", H.history_error(entry)
    return entry


def _comfy_sample(server, layout, prefix: str, guard: str | None) -> torch.Tensor:
    ckpt = layout["checkpoint"]
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red house"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                         "seed": 3, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"latents/{prefix}"}},
    }
    if guard is not None:
        p["10"] = {"class_type": "CPSampleLoadGuard", "inputs": {"guard_name": guard}}
        p["11"] = {"class_type": "CPSampleProtectModel",
                   "inputs": {"model": ["1", 0], "guard": ["10", 0], "scale": 1000.0, "alpha": 0.5,
                              "start_percent": 0.0, "end_percent": 1.0, "objective": "uncertainty",
                              "guard_input": "denoised"}}
        p["6"]["inputs"]["model"] = ["11", 0]
    _comfy_run(server, p)
    files = sorted((Path(layout["output"]) / "latents").glob(f"{prefix}_*.latent"))
    assert files, f"ComfyUI saved no latent for {prefix}"
    return load_file(str(files[-1]))["latent_tensor"]


def _forge_pixels(forge, payload: dict, args: list | None = None) -> np.ndarray:
    if args is not None:
        payload = {**payload, "alwayson_scripts": {"CPSample": {"args": args}}}
    body = forge.txt2img(payload)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"))


def _family(path: Path) -> dict:
    meta = read_metadata(path)
    info = json.loads(meta["info"])
    return {"latent_channels": meta["latent_channels"], "latent_format": info.get("latent_format"),
            "model_sampling": info.get("model_sampling"), "noise_space": json.loads(meta["noise_space"])}


def test_one_guard_both_worlds(forge, comfy, small_txt2img, train_demo_guard):
    server, layout = comfy
    # a guard trained in ComfyUI (Train Guard -> Save Guard) ...
    _comfy_run(server, {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": layout["checkpoint"]}},
        "2": {"class_type": "CPSampleTrainGuard",
              "inputs": {"model": ["1", 0], "vae": ["1", 2], "folder": "cpsample_demo", "seed": 0, "max_steps": 12,
                         "batch_size": 8, "resolution_policy": "resize", "resolution": 0}},
        "3": {"class_type": "CPSampleSaveGuard", "inputs": {"guard": ["2", 0], "filename": "from_comfy",
                                                            "overwrite": True}},
    })
    from_comfy = Path(layout["guards"]) / "from_comfy.safetensors"
    assert from_comfy.is_file()
    # ... and one trained in Forge (the extension's route)
    from_forge = Path(train_demo_guard("from_forge", max_steps=12)["path"])

    # the same kind of file: family, sampling and noise space agree
    fc, ff = _family(from_comfy), _family(from_forge)
    assert fc["latent_format"] == ff["latent_format"] == "SD15"
    assert fc["model_sampling"] == ff["model_sampling"] == "ModelSamplingDiscrete+EPS"
    assert fc["latent_channels"] == ff["latent_channels"] == "4"
    assert fc["noise_space"]["kind"] == ff["noise_space"]["kind"] == "vp"
    for end in ("sigma_min", "sigma_max"):
        assert fc["noise_space"][end] == pytest.approx(ff["noise_space"][end], rel=1e-5), (fc, ff)
    assert load_guard(from_comfy).info["host"].startswith("ComfyUI")
    assert load_guard(from_forge).info["host"].startswith("Forge")

    # ComfyUI's guard protects in Forge
    shutil.copy(from_comfy, forge.models_dir / "cpsample" / "from_comfy.safetensors")
    payload = small_txt2img()
    plain = _forge_pixels(forge, payload)
    guarded = _forge_pixels(forge, payload, [True, "from_comfy.safetensors", 5000.0, 0.5])
    assert not np.array_equal(plain, guarded), "the ComfyUI guard changed nothing in Forge"

    # Forge's guard protects in ComfyUI
    shutil.copy(from_forge, Path(layout["guards"]) / "from_forge.safetensors")
    plain_c = _comfy_sample(server, layout, "plain", None)
    guarded_c = _comfy_sample(server, layout, "guarded", "from_forge.safetensors")
    assert torch.isfinite(guarded_c).all()
    assert not torch.equal(plain_c, guarded_c), "the Forge guard changed nothing in ComfyUI"
