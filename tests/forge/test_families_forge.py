"""SDXL in a real Forge, EPS and zero-terminal-SNR v-prediction: guards that memorise, calibrate and cut copies
there, and cross between Forge and ComfyUI on both.

Forge dfdcbab6 runs SDXL, SD3 and Flux, but only SDXL fits a test: huggingface_guess fixes Flux's depth at
19 double and 38 single blocks (the full 12 B DiT, whatever the file holds), and Forge's SD3 and Flux
engines both load a full T5-XXL (4.8 B parameters). The SDXL checkpoints here (tools/forge_family_checkpoint.py,
cached under .cache/forge/models/families/) have the smallest UNet Forge's detector takes for SDXL (50 M
parameters, the layout ComfyUI's family tests use), full-size random CLIP-L and CLIP-G, and the full-size SDXL
VAE hand-set to pass pictures through (its latents are block averages of the pixels; a random VAE puts the demo
pictures too close together for any guard to tell apart), as Forge always builds the text encoders and VAE at
the SDXL repository's size; the v-prediction one also has the `v_pred` and `ztsnr` marker keys.

What Forge does with the markers: huggingface_guess reads `v_pred` as model type V_PREDICTION, and the loader
sets the scheduler's prediction type (the predictor's `v_prediction`) from it; the loader also sets
`model_config.ztsnr` from `ztsnr`, and Forge's processing then rescales the predictor's sigmas to zero terminal
SNR (σ_max 14.6 becomes about 4,500) for each sampling call only, putting them back after, and writes a
"Noise Schedule" entry into the infotext (its value is the "Noise schedule for sampling" option, "Default").

Checked, for each kind: Forge detects the file as SDXL with that prediction (the tool's check at build time)
and samples with its schedule (the infotext's "Noise Schedule" exactly for ztsnr). The extension's Train route,
with its defaults, memorises the demo pictures' random labels and names Forge, SDXL, ModelSamplingDiscrete+EPS
or +V_PREDICTION and the noise space Forge samples in (σ_max 14.5 at the 0.1 % point, or the zero-terminal-SNR
one, over 1,000). Then the test extension (copying_model_extension/) makes the checkpoint copy the demo
pictures: Forge's processing, samplers, CFG and VAE stay real, only the UNet's output is the closed-form
denoiser of the demo latents. There the Calibrate route finds the copies and chooses a setting, and txt2img
with the accordion's defaults (the calibration) and with the gate wide open cuts the copies in a batch of eight
seeds (counted by the extension's own check route) without wrecking the images (spread within 3× of
unprotected, seeds stay distinct). Across hosts: a guard trained in ComfyUI on its SDXL-family copying model of
the same kind (tests/integration/test_models_pack) protects Forge's SDXL txt2img (the image changes with the
gate wide open, its pixels' spread stays within 3× of unprotected; scale 0 is the same bytes); Forge's SDXL
guard protects ComfyUI's SDXL of the same kind (the samples change, stay finite; scale 0 bit-identical), and
both files describe the same noise space.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cpsample_nodes.core import load_guard
from cpsample_nodes.webui.train import TrainRequest
from cross_host import (assert_same_family, comfy_run, comfy_sample, comfy_server, forge_txt2img, guard_family,
                        png_pixels)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import family_models  # noqa: E402

pytestmark = [pytest.mark.forge, pytest.mark.integration]
CACHE = REPO / ".cache" / "forge" / "models" / "families"
# kind -> (its sampling in both hosts' names, zero terminal SNR); the Forge checkpoint is cpsample-sdxl-<kind>
# and ComfyUI's diffusion model sdxl-<kind> (tools/family_models.py)
KINDS = {"eps": ("ModelSamplingDiscrete+EPS", False), "vpred": ("ModelSamplingDiscrete+V_PREDICTION", True)}
STEPS = 6
BATCH = 8


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


def _batch(forge, accordion: dict | None) -> list[str]:
    """A batch of eight seeds (11…18) at 64×64, Euler a, 6 steps, CFG 5, as base64 PNGs; CPSample's accordion by
    name when given."""
    payload = {"prompt": "a photo", "negative_prompt": "", "seed": 11, "width": 64, "height": 64, "steps": STEPS,
               "cfg_scale": 5.0, "sampler_name": "Euler a", "scheduler": "Automatic", "batch_size": BATCH,
               "n_iter": 1, "send_images": True, "save_images": False, "do_not_save_grid": True}
    if accordion is not None:
        payload["alwayson_scripts"] = {"CPSample": {"args": [accordion]}}
    return forge.txt2img(payload)["images"][-BATCH:]


def _measure(forge, images: list[str]) -> dict:
    """Copies by the extension's own check (the settings of ComfyUI's family tests), and the batch's pixels."""
    status, body = forge.post("/cpsample/check", {"images": images, "folder": str(forge.input_dir / "demo"), "k": 5,
                                                  "ratio_threshold": 0.333, "ssim_threshold": 1.0})
    assert status == 200, body
    pixels = np.stack([png_pixels(b) for b in images])
    flat = pixels.reshape(len(images), -1).astype(float)
    distinct = sum(1 for i in range(len(flat)) if all(np.abs(flat[i] - flat[j]).max() > 0 for j in range(i)))
    return {"flagged": body["flagged"], "spread": float(pixels.std()), "distinct": distinct}


@pytest.fixture(scope="module")
def forge_family(forge_sdxl, kind):
    """On the kind's SDXL: Train (the route's defaults) on the demo pictures; then, with the checkpoint made a
    model that copies them (the test extension), Calibrate and a batch of eight seeds unprotected, with the
    accordion's defaults (the calibration) and with the gate wide open (α 0.5, manual). → the measurements."""
    forge, t0 = forge_sdxl, time.time()
    demo = str(forge.input_dir / "demo")
    status, trained = forge.post("/cpsample/train", {"folder": demo, "name": f"forge_sdxl_{kind}", "overwrite": True},
                                 timeout=900)
    assert status == 200, trained
    t_train = time.time() - t0
    status, body = forge.post("/cpsample-test/copying-model", {"folder": demo, "bandwidth": 0.1})
    assert status == 200 and body["latents"] == 8, body
    try:
        status, calibrated = forge.post("/cpsample/calibrate", {
            "guard": trained["name"], "folder": demo, "prompt": "a photo", "sampler_name": "Euler a",
            "scheduler": "Automatic", "steps": STEPS, "cfg_scale": 5, "probes": 8}, timeout=900)
        assert status == 200, calibrated
        t_cal = time.time() - t0 - t_train
        base = {"enabled": True, "guard": trained["name"]}
        runs = {label: _measure(forge, _batch(forge, accordion))
                for label, accordion in (("plain", None), ("defaults", base),
                                         ("open", {**base, "alpha": 0.5, "use_calibration": False}))}
    finally:
        status, body = forge.post("/cpsample-test/copying-model", {"folder": ""})
        assert status == 200, body
    print(f"\nForge SDXL {kind}: train {t_train:.0f} s, calibrate {t_cal:.0f} s, samples "
          f"{time.time() - t0 - t_train - t_cal:.0f} s; {runs}")
    return {"train": trained, "calibrate": calibrated, "runs": runs, "path": Path(trained["path"])}


@pytest.fixture(scope="module")
def forge_guard(forge_family) -> Path:
    return forge_family["path"]


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


def test_forge_trains_an_sdxl_guard_that_memorises(forge_family, kind):
    sampling, ztsnr = KINDS[kind]
    info = load_guard(forge_family["path"]).info
    assert info["host"].startswith("Forge"), info["host"]
    assert info["latent_format"] == "SDXL" and info["model_sampling"] == sampling, info
    # σ_max is the schedule's σ at its 0.1 % point: 14.5 on SDXL's own schedule, over 1,000 rescaled to zero
    # terminal SNR (Forge samples in it from σ ≈ 4,500, while the loaded predictor keeps the plain one)
    space = guard_family(forge_family["path"])["noise_space"]
    assert space["kind"] == "vp" and (space["sigma_max"] > 1000 if ztsnr else 14 < space["sigma_max"] < 15), space
    # the route's defaults stop once every image's random labels are memorised, before the step cap; the
    # pass-through VAE keeps the pictures apart (a random SDXL VAE puts them too close for that)
    report = forge_family["train"]["report"]
    assert info["memorised"] is True and info["steps"] < TrainRequest.max_steps, report
    assert info["required_bands"] and all(info["accuracy"][b] >= 0.99 for b in info["required_bands"]), report


def test_forge_calibrates_on_the_copying_sdxl(forge_family):
    report = forge_family["calibrate"]["report"]
    m = re.search(r"unguarded: (\d+) of 8 probes copy", report)
    assert m and int(m.group(1)) >= 4 and "SDXL model" in report, report
    cal = load_guard(forge_family["path"]).info["calibration"]
    assert not cal["no_copies"] and "chosen:" in report, report
    assert cal["calibrated_rate"] < cal["unguarded_rate"], cal


@pytest.mark.parametrize("label", ["defaults", "open"])
def test_forge_protect_cuts_copies_without_wrecking(forge_family, label):
    runs = forge_family["runs"]
    plain, guarded = runs["plain"], runs[label]
    assert plain["flagged"] >= BATCH // 2, runs  # the model copies
    assert guarded["flagged"] < plain["flagged"], runs
    if label == "open":
        assert guarded["flagged"] <= plain["flagged"] // 2, runs
    assert plain["spread"] / 3 < guarded["spread"] < plain["spread"] * 3, runs
    assert guarded["distinct"] >= plain["distinct"] - 1, runs


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
