"""CPSample Calibrate Guard and Protect Model's use of a calibration, in a real ComfyUI 0.3.75 (CPU).

The tiny checkpoint's random UNet makes no copies of the demo folder, so on it calibration takes the
"no copies" path. The path that finds copies and chooses a setting runs on a model that copies: the test
pack's CPSampleTestKernelModel (tests/integration/test_models_pack), the exact denoiser of a narrow
kernel density on the demo latents, sampled by ComfyUI's own samplers.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

import comfyui_harness as H
from cpsample_nodes.core import load_guard, read_metadata, save_guard
from pack_helpers import (CKPT, assert_still_serving, error_of, interrupt_when_running, sample_prompt, saved_latent,
                          ui_text)

pytestmark = pytest.mark.integration

CALIBRATED = "calibrated_demo"
STEPS = 4


def calibrate_prompt(folder: str = "cpsample_demo", probes: int = 8, guard_file: str | None = None,
                     save_as: str | None = None, sampler: str = "euler", train_steps: int = 12, seed: int = 0,
                     width: int = 0, height: int = 0) -> dict:
    """Checkpoint → (Train Guard on the demo folder | Load Guard) → Calibrate Guard → report, evidence, file."""
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red house"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "6": {"class_type": "CPSampleCalibrateGuard",
              "inputs": {"model": ["1", 0], "guard": ["5", 0], "positive": ["2", 0], "negative": ["3", 0],
                         "vae": ["1", 2], "folder": folder, "seed": seed, "probes": probes, "steps": STEPS,
                         "cfg": 5.0, "sampler_name": sampler, "scheduler": "normal", "width": width,
                         "height": height}},
        "8": {"class_type": "PreviewAny", "inputs": {"source": ["6", 1]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["6", 2]}},
    }
    if guard_file is None:
        p["5"] = {"class_type": "CPSampleTrainGuard",
                  "inputs": {"model": ["1", 0], "vae": ["1", 2], "folder": "cpsample_demo", "seed": 0,
                             "max_steps": train_steps, "batch_size": 8, "resolution_policy": "resize",
                             "resolution": 0}}
    else:
        p["5"] = {"class_type": "CPSampleLoadGuard", "inputs": {"guard_name": guard_file}}
    if save_as:
        p["7"] = {"class_type": "CPSampleSaveGuard", "inputs": {"guard": ["6", 0], "filename": save_as,
                                                                "overwrite": True}}
    return p


def protect_prompt(prefix: str, guard_file: str | None, scale: float = 5.0, alpha: float = 0.5,
                   settings: str | None = None, seed: int = 3) -> dict:
    """txt2img at 64 px saving the final latent (exact comparison), optionally through Protect Model."""
    return sample_prompt(prefix, guard_file, scale=scale, alpha=alpha, seed=seed, steps=STEPS, settings=settings)


@pytest.fixture(scope="module")
def calibrated(comfy, comfy_layout):
    """Train a guard on the demo folder, calibrate it on 8 probes, save it; → (history entry, seconds)."""
    t0 = time.time()
    entry = comfy.run(calibrate_prompt(save_as=CALIBRATED), timeout=300)
    assert entry["status"]["status_str"] == "success", H.history_error(entry)
    return entry, time.time() - t0


# ------------------------------------------------------------------------------------------- schema

def test_node_listed_with_tooltips_and_protect_setting(object_info):
    info = object_info["CPSampleCalibrateGuard"]
    assert info["display_name"] == "CPSample Calibrate Guard" and info["category"] == "CPSample"
    assert info["output"] == ["CPSAMPLE_GUARD", "STRING", "IMAGE"]
    req = info["input"]["required"]
    assert list(req) == ["model", "guard", "positive", "negative", "vae", "folder", "seed", "probes", "steps",
                         "cfg", "sampler_name", "scheduler", "width", "height"]
    for name, spec in req.items():
        assert spec[1].get("tooltip"), f"CPSampleCalibrateGuard.{name} has no tooltip"
    assert req["probes"][1]["min"] == 8
    folders = req["folder"][0] if isinstance(req["folder"][0], list) else req["folder"][1]["options"]
    assert "cpsample_demo" in folders
    prot = object_info["CPSampleProtectModel"]
    # the new input comes last and optional, so saved workflows keep their widget values
    assert prot["input_order"]["required"][-1] == "guard_input"
    assert prot["input_order"]["optional"] == ["settings"]
    spec = prot["input"]["optional"]["settings"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert options == ["calibration (if the guard has one)", "manual"] and spec[1]["tooltip"]


# ------------------------------------------------------------------------------------------- calibration

def test_calibrates_on_the_tiny_checkpoint(calibrated, comfy_layout):
    entry, seconds = calibrated
    report = ui_text(entry, 8)
    assert "8 training images from cpsample_demo at 64x64 px" in report, report
    assert "calibration on 8 probe seeds (euler/normal, 4 steps, cfg 5, 64x64 px" in report, report
    # the random UNet copies nothing: calibration says so and keeps the gentlest setting
    assert "unguarded: 0 of 8 probes copy" in report and "no copies among 8 probes" in report, report
    assert "note: these are not exactly" not in report, report  # same folder, size and VAE as Train Guard
    evidence = H.output_images(entry, comfy_layout, "9")
    assert len(evidence) == 1 and evidence[0].is_file()
    shown = entry["outputs"]["6"]  # the node shows its own report and picture
    assert shown.get("images") and report.splitlines()[0] in ui_text(entry, 6)
    assert seconds < 120, f"calibration took {seconds:.0f} s"


def test_saved_guard_carries_its_calibration(calibrated, comfy, comfy_layout, run_prompt):
    path = Path(comfy_layout["guards"]) / f"{CALIBRATED}.safetensors"
    cal = json.loads(read_metadata(path)["info"])["calibration"]
    assert cal["probes"] == 8 and cal["no_copies"] is True and cal["unguarded_rate"] == 0.0
    assert cal["sampler"].startswith("euler/normal, 4 steps")
    assert set(cal["settings"]) <= {"scale", "alpha", "max_step", "sigma_max"} and cal["settings"]["alpha"] > 0
    assert load_guard(path).calibrated_settings() == cal["settings"]
    entry = run_prompt({"1": {"class_type": "CPSampleLoadGuard", "inputs": {"guard_name": path.name}},
                        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}})
    assert json.loads(ui_text(entry, 2))["calibration"] == cal
    assert "train_0" not in json.dumps(cal)  # nothing per image in the file


@pytest.fixture(scope="module")
def uncalibrated(calibrated, comfy, comfy_layout) -> str:
    """The guard Train Guard made for the calibration above, saved after Calibrate ran on it: ComfyUI caches
    node outputs, so Calibrate must have returned a new guard and left this one without a calibration."""
    p = calibrate_prompt()
    p["12"] = {"class_type": "CPSampleSaveGuard", "inputs": {"guard": ["5", 0], "filename": "uncalibrated_demo",
                                                             "overwrite": True}}
    entry = comfy.run(p, timeout=300)
    assert entry["status"]["status_str"] == "success", H.history_error(entry)
    return "uncalibrated_demo.safetensors"


def test_input_guard_is_not_changed(uncalibrated, comfy_layout):
    meta = json.loads(read_metadata(Path(comfy_layout["guards"]) / uncalibrated)["info"])
    assert "calibration" not in meta and meta["n_images"] == 8


# ------------------------------------------------------------------------------------------- Protect Model

def test_protect_model_applies_the_calibration(calibrated, comfy, comfy_layout, run_prompt):
    guard = f"{CALIBRATED}.safetensors"
    cal = load_guard(Path(comfy_layout["guards"]) / guard).calibrated_settings()
    entry = run_prompt(protect_prompt("cal_default", guard))  # no settings input: the default applies
    text = ui_text(entry, 11)
    assert "calibrated settings" in text and f"α {cal['alpha']:g}" in text and f"scale {cal['scale']:g}" in text, text
    window = "every step" if cal.get("sigma_max") is None else f"σ ≤ {cal['sigma_max']:g}"
    assert window in text, text
    manual = run_prompt(protect_prompt("cal_manual", guard, settings="manual"))
    assert "manual settings scale 5, α 0.5 (the guard's calibration is ignored" in ui_text(manual, 11)
    a, b = saved_latent(comfy_layout, "cal_default"), saved_latent(comfy_layout, "cal_manual")
    assert torch.isfinite(a).all() and not torch.equal(a, b), "the calibration did not replace scale 5, α 0.5"


def test_uncalibrated_guard_runs_as_before(uncalibrated, comfy, comfy_layout, run_prompt):
    entry = run_prompt(protect_prompt("old_default", uncalibrated))
    assert "manual settings scale 5, α 0.5 (this guard has no calibration" in ui_text(entry, 11)
    run_prompt(protect_prompt("old_manual", uncalibrated, settings="manual"))
    assert torch.equal(saved_latent(comfy_layout, "old_default"), saved_latent(comfy_layout, "old_manual"))


def test_workflow_saved_before_the_settings_input_loads_and_runs(uncalibrated, comfy, comfy_layout):
    """In the real frontend: a Protect Model saved before `settings` existed (one widget value fewer) keeps its
    values in place, gets the default, and the workflow runs as before (the guard has no calibration)."""
    import comfy_page as P
    from cdp import Chromium, find_chromium

    if not find_chromium():
        if os.environ.get("CPSAMPLE_REQUIRE_COMFYUI"):
            pytest.fail("no Chromium: install Debian's chromium (tools/ensure_chromium.sh)")
        pytest.skip("no Chromium installed (tools/ensure_chromium.sh)")
    wf = json.loads((H.REPO / "example_workflows" / "cpsample_protected_txt2img.json").read_text())
    node = next(n for n in wf["nodes"] if n["type"] == "CPSampleProtectModel")
    assert node["widgets_values"][-1] == "calibration (if the guard has one)"
    node["widgets_values"] = node["widgets_values"][:-1]  # as saved before the input existed
    next(n for n in wf["nodes"] if n["type"] == "CPSampleLoadGuard")["widgets_values"] = [uncalibrated]
    P.prepare_server(comfy)
    with Chromium(width=1600, height=900) as page:
        P.open_app(page, comfy.url)
        page.evaluate(f"(async () => {{ await window.app.loadGraphData({json.dumps(wf)}); return true; }})()")
        widgets = page.evaluate("""Object.fromEntries(window.app.graph._nodes
            .find(n => n.comfyClass === "CPSampleProtectModel").widgets.map(w => [w.name, w.value]))""")
        entry = P.run_and_wait(page, comfy)
    expected = {"scale": 1000, "alpha": pytest.approx(0.01), "start_percent": 0, "end_percent": 1,
                "objective": "uncertainty", "guard_input": "denoised", "settings": "calibration (if the guard has one)"}
    assert {k: widgets.get(k) for k in expected} == expected, widgets
    assert entry["status"]["status_str"] == "success", H.history_error(entry)
    prot = next(k for k, v in entry["prompt"][2].items() if v["class_type"] == "CPSampleProtectModel")
    assert "manual settings scale 1000, α 0.01 (this guard has no calibration" in ui_text(entry, prot)


def test_scale_zero_still_bit_identical(calibrated, comfy, comfy_layout, run_prompt):
    run_prompt(protect_prompt("cal_plain", None))
    entry = run_prompt(protect_prompt("cal_zero", f"{CALIBRATED}.safetensors", scale=0.0))
    assert "protection off" in ui_text(entry, 11)
    assert torch.equal(saved_latent(comfy_layout, "cal_plain"), saved_latent(comfy_layout, "cal_zero"))


# ------------------------------------------------------------------------------------------- bad inputs

def test_hand_edited_calibration_refused(calibrated, comfy, comfy_layout, run_prompt):
    guard = load_guard(Path(comfy_layout["guards"]) / f"{CALIBRATED}.safetensors")
    guard.info["calibration"] = {**guard.info["calibration"], "settings": {"scale": 1000.0, "alpha": 2.0}}
    save_guard(guard, Path(comfy_layout["guards"]) / "bad_calibration.safetensors")
    entry = run_prompt(protect_prompt("bad_cal", "bad_calibration.safetensors"), expect="error")
    err = error_of(entry)
    assert err["node_type"] == "CPSampleProtectModel", err
    msg = err["exception_message"]
    assert "CPSample Protect Model" in msg and "alpha" in msg and "2.0" in msg, msg
    # 'manual' does not read the calibration: the same file still protects with the node's values
    run_prompt(protect_prompt("bad_cal_manual", "bad_calibration.safetensors", settings="manual"))
    assert_still_serving(comfy, run_prompt)


@pytest.mark.parametrize("folder,needle", [
    ("cpsample_empty", "is empty"),
    ("(none: use the images input)", "no training images"),
])
def test_no_training_images_fails_clearly(folder, needle, calibrated, comfy, run_prompt):
    entry = run_prompt(calibrate_prompt(folder=folder, guard_file=f"{CALIBRATED}.safetensors"), expect="error")
    err = error_of(entry)
    assert err["node_type"] == "CPSampleCalibrateGuard", err
    assert needle in err["exception_message"], err["exception_message"]
    assert_still_serving(comfy, run_prompt)


def test_probes_at_another_size(calibrated, comfy, run_prompt):
    """width x height other than the guard's: the training images are brought to the probe size."""
    entry = run_prompt(calibrate_prompt(guard_file=f"{CALIBRATED}.safetensors", width=48, height=48))
    report = ui_text(entry, 8)
    assert "8 training images from cpsample_demo at 48x48 px" in report and "48x48 px (SD15" in report, report
    assert "note: these are not exactly the latents the guard was trained on" in report, report


@pytest.mark.parametrize("width,height,needle", [(48, 0, "set both"), (60, 64, "multiples of the VAE's 8")])
def test_bad_probe_size_fails_clearly(width, height, needle, calibrated, comfy, run_prompt):
    p = calibrate_prompt(guard_file=f"{CALIBRATED}.safetensors", width=width, height=height)
    try:
        entry = run_prompt(p, expect="error")
    except H.PromptError as e:  # 60 is off the widget's step of 8 where the version checks steps
        assert e.status == 400 and "width" in json.dumps(e.body), e.body
    else:
        msg = error_of(entry)["exception_message"]
        assert needle in msg and str(width) in msg, msg
    assert_still_serving(comfy, run_prompt)


def test_guard_for_another_model_refused(comfy, run_prompt):
    entry = run_prompt(calibrate_prompt(guard_file="sdxl_guard.safetensors"), expect="error")
    err = error_of(entry)
    assert err["node_type"] == "CPSampleCalibrateGuard", err
    msg = err["exception_message"]
    assert "CPSample Calibrate Guard" in msg and "SDXL" in msg and "SD15" in msg, msg
    assert_still_serving(comfy, run_prompt)


def test_protected_model_refused(calibrated, comfy, run_prompt):
    p = calibrate_prompt(guard_file=f"{CALIBRATED}.safetensors")
    p["13"] = {"class_type": "CPSampleProtectModel",
               "inputs": {"model": ["1", 0], "guard": ["5", 0], "scale": 5.0, "alpha": 0.5, "start_percent": 0.0,
                          "end_percent": 1.0, "objective": "uncertainty", "guard_input": "denoised"}}
    p["6"]["inputs"]["model"] = ["13", 0]
    msg = error_of(run_prompt(p, expect="error"))["exception_message"]
    assert "already protected" in msg, msg
    assert_still_serving(comfy, run_prompt)


def test_too_few_probes_refused(calibrated, comfy, run_prompt):
    with pytest.raises(H.PromptError) as e:
        run_prompt(calibrate_prompt(probes=4, guard_file=f"{CALIBRATED}.safetensors"))
    body = json.dumps(e.value.body)
    assert e.value.status == 400 and "probes" in body and "8" in body, body
    assert_still_serving(comfy, run_prompt)


def test_cancel_stops_calibration(calibrated, comfy, run_prompt):
    interrupt_when_running(comfy, calibrate_prompt(probes=512, guard_file=f"{CALIBRATED}.safetensors", seed=1000),
                           after=2.0)
    assert_still_serving(comfy, run_prompt)


# ------------------------------------------------------------------------------------------- a copying model

def kernel_prompt(seed_probe: int | None = None, protect: bool = False) -> dict:
    """The test pack's copying model (kernel density on the demo latents, bandwidth 0.1) → Train Guard →
    Calibrate (8 probes, euler_ancestral) → Save; with ``seed_probe``: KSampler at that seed (batch 1,
    the probe's settings), optionally through Protect Model with the calibrated guard, → Replication Check."""
    p = calibrate_prompt(sampler="euler_ancestral", train_steps=100, save_as="kernel_calibrated")
    p["4"] = {"class_type": "CPSampleTestKernelModel",
              "inputs": {"model": ["1", 0], "vae": ["1", 2], "folder": "cpsample_demo", "bandwidth": 0.1}}
    p["5"]["inputs"]["model"] = ["4", 0]
    p["6"]["inputs"].update(model=["4", 0], steps=6)
    if seed_probe is None:
        return p
    for k in ("7", "8", "9"):
        del p[k]
    p["20"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    p["21"] = {"class_type": "KSampler",
               "inputs": {"model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["20", 0],
                          "seed": seed_probe, "steps": 6, "cfg": 5.0, "sampler_name": "euler_ancestral",
                          "scheduler": "normal", "denoise": 1.0}}
    if protect:  # scale 5, α 0.5 on the widgets: the calibration must replace them
        p["22"] = {"class_type": "CPSampleProtectModel",
                   "inputs": {"model": ["4", 0], "guard": ["6", 0], "scale": 5.0, "alpha": 0.5, "start_percent": 0.0,
                              "end_percent": 1.0, "objective": "uncertainty", "guard_input": "denoised"}}
        p["21"]["inputs"]["model"] = ["22", 0]
    p["23"] = {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["1", 2]}}
    # ratio only (SSIM threshold 1 never flags), k 5: copies counted as calibration counts them
    p["24"] = {"class_type": "CPSampleReplicationCheck",
               "inputs": {"images": ["23", 0], "folder": "cpsample_demo", "k": 5, "ratio_threshold": 0.333,
                          "ssim_threshold": 1.0}}
    p["25"] = {"class_type": "PreviewAny", "inputs": {"source": ["24", 0]}}
    return p


def test_calibration_on_a_copying_model(comfy, comfy_layout, run_prompt):
    t0 = time.time()
    entry = run_prompt(kernel_prompt())
    seconds = time.time() - t0
    report = ui_text(entry, 8)
    m = re.search(r"unguarded: (\d+) of 8 probes copy", report)
    assert m and int(m.group(1)) >= 4, report
    assert "chosen:" in report and re.search(r"\d+ model calls", report), report
    cal = load_guard(Path(comfy_layout["guards"]) / "kernel_calibrated.safetensors").info["calibration"]
    assert not cal["no_copies"] and cal["calibrated_rate"] < cal["unguarded_rate"], cal
    assert cal["tried"] and sum(r["outcome"] == "chosen" for r in cal["tried"]) == 1, cal["tried"]
    # ComfyUI's post-CFG calls were traced per probe: settings whose gate stayed shut along a probe's
    # unguarded path reused its sample instead of sampling it again
    assert cal["model_calls_saved"] > 0 and "more saved by reusing" in report, report
    # and where a gate stayed shut only at the start of a path (above its σ window, say), ComfyUI's
    # cond-batch step took those calls' predictions from the unguarded path instead of running the model
    assert cal["model_calls_replayed"] > 0 and "taken from paths already sampled" in report, report
    assert len(H.output_images(entry, comfy_layout, "9")) == 1
    # Every probe that copied is listed with its seed; one the calibration freed must be a copy with
    # KSampler at that seed, and not with Protect Model applying the calibration.
    listed = re.findall(r"^  (\d+): (\S+) -> (no copy|still a copy)$", report, re.M)
    assert len(listed) == int(m.group(1)), report
    freed = [(int(s), name) for s, name, after in listed if after == "no copy"]
    assert freed, report
    for seed, name in freed[:2]:
        plain = ui_text(run_prompt(kernel_prompt(seed)), 25)
        assert f"nearest {name}" in plain and "1 of 1 flagged" in plain, (seed, name, plain)
        protected = run_prompt(kernel_prompt(seed, protect=True))
        assert "calibrated settings" in ui_text(protected, 22), ui_text(protected, 22)
        assert "0 of 1 flagged" in ui_text(protected, 25), (seed, ui_text(protected, 25))
    assert seconds < 240, f"training and calibration took {seconds:.0f} s"  # about 40 s on 2 loaded cores


# ------------------------------------------------------------------------------------------- example

def test_calibrated_example_workflow(comfy, comfy_layout, object_info, run_prompt):
    """example_workflows/cpsample_calibrated_txt2img.json: train → calibrate → save → protected txt2img."""
    wf = json.loads((H.REPO / "example_workflows" / "cpsample_calibrated_txt2img.json").read_text())
    assert (H.REPO / "example_workflows" / "cpsample_calibrated_txt2img.png").is_file(), "thumbnail missing"
    prompt = H.ui_to_api(wf, object_info)
    by_type = {v["class_type"]: k for k, v in prompt.items()}
    assert {"LoraLoader", "CPSampleTrainGuard", "CPSampleCalibrateGuard", "CPSampleSaveGuard",
            "CPSampleProtectModel", "KSampler"} <= set(by_type)
    cal_in = prompt[by_type["CPSampleCalibrateGuard"]]["inputs"]
    ks = prompt[by_type["KSampler"]]["inputs"]
    # calibration measures the sampler the workflow generates with
    assert [cal_in[k] for k in ("steps", "cfg", "sampler_name", "scheduler")] == \
        [ks[k] for k in ("steps", "cfg", "sampler_name", "scheduler")]
    assert prompt[by_type["CPSampleProtectModel"]]["inputs"]["guard"][0] == by_type["CPSampleCalibrateGuard"]
    prompt[by_type["CPSampleTrainGuard"]]["inputs"]["max_steps"] = 12  # CPU test budget, the only changes
    cal_in["probes"] = 8
    entry = run_prompt(prompt)
    report = ui_text(entry, by_type["PreviewAny"])
    assert f"calibration on {cal_in['probes']} probe seeds" in report, report
    assert "calibrated settings" in ui_text(entry, by_type["CPSampleProtectModel"])
    saved = load_guard(Path(comfy_layout["guards"]) / "cpsample_demo_calibrated.safetensors")
    assert saved.info["calibration"]["probes"] == cal_in["probes"]
    assert len(H.output_images(entry, comfy_layout, by_type["SaveImage"])) == 2
