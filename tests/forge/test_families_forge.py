"""SDXL in a real Forge, and guards that cross between Forge and ComfyUI on SDXL.

Forge dfdcbab6 runs SDXL, SD3 and Flux, but only SDXL fits a test: huggingface_guess fixes Flux's depth at
19 double and 38 single blocks (the full 12 B DiT, whatever the file holds), and Forge's SD3 and Flux
engines both load a full T5-XXL (4.8 B parameters). The SDXL checkpoint here (tools/forge_family_checkpoint.py,
cached under .cache/forge/models/families/) has the smallest UNet Forge's detector takes for SDXL (50 M
parameters, the layout ComfyUI's family tests use) and full-size random CLIP-L, CLIP-G and VAE, which Forge
always builds at the SDXL repository's size.

Checked: Forge detects the file as SDXL and samples with it; the extension's Train and Calibrate routes
run on it and the guard names Forge, SDXL, ModelSamplingDiscrete+EPS; a guard trained in ComfyUI on its
SDXL-family copying model (tests/integration/test_models_pack) protects Forge's SDXL txt2img (the image
changes with the gate wide open; scale 0 is the same bytes); Forge's SDXL guard protects ComfyUI's SDXL
(the samples change, stay finite; scale 0 bit-identical), and both files describe the same noise space.
Forge's random VAE does not keep the pictures apart, so copies cut are measured on the ComfyUI side only
(tests/integration/test_families.py).
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
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
import family_models  # noqa: E402

pytestmark = [pytest.mark.forge, pytest.mark.integration]
CACHE = REPO / ".cache" / "forge" / "models" / "families"
CKPT = "cpsample-sdxl-eps.safetensors"


def _stamp() -> str:
    import hashlib
    h = hashlib.sha256()
    for f in ("forge_family_checkpoint.py", "forge_checkpoint.py"):
        h.update((REPO / "tools" / f).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def forge_sdxl(forge, forge_env):
    """Forge with the SDXL-family checkpoint loaded for this module; the SD1.5 one again afterwards."""
    out, stamp = CACHE / CKPT, CACHE / "stamp.txt"
    t0 = time.time()
    if not (out.exists() and stamp.exists() and stamp.read_text() == _stamp()):
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(forge_env["python"]), str(REPO / "tools" / "forge_family_checkpoint.py"), "--forge",
                        str(forge_env["forge_dir"]), "--out", str(out)], check=True, timeout=900, cwd=REPO / "tools",
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        stamp.write_text(_stamp())
    link = forge.data_dir / "models" / "Stable-diffusion" / CKPT
    if not link.exists():
        link.symlink_to(out)
    status, body = forge.post("/sdapi/v1/refresh-checkpoints", {})
    assert status == 200, body
    options = forge.get("/sdapi/v1/options")
    before = {k: options[k] for k in ("sd_model_checkpoint", "live_previews_enable")}
    # Forge's default live previews ("Approx NN") download vaeapprox-sdxl.pt for an SDXL model at the first
    # generation (only SD1.5's ships with Forge); offline that fails every generation: previews off
    status, body = forge.post("/sdapi/v1/options", {"sd_model_checkpoint": CKPT, "live_previews_enable": False},
                              timeout=600)
    assert status == 200, body
    print(f"\nForge SDXL checkpoint ready in {time.time() - t0:.0f} s")
    yield forge
    if not forge.alive():  # the session's last Forge test: conftest has stopped the server already
        return
    forge.post("/sdapi/v1/options", before, timeout=600)
    forge.txt2img({"prompt": "reload", "seed": 0, "width": 64, "height": 64, "steps": 1, "sampler_name": "Euler",
                   "scheduler": "Automatic", "save_images": False})


@pytest.fixture(scope="module")
def comfy(comfy_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("comfyui_families")
    layout = H.make_layout(root, Path(comfy_env["checkpoint"]), demo_only=True)
    (Path(layout["base"]) / "custom_nodes" / "test_models_pack").symlink_to(
        REPO / "tests" / "integration" / "test_models_pack", target_is_directory=True)
    family_models.ensure(comfy_env["python"], comfy_env["comfyui"])
    family_models.link_into(root / "shared_models")
    server = H.ComfyServer(layout, comfy_env["python"], comfy_env["comfyui"], threads=1)
    server.start(timeout=240)
    yield server, layout
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def _comfy_run(server, prompt: dict) -> dict:
    entry = server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", H.history_error(entry)
    return entry


def _comfy_graph() -> dict:
    return {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "sdxl-eps.safetensors", "weight_dtype": "default"}},
            "2": {"class_type": "VAELoader", "inputs": {"vae_name": "vae4.safetensors"}},
            "3": {"class_type": "CPSampleTestConditioning", "inputs": {"model": ["1", 0], "tokens": 8}}}


def _comfy_sample(server, layout, prefix: str, guard: str | None, scale: float = 1000.0) -> torch.Tensor:
    p = _comfy_graph()
    model = ["1", 0]
    if guard is not None:
        p["10"] = {"class_type": "CPSampleLoadGuard", "inputs": {"guard_name": guard}}
        p["11"] = {"class_type": "CPSampleProtectModel",
                   "inputs": {"model": model, "guard": ["10", 0], "scale": scale, "alpha": 0.5, "start_percent": 0.0,
                              "end_percent": 1.0, "objective": "uncertainty", "guard_input": "denoised",
                              "settings": "manual"}}
        model = ["11", 0]
    p["12"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}
    p["13"] = {"class_type": "KSampler",
               "inputs": {"model": model, "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["12", 0],
                          "seed": 3, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                          "denoise": 1.0}}
    p["14"] = {"class_type": "SaveLatent", "inputs": {"samples": ["13", 0], "filename_prefix": f"latents/{prefix}"}}
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


@pytest.fixture(scope="module")
def forge_guard(forge_sdxl):
    t0 = time.time()
    status, body = forge_sdxl.post("/cpsample/train", {"folder": str(forge_sdxl.input_dir / "demo"),
                                                       "name": "forge_sdxl", "max_steps": 40, "batch_size": 8,
                                                       "overwrite": True}, timeout=900)
    assert status == 200, body
    print(f"\nForge SDXL guard trained in {time.time() - t0:.0f} s")
    return Path(body["path"])


@pytest.fixture(scope="module")
def comfy_guard(comfy):
    """Train Guard on ComfyUI's SDXL-family copying model (the demo pictures)."""
    server, layout = comfy
    p = _comfy_graph()
    p["4"] = {"class_type": "CPSampleTestKernelModel",
              "inputs": {"model": ["1", 0], "vae": ["2", 0], "folder": "cpsample_demo", "bandwidth": 0.1}}
    p["5"] = {"class_type": "CPSampleTrainGuard",
              "inputs": {"model": ["4", 0], "vae": ["2", 0], "folder": "cpsample_demo", "seed": 0, "max_steps": 200,
                         "batch_size": 8, "resolution_policy": "resize", "resolution": 0}}
    p["6"] = {"class_type": "CPSampleSaveGuard", "inputs": {"guard": ["5", 0], "filename": "comfy_sdxl",
                                                            "overwrite": True}}
    _comfy_run(server, p)
    return Path(layout["guards"]) / "comfy_sdxl.safetensors"


def test_forge_trains_an_sdxl_guard(forge_guard):
    info = load_guard(forge_guard).info
    assert info["host"].startswith("Forge"), info["host"]
    assert info["latent_format"] == "SDXL" and info["model_sampling"] == "ModelSamplingDiscrete+EPS", info


def test_forge_calibrates_on_sdxl(forge_sdxl, forge_guard):
    status, body = forge_sdxl.post("/cpsample/calibrate", {
        "guard": forge_guard.name, "folder": str(forge_sdxl.input_dir / "demo"), "prompt": "a red house",
        "sampler_name": "Euler a", "scheduler": "Automatic", "steps": 3, "cfg_scale": 5, "probes": 8}, timeout=900)
    assert status == 200, body
    assert "calibration on 8 probe seeds" in body["report"] and "SDXL model" in body["report"], body["report"]
    assert load_guard(forge_guard).info["calibration"], "no calibration written"


def test_comfyui_guard_protects_forge_sdxl(forge_sdxl, comfy_guard, small_txt2img):
    shutil.copy(comfy_guard, forge_sdxl.models_dir / "cpsample" / comfy_guard.name)
    payload = small_txt2img()
    plain = _forge_pixels(forge_sdxl, payload)
    zero = _forge_pixels(forge_sdxl, payload, [True, comfy_guard.name, 0.0, 0.5])
    guarded = _forge_pixels(forge_sdxl, payload, [True, comfy_guard.name, 1000.0, 0.5])
    assert np.array_equal(plain, zero), "scale 0 changed Forge's SDXL image"
    assert not np.array_equal(plain, guarded), "the ComfyUI SDXL guard changed nothing in Forge"
    assert guarded.std() > 0, "a blank image"


def test_forge_guard_protects_comfyui_sdxl(comfy, forge_guard, comfy_guard):
    server, layout = comfy
    ff, fc = _family(forge_guard), _family(comfy_guard)
    assert ff["latent_format"] == fc["latent_format"] == "SDXL" and ff["latent_channels"] == fc["latent_channels"] == "4"
    assert ff["model_sampling"] == fc["model_sampling"] == "ModelSamplingDiscrete+EPS"
    for end in ("sigma_min", "sigma_max"):
        assert ff["noise_space"][end] == pytest.approx(fc["noise_space"][end], rel=1e-5), (ff, fc)
    shutil.copy(forge_guard, Path(layout["guards"]) / "forge_sdxl.safetensors")
    plain = _comfy_sample(server, layout, "plain", None)
    zero = _comfy_sample(server, layout, "zero", "forge_sdxl.safetensors", scale=0.0)
    guarded = _comfy_sample(server, layout, "guarded", "forge_sdxl.safetensors")
    assert torch.equal(plain, zero)
    assert torch.isfinite(guarded).all()
    assert not torch.equal(plain, guarded), "the Forge SDXL guard changed nothing in ComfyUI"
