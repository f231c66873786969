"""The pack on the model families LoRAs are made for, in the real ComfyUI: SDXL (EPS and zero-terminal-SNR
v-prediction), SD3 and Flux dev (guidance-distilled, CFG 1).

The models are the smallest random-weight ones ComfyUI's own detection accepts (tools/family_models.py,
built once and cached under .cache/comfyui/models/families/), loaded by UNETLoader and VAELoader; their
TAESD-shaped VAEs keep the demo pictures apart (as the SD1.5 tiny checkpoint's). For each family:

* on the test pack's copying model (CPSampleTestKernelModel: the model object, its model_sampling and
  latent format and ComfyUI's samplers stay real; only the network's output is the closed-form denoiser
  of the demo latents, so most samples are copies): Train Guard, with its defaults, memorises every
  image's random labels and stops before its step cap, Calibrate Guard finds the
  copies and chooses a setting, and Protect Model, with its defaults (the calibration) and with the gate
  wide open (manual, α 0.5), cuts the copies in a batch of eight seeds without wrecking the samples
  (finite, spread within 3× of unprotected, seeds stay distinct);
* on the random network itself (its real forward pass): Protect Model runs, and at scale 0 the latents
  are bit-identical to unprotected.

The same in Forge, and guard files crossing to Forge and back: tests/forge/test_families_forge.py (SDXL, EPS
and zero-terminal-SNR v-prediction; SD3 and Flux cannot run in a Forge test, see docs/webui.md).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

import comfyui_harness as H
import family_models as family_models_tool
from cpsample_nodes.core import load_guard
from pack_helpers import saved_latent, ui_text

pytestmark = pytest.mark.integration

# family (its diffusion-model file's stem) -> VAE file, latent node, sampler, scheduler, cfg, latent format, sampling
FAMILIES = {
    "sdxl-eps": ("vae4", "EmptyLatentImage", "euler_ancestral", "normal", 5.0, "SDXL", "ModelSamplingDiscrete+EPS"),
    "sdxl-vpred": ("vae4", "EmptyLatentImage", "euler_ancestral", "normal", 5.0, "SDXL",
                   "ModelSamplingDiscrete+V_PREDICTION"),
    "sd3": ("vae16-sd3", "EmptySD3LatentImage", "euler", "simple", 5.0, "SD3", "ModelSamplingDiscreteFlow+CONST"),
    "flux-dev": ("vae16-flux", "EmptySD3LatentImage", "euler", "simple", 1.0, "Flux", "ModelSamplingFlux+CONST"),
}
STEPS = 6
BATCH = 8


@pytest.fixture(scope="session")
def family_models(comfy_env, comfy_layout) -> Path:
    """Build the family models once (cached while tools/family_models.py is unchanged); link them into the
    server's diffusion_models/ and vae/ folders."""
    t0 = time.time()
    out = family_models_tool.ensure(comfy_env["python"], comfy_env["comfyui"])
    family_models_tool.link_into(Path(comfy_layout["yaml"]).parent / "shared_models")
    print(f"\nfamily models ready in {time.time() - t0:.1f} s")
    return out


def _graph(family: str, copying: bool) -> dict:
    vae, latent, *_ = FAMILIES[family]
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{family}.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": f"{vae}.safetensors"}},
        "3": {"class_type": "CPSampleTestConditioning", "inputs": {"model": ["1", 0], "tokens": 8}},
    }
    if copying:
        p["4"] = {"class_type": "CPSampleTestKernelModel",
                  "inputs": {"model": ["1", 0], "vae": ["2", 0], "folder": "cpsample_demo", "bandwidth": 0.1}}
    return p


def _model(copying: bool) -> list:
    return ["4", 0] if copying else ["1", 0]


def node_default(object_info: dict, node: str, name: str):
    """An input's default as the node declares it (a list input without one: its first choice)."""
    inputs = object_info[node]["input"]
    spec = {**inputs["required"], **inputs.get("optional", {})}[name]
    return spec[1]["default"] if len(spec) > 1 and "default" in spec[1] else spec[0][0]


def train_calibrate_prompt(family: str, object_info: dict) -> dict:
    """Train Guard with its own defaults (step cap, batch): it stops once the guard has memorised."""
    _, _, sampler, scheduler, cfg, *_ = FAMILIES[family]
    p = _graph(family, copying=True)
    train = {k: node_default(object_info, "CPSampleTrainGuard", k) for k in ("max_steps", "batch_size")}
    p["5"] = {"class_type": "CPSampleTrainGuard",
              "inputs": {"model": ["4", 0], "vae": ["2", 0], "folder": "cpsample_demo", "seed": 0, **train,
                         "resolution_policy": "resize", "resolution": 0}}
    p["6"] = {"class_type": "CPSampleCalibrateGuard",
              "inputs": {"model": ["4", 0], "guard": ["5", 0], "positive": ["3", 0], "negative": ["3", 0],
                         "vae": ["2", 0], "folder": "cpsample_demo", "seed": 0, "probes": 8, "steps": STEPS,
                         "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler, "width": 0, "height": 0}}
    p["7"] = {"class_type": "CPSampleSaveGuard", "inputs": {"guard": ["6", 0], "filename": f"family_{family}",
                                                            "overwrite": True}}
    p["8"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}}
    p["9"] = {"class_type": "PreviewAny", "inputs": {"source": ["6", 1]}}
    return p


def sample_prompt(family: str, prefix: str, copying: bool, protect: dict | None = None, seed: int = 11) -> dict:
    """A batch of eight seeds (KSampler, the family's sampler, 6 steps) → saved latents; on the copying model
    also decoded and put through Replication Check against the demo folder. On the random network itself
    two seeds and 3 steps (its forward pass is what costs there)."""
    _, latent, sampler, scheduler, cfg, *_ = FAMILIES[family]
    p = _graph(family, copying)
    model = _model(copying)
    if protect is not None:
        p["10"] = {"class_type": "CPSampleLoadGuard", "inputs": {"guard_name": f"family_{family}.safetensors"}}
        p["11"] = {"class_type": "CPSampleProtectModel", "inputs": {"model": model, "guard": ["10", 0], **protect}}
        model = ["11", 0]
    p["12"] = {"class_type": latent, "inputs": {"width": 64, "height": 64, "batch_size": BATCH if copying else 2}}
    p["13"] = {"class_type": "KSampler",
               "inputs": {"model": model, "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["12", 0],
                          "seed": seed, "steps": STEPS if copying else 3, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
                          "denoise": 1.0}}
    p["14"] = {"class_type": "SaveLatent", "inputs": {"samples": ["13", 0], "filename_prefix": f"latents/{prefix}"}}
    if copying:
        p["15"] = {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["2", 0]}}
        p["16"] = {"class_type": "CPSampleReplicationCheck",
                   "inputs": {"images": ["15", 0], "folder": "cpsample_demo", "k": 5, "ratio_threshold": 0.333,
                              "ssim_threshold": 1.0}}
        p["17"] = {"class_type": "PreviewAny", "inputs": {"source": ["16", 0]}}
    return p


def protect_defaults(object_info: dict) -> dict:
    inputs = object_info["CPSampleProtectModel"]["input"]
    names = [*inputs["required"], *inputs.get("optional", {})]
    return {name: node_default(object_info, "CPSampleProtectModel", name) for name in names
            if name not in ("model", "guard")}


def stats(lat: torch.Tensor) -> dict:
    flat = lat.flatten(1).double()
    dist = torch.cdist(flat, flat)
    distinct = sum(1 for i in range(len(flat)) if bool((dist[i, :i] >= 1e-3).all()))
    return {"finite": bool(torch.isfinite(lat).all()), "spread": float(lat.std()), "distinct": distinct}


def flagged(entry: dict) -> int:
    text = ui_text(entry, 17)
    m = re.search(r"(\d+) of (\d+) flagged", text)
    assert m and int(m.group(2)) == BATCH, text
    return int(m.group(1))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, comfy, comfy_layout, family_models, object_info):
    """Train, calibrate and save a guard on the family's copying model; sample a batch unprotected, with
    Protect Model's defaults and with the gate wide open. → the measurements."""
    fam = request.param
    t0 = time.time()
    trained = comfy.run(train_calibrate_prompt(fam, object_info), timeout=900)
    assert trained["status"]["status_str"] == "success", H.history_error(trained)
    t_train = time.time() - t0
    runs = {}
    for label, protect in (("plain", None), ("defaults", protect_defaults(object_info)),
                           ("open", {**protect_defaults(object_info), "alpha": 0.5, "settings": "manual"})):
        entry = comfy.run(sample_prompt(fam, f"{fam}_{label}", copying=True, protect=protect), timeout=600)
        assert entry["status"]["status_str"] == "success", (label, H.history_error(entry))
        runs[label] = {"flagged": flagged(entry), **stats(saved_latent(comfy_layout, f"{fam}_{label}"))}
    print(f"\n{fam}: train+calibrate {t_train:.0f} s, samples {time.time() - t0 - t_train:.0f} s; {runs}")
    return {"name": fam, "train": trained, "runs": runs,
            "guard": load_guard(Path(comfy_layout["guards"]) / f"family_{fam}.safetensors")}


def test_train_guard_memorises(family, object_info):
    fam = family["name"]
    info = family["guard"].info
    _, _, _, _, _, latent_format, sampling = FAMILIES[fam]
    assert info["latent_format"] == latent_format and info["model_sampling"] == sampling, info
    report = ui_text(family["train"], 8)
    # the stop check passed before the cap: right on every image's random labels in every band where
    # memorising is possible (σ ≤ 1 in vp, ≤ 0.5 in flow), confident in the lowest ones
    cap = node_default(object_info, "CPSampleTrainGuard", "max_steps")
    assert info["memorised"] is True and info["steps"] < cap, report
    assert info["required_bands"] and all(info["accuracy"][b] >= 0.99 for b in info["required_bands"]), report
    assert info["confident_bands"] and all(info["confident"][b] >= 0.99 for b in info["confident_bands"]), report
    assert family["guard"].net.config.in_channels == (16 if latent_format in ("SD3", "Flux") else 4)


def test_calibrate_guard_finds_the_copies(family):
    report = ui_text(family["train"], 9)
    m = re.search(r"unguarded: (\d+) of 8 probes copy", report)
    assert m and int(m.group(1)) >= 4, report
    cal = family["guard"].info["calibration"]
    assert not cal["no_copies"] and "chosen:" in report, report
    assert cal["calibrated_rate"] < cal["unguarded_rate"], cal


@pytest.mark.parametrize("label", ["defaults", "open"])
def test_protect_cuts_copies_without_wrecking(family, label):
    plain, guarded = family["runs"]["plain"], family["runs"][label]
    assert plain["flagged"] >= BATCH // 2, family["runs"]  # the model copies
    assert guarded["flagged"] < plain["flagged"], family["runs"]
    if label == "open":
        assert guarded["flagged"] <= plain["flagged"] // 2, family["runs"]
    assert guarded["finite"], family["runs"]
    assert plain["spread"] / 3 < guarded["spread"] < plain["spread"] * 3, family["runs"]
    assert guarded["distinct"] >= plain["distinct"] - 1, family["runs"]


def test_real_network_protected_and_scale_zero_bit_identical(family, comfy, comfy_layout, object_info):
    fam = family["name"]
    base = protect_defaults(object_info)
    for label, protect in (("net_plain", None), ("net_zero", {**base, "scale": 0.0}),
                           ("net_open", {**base, "alpha": 0.5, "settings": "manual"})):
        entry = comfy.run(sample_prompt(fam, f"{fam}_{label}", copying=False, protect=protect, seed=5), timeout=600)
        assert entry["status"]["status_str"] == "success", (label, H.history_error(entry))
    plain, zero, opened = (saved_latent(comfy_layout, f"{fam}_{k}") for k in ("net_plain", "net_zero", "net_open"))
    assert torch.equal(plain, zero)
    assert torch.isfinite(opened).all() and opened.shape == plain.shape
    assert plain.shape[1] == (16 if fam in ("sd3", "flux-dev") else 4)
