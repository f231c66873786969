"""Protected generations in a real Forge through its API (alwayson_scripts), with a guard trained
by the extension's own route on the loaded checkpoint.

With the gate wide open (alpha 0.5) and a large scale the image must change; disabled, or at
scale 0, it must be the same image bit for bit. The settings go into the infotext and come back
through Forge's own parser. Bad guards are refused with the reason in the API answer, and the
server goes on generating (protected, too) afterwards.
"""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from cpsample_nodes.core import Guard, GuardNet, NoiseSpace, save_guard
from cpsample_nodes.core.network import GuardConfig
from cpsample_nodes.webui.settings import INFOTEXT, Settings
from cross_host import png_pixels

pytestmark = pytest.mark.forge
TITLE = "CPSample"  # alwayson_scripts key: the script's title


@pytest.fixture(scope="module")
def guard_name(train_demo_guard) -> str:
    return train_demo_guard("protect")["name"]


def _run(forge, payload: dict, args: list | None = None) -> tuple[np.ndarray, dict, str]:
    if args is not None:
        payload = {**payload, "alwayson_scripts": {TITLE: {"args": args}}}
    body = forge.txt2img(payload)
    return png_pixels(body["images"][0]), json.loads(body["info"]), body["images"][0]


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])  # a k-diffusion and a timestep sampler
def test_protection_changes_the_image_and_off_or_scale_zero_does_not(forge, small_txt2img, guard_name, sampler):
    payload = small_txt2img(sampler_name=sampler)
    plain, info, _ = _run(forge, payload)
    assert not any(k.startswith("CPSample") for k in info["extra_generation_params"])
    if sampler == "Euler a":  # off is off for every sampler: checked once
        off, _, _ = _run(forge, payload, [False, guard_name, 5000.0, 0.5])
        assert np.array_equal(off, plain)
    zero, info0, _ = _run(forge, payload, [True, guard_name, 0.0, 0.5])
    on, info_on, _ = _run(forge, payload, [True, guard_name, 5000.0, 0.5])
    assert np.array_equal(zero, plain)
    assert info0["extra_generation_params"][INFOTEXT["scale"]] == 0.0
    diff = np.abs(on.astype(int) - plain.astype(int))
    assert diff.max() > 0 and diff.mean() > 0.5, f"protected image barely differs (mean {diff.mean():.3f})"
    assert info_on["extra_generation_params"][INFOTEXT["guard"]] == guard_name
    assert info_on["extra_generation_params"]["CPSample gate"].startswith("gate opened on 1 of 1 samples")
    if sampler == "Euler a":  # the args may also be one dict by name
        by_name, _, _ = _run(forge, payload, [{"enabled": True, "guard": guard_name, "scale": 5000.0, "alpha": 0.5}])
        assert np.array_equal(by_name, on)


def test_infotext_is_written_and_parsed_back(forge, small_txt2img, guard_name):
    settings = Settings(enabled=True, guard=guard_name, scale=2500.0, alpha=0.25, start_percent=0.1,
                        end_percent=0.9, objective="opposite", guard_input="noisy", use_calibration=False)
    args = [getattr(settings, name) for name in ("enabled", "guard", "scale", "alpha", "start_percent",
                                                 "end_percent", "objective", "guard_input", "use_calibration")]
    _, info, png = _run(forge, small_txt2img(), args)
    assert f"{INFOTEXT['guard']}: {guard_name}" in info["infotexts"][0]
    status, parsed = forge.post("/sdapi/v1/png-info", {"image": "data:image/png;base64," + png})
    assert status == 200, parsed
    params = parsed["parameters"]
    assert Settings.from_infotext(params) == settings  # what paste / "send to txt2img" restores


def _foreign_guard(path, latent_format: str, channels: int = 4) -> None:
    with torch.inference_mode(False):
        net = GuardNet(GuardConfig.for_latents((2, channels, 8, 8)))
    save_guard(Guard(net, NoiseSpace.vp(), {"latent_format": latent_format}), path)


BAD = [
    ("broken", "CPSample cannot load guard 'broken.safetensors'"),
    ("sdxl", "does not fit this model: this guard was trained on SDXL latents but the model uses SD15 latents"),
    ("sd3", "this guard takes 16-channel latents (SD3) but the model's latent format SD15 has 4 channels"),
    ("missing", "guard 'missing.safetensors' not found in"),
    ("alpha", "CPSample alpha must lie in [0, 0.5], got 0.9"),
]


def test_bad_guards_are_refused_with_the_reason_and_the_server_keeps_serving(forge, small_txt2img, guard_name):
    folder = forge.models_dir / "cpsample"
    (folder / "broken.safetensors").write_bytes(b"this is not a safetensors file")
    _foreign_guard(folder / "sdxl.safetensors", "SDXL")
    _foreign_guard(folder / "sd3.safetensors", "SD3", channels=16)
    for case, message in BAD:
        name, alpha = (guard_name, 0.9) if case == "alpha" else (f"{case}.safetensors", 0.5)
        payload = {**small_txt2img(), "alwayson_scripts": {TITLE: {"args": [True, name, 1000.0, alpha]}}}
        status, body = forge.post("/sdapi/v1/txt2img", payload)
        assert status == 400, (case, body)
        assert message in body["detail"], (case, body)
    # the host is clean: an unprotected and a protected generation both run afterwards
    plain, info, _ = _run(forge, small_txt2img())
    assert not any(k.startswith("CPSample") for k in info["extra_generation_params"])
    on, _, _ = _run(forge, small_txt2img(), [True, guard_name, 5000.0, 0.5])
    assert not np.array_equal(plain, on)


def test_img2img_is_protected_too(forge, small_txt2img, guard_name):
    init = base64.b64encode((forge.input_dir / "demo" / "train_00.png").read_bytes()).decode()
    payload = {k: v for k, v in small_txt2img().items() if k not in ("width", "height")}
    payload.update({"init_images": [init], "denoising_strength": 0.8, "width": 64, "height": 64})
    results = {}
    for label, args in (("plain", None), ("on", [True, guard_name, 5000.0, 0.5])):
        p = dict(payload)
        if args is not None:
            p["alwayson_scripts"] = {TITLE: {"args": args}}
        status, body = forge.post("/sdapi/v1/img2img", p)
        assert status == 200, body
        results[label] = png_pixels(body["images"][0])
    assert not np.array_equal(results["plain"], results["on"])


def test_xyz_plot_scale_axis(forge, small_txt2img, guard_name):
    """The X/Y/Z plot's [CPSample] Scale axis turns protection on and sets the scale per cell."""
    xyz = next((s for s in forge.get("/sdapi/v1/script-info") if s["name"] == "x/y/z plot" and not s["is_img2img"]),
               None)
    labels = xyz["args"][0]["choices"] if xyz else []
    if "[CPSample] Scale" not in labels:
        pytest.skip("the X/Y/Z axes are added with the web UI (this Forge runs without it)")
    assert {"[CPSample] Alpha", "[CPSample] Start at", "[CPSample] End at"} <= set(labels)
    payload = small_txt2img()
    plain, _, _ = _run(forge, payload)
    payload.update({
        "script_name": "x/y/z plot",
        "script_args": [labels.index("[CPSample] Scale"), "0, 5000", [], 0, "", [], 0, "", [],
                        False, True, False, False, False, False, False, 0, False],
        # the accordion is off: the axis turns it on; the guard and alpha come from the accordion's args
        "alwayson_scripts": {TITLE: {"args": [False, guard_name, 1000.0, 0.5]}},
    })
    body = forge.txt2img(payload)
    cells = [png_pixels(b) for b in body["images"][-2:]]  # after the grid(s): one image per cell
    infotexts = json.loads(body["info"])["infotexts"][-2:]
    assert "CPSample scale: 0" in infotexts[0] and "CPSample scale: 5000" in infotexts[1], infotexts
    assert np.array_equal(cells[0], plain)
    assert not np.array_equal(cells[1], plain)


def test_interrupt_during_a_protected_generation_leaves_the_host_clean(forge, small_txt2img, guard_name):
    import threading
    import time

    before, _, _ = _run(forge, small_txt2img())
    result = {}
    payload = {**small_txt2img(steps=12), "alwayson_scripts": {TITLE: {"args": [True, guard_name, 5000.0, 0.5]}}}
    t = threading.Thread(target=lambda: result.setdefault("answer", forge.post("/sdapi/v1/txt2img", payload)))
    t.start()
    deadline = time.time() + 300
    while time.time() < deadline:
        state = forge.get("/sdapi/v1/progress?skip_current_image=true", timeout=30).get("state", {})
        if state.get("sampling_step", 0) >= 1 and state.get("job"):
            break
        time.sleep(0.2)
    forge.interrupt()
    t.join(timeout=300)
    status, body = result["answer"]
    assert status == 200, body  # an interrupted generation returns what it has
    # nothing of CPSample stays hooked: the next plain generation is the same image as before it
    after, info, _ = _run(forge, small_txt2img())
    assert not any(k.startswith("CPSample") for k in info["extra_generation_params"])
    assert np.array_equal(after, before)
