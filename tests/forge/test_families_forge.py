"""SDXL in a real Forge, EPS and zero-terminal-SNR v-prediction, and guards that cross between Forge and
ComfyUI on both.

Forge dfdcbab6 runs SDXL, SD3 and Flux, but only SDXL fits a test: huggingface_guess fixes Flux's depth at
19 double and 38 single blocks (the full 12 B DiT, whatever the file holds), and Forge's SD3 and Flux
engines both load a full T5-XXL (4.8 B parameters). The SDXL checkpoints here (tools/forge_family_checkpoint.py,
cached under .cache/forge/models/families/) have the smallest UNet Forge's detector takes for SDXL (50 M
parameters, the layout ComfyUI's family tests use) and full-size random CLIP-L, CLIP-G and VAE, which Forge
always builds at the SDXL repository's size; the v-prediction one also has the `v_pred` and `ztsnr` marker keys.

What Forge does with the markers: huggingface_guess reads `v_pred` as model type V_PREDICTION, and the loader
sets the scheduler's prediction type (the predictor's `v_prediction`) from it; the loader also sets
`model_config.ztsnr` from `ztsnr`, and Forge's processing then rescales the predictor's sigmas to zero terminal
SNR (σ_max 14.6 becomes about 4,500) for each sampling call only, putting them back after, and writes a
"Noise Schedule" entry into the infotext (its value is the "Noise schedule for sampling" option, "Default").

Checked, for each kind: Forge detects the file as SDXL with that prediction (the tool's check at build time;
the guard's sampling name here) and samples with its schedule (the infotext's "Noise Schedule" exactly for
ztsnr); the extension's Train and Calibrate routes run on it and the guard names Forge, SDXL, and
ModelSamplingDiscrete+EPS or +V_PREDICTION with the noise space Forge samples in (σ_max 14.5 at the 0.1 %
point, or the zero-terminal-SNR one, over 1,000); a guard trained in ComfyUI on its SDXL-family copying
model of the same kind (tests/integration/test_models_pack) protects Forge's SDXL txt2img (the image changes
with the gate wide open, its pixels' spread stays within 3× of unprotected; scale 0 is the same bytes); Forge's SDXL guard protects
ComfyUI's SDXL of the same kind (the samples change, stay finite; scale 0 bit-identical), and both files
describe the same noise space. Forge's random VAE does not keep the pictures apart, so copies cut are
measured on the ComfyUI side only (tests/integration/test_families.py).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cpsample_nodes.core import load_guard
from cross_host import assert_same_family, comfy_run, comfy_sample, comfy_server, forge_txt2img, guard_family

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import family_models  # noqa: E402

pytestmark = [pytest.mark.forge, pytest.mark.integration]
CACHE = REPO / ".cache" / "forge" / "models" / "families"
# kind -> (its sampling in both hosts' names, zero terminal SNR); the Forge checkpoint is cpsample-sdxl-<kind>
# and ComfyUI's diffusion model sdxl-<kind> (tools/family_models.py)
KINDS = {"eps": ("ModelSamplingDiscrete+EPS", False), "vpred": ("ModelSamplingDiscrete+V_PREDICTION", True)}


def _stamp(kind: str) -> str:
    h = hashlib.sha256(kind.encode())
    for f in ("forge_family_checkpoint.py", "forge_checkpoint.py"):
        h.update((REPO / "tools" / f).read_bytes())
    return h.hexdigest()[:16]


def _checkpoint(forge_env, kind: str) -> Path:
    """The kind's checkpoint, built (and checked by Forge's detector) unless the cached one is current."""
    out = CACHE / f"cpsample-sdxl-{kind}.safetensors"
    stamp = out.with_suffix(".stamp")
    if not (out.exists() and stamp.exists() and stamp.read_text() == _stamp(kind)):
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(forge_env["python"]), str(REPO / "tools" / "forge_family_checkpoint.py"), "--forge",
                        str(forge_env["forge_dir"]), "--out", str(out)] + (["--vpred"] if kind == "vpred" else []),
                       check=True, timeout=900, cwd=REPO / "tools", env={**os.environ, "OMP_NUM_THREADS": "1"})
        stamp.write_text(_stamp(kind))
    return out


@pytest.fixture(scope="module")
def forge_families(forge):
    """Forge for this module's SDXL checkpoints; its SD1.5 one and its options again afterwards."""
    options = forge.get("/sdapi/v1/options")
    before = {k: options[k] for k in ("sd_model_checkpoint", "live_previews_enable")}
    # Forge's default live previews ("Approx NN") download vaeapprox-sdxl.pt for an SDXL model at the first
    # generation (only SD1.5's ships with Forge); offline that fails every generation: previews off
    status, body = forge.post("/sdapi/v1/options", {"live_previews_enable": False})
    assert status == 200, body
    yield forge
    if not forge.alive():  # the session's last Forge test: conftest has stopped the server already
        return
    forge.post("/sdapi/v1/options", before, timeout=600)
    forge.txt2img({"prompt": "reload", "seed": 0, "width": 64, "height": 64, "steps": 1, "sampler_name": "Euler",
                   "scheduler": "Automatic", "save_images": False})


@pytest.fixture(scope="module", params=list(KINDS))
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def forge_sdxl(forge_families, forge_env, kind):
    """Forge with the kind's SDXL checkpoint loaded."""
    forge, t0 = forge_families, time.time()
    out = _checkpoint(forge_env, kind)
    link = forge.data_dir / "models" / "Stable-diffusion" / out.name
    if not link.exists():
        link.symlink_to(out)
    status, body = forge.post("/sdapi/v1/refresh-checkpoints", {})
    assert status == 200, body
    status, body = forge.post("/sdapi/v1/options", {"sd_model_checkpoint": out.name}, timeout=600)
    assert status == 200, body
    print(f"\nForge SDXL {kind} checkpoint ready in {time.time() - t0:.0f} s")
    return forge


@pytest.fixture(scope="module")
def comfy(comfy_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("comfyui_families")

    def prepare(layout):
        (Path(layout["base"]) / "custom_nodes" / "test_models_pack").symlink_to(
            REPO / "tests" / "integration" / "test_models_pack", target_is_directory=True)
        family_models.ensure(comfy_env["python"], comfy_env["comfyui"])
        family_models.link_into(root / "shared_models")

    with comfy_server(comfy_env, root, prepare) as running:
        yield running


def _comfy_graph(kind: str) -> dict:
    return {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"sdxl-{kind}.safetensors",
                                                         "weight_dtype": "default"}},
            "2": {"class_type": "VAELoader", "inputs": {"vae_name": "vae4.safetensors"}},
            "3": {"class_type": "CPSampleTestConditioning", "inputs": {"model": ["1", 0], "tokens": 8}}}


def _comfy_sample(server, layout, kind: str, prefix: str, guard: str | None, scale: float = 1000.0) -> torch.Tensor:
    return comfy_sample(server, layout, _comfy_graph(kind), ["1", 0], ["3", 0], ["3", 0], f"{kind}_{prefix}", guard,
                        scale=scale, batch=2)


@pytest.fixture(scope="module")
def forge_guard(forge_sdxl, kind):
    t0 = time.time()
    status, body = forge_sdxl.post("/cpsample/train", {"folder": str(forge_sdxl.input_dir / "demo"),
                                                       "name": f"forge_sdxl_{kind}", "max_steps": 40,
                                                       "batch_size": 8, "overwrite": True}, timeout=900)
    assert status == 200, body
    print(f"\nForge SDXL {kind} guard trained in {time.time() - t0:.0f} s")
    return Path(body["path"])


@pytest.fixture(scope="module")
def comfy_guard(comfy, kind):
    """Train Guard on ComfyUI's SDXL-family copying model of this kind (the demo pictures)."""
    server, layout = comfy
    p = _comfy_graph(kind)
    p["4"] = {"class_type": "CPSampleTestKernelModel",
              "inputs": {"model": ["1", 0], "vae": ["2", 0], "folder": "cpsample_demo", "bandwidth": 0.1}}
    p["5"] = {"class_type": "CPSampleTrainGuard",
              "inputs": {"model": ["4", 0], "vae": ["2", 0], "folder": "cpsample_demo", "seed": 0, "max_steps": 200,
                         "batch_size": 8, "resolution_policy": "resize", "resolution": 0}}
    p["6"] = {"class_type": "CPSampleSaveGuard", "inputs": {"guard": ["5", 0], "filename": f"comfy_sdxl_{kind}",
                                                            "overwrite": True}}
    comfy_run(server, p)
    return Path(layout["guards"]) / f"comfy_sdxl_{kind}.safetensors"


def test_forge_trains_an_sdxl_guard(forge_guard, kind):
    sampling, ztsnr = KINDS[kind]
    info = load_guard(forge_guard).info
    assert info["host"].startswith("Forge"), info["host"]
    assert info["latent_format"] == "SDXL" and info["model_sampling"] == sampling, info
    # σ_max is the schedule's σ at its 0.1 % point: 14.5 on SDXL's own schedule, over 1,000 rescaled to zero
    # terminal SNR (Forge samples in it from σ ≈ 4,500, while the loaded predictor keeps the plain one)
    space = guard_family(forge_guard)["noise_space"]
    assert space["kind"] == "vp" and (space["sigma_max"] > 1000 if ztsnr else 14 < space["sigma_max"] < 15), space


def test_forge_calibrates_on_sdxl(forge_sdxl, forge_guard):
    status, body = forge_sdxl.post("/cpsample/calibrate", {
        "guard": forge_guard.name, "folder": str(forge_sdxl.input_dir / "demo"), "prompt": "a red house",
        "sampler_name": "Euler a", "scheduler": "Automatic", "steps": 3, "cfg_scale": 5, "probes": 8}, timeout=900)
    assert status == 200, body
    assert "calibration on 8 probe seeds" in body["report"] and "SDXL model" in body["report"], body["report"]
    assert load_guard(forge_guard).info["calibration"], "no calibration written"


def test_comfyui_guard_protects_forge_sdxl(forge_sdxl, kind, comfy_guard, small_txt2img):
    shutil.copy(comfy_guard, forge_sdxl.models_dir / "cpsample" / comfy_guard.name)
    payload = small_txt2img()
    plain, info = forge_txt2img(forge_sdxl, payload)
    # Forge's processing names a noise schedule in the infotext exactly when it rescales to zero terminal SNR
    assert ("Noise Schedule:" in info["infotexts"][0]) == KINDS[kind][1], info["infotexts"][0]
    zero, _ = forge_txt2img(forge_sdxl, payload, [True, comfy_guard.name, 0.0, 0.5])
    guarded, info = forge_txt2img(forge_sdxl, payload, [True, comfy_guard.name, 1000.0, 0.5])
    assert "CPSample gate" in info["extra_generation_params"], info["infotexts"][0]
    assert np.array_equal(plain, zero), "scale 0 changed Forge's SDXL image"
    assert not np.array_equal(plain, guarded), "the ComfyUI SDXL guard changed nothing in Forge"
    # not wrecked: no flat image (what non-finite latents decode to), the pixels' spread within 3× of unprotected
    spread = (float(plain.std()), float(guarded.std()))
    print(f"\nForge SDXL {kind}: pixel spread unprotected, protected {spread[0]:.1f}, {spread[1]:.1f}")
    assert spread[1] > 0 and spread[0] / 3 < spread[1] < 3 * spread[0], spread


def test_forge_guard_protects_comfyui_sdxl(comfy, kind, forge_guard, comfy_guard):
    server, layout = comfy
    sampling, ztsnr = KINDS[kind]
    # each host rescales its own float32 schedule to zero terminal SNR; at σ_min (ᾱ ≈ 0.998) that keeps about
    # four digits of 1 − ᾱ: ComfyUI's and Forge's σ_min differ by 5e-5 of it there
    assert_same_family(forge_guard, comfy_guard, "SDXL", sampling, rel=1e-4 if ztsnr else 1e-5)
    name = f"forge_sdxl_{kind}.safetensors"
    shutil.copy(forge_guard, Path(layout["guards"]) / name)
    plain = _comfy_sample(server, layout, kind, "plain", None)
    zero = _comfy_sample(server, layout, kind, "zero", name, scale=0.0)
    guarded = _comfy_sample(server, layout, kind, "guarded", name)
    assert torch.equal(plain, zero)
    assert torch.isfinite(guarded).all()
    assert not torch.equal(plain, guarded), "the Forge SDXL guard changed nothing in ComfyUI"
