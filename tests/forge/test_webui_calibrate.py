"""Calibrating a guard through the extension's API route in a real Forge: the webui's own txt2img samples
the probes (with CPSample's post-CFG hook on every model call), the calibration lands in the guard file,
and a protected generation uses it. Bad input answers 400 naming the value; an Interrupt saves nothing.

The random-weight checkpoint copies none of the demo images, so calibration takes its "no copies" path
here; the path that finds copies runs on closed-form models (tests/test_webui_glue.py, tests/test_calibration.py)
and in ComfyUI on a copying model (tests/integration/test_calibrate_node.py).
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest
from PIL import Image

from cpsample_nodes.core import load_guard, read_metadata
from cpsample_nodes.webui.settings import INFOTEXT

pytestmark = pytest.mark.forge
STEPS = 4


def _guards_dir(forge):
    return forge.models_dir / "cpsample"


@pytest.fixture(scope="module")
def guard_name(train_demo_guard) -> str:
    return train_demo_guard("to calibrate")["name"]


def _body(forge, guard: str, **kw) -> dict:
    return {"guard": guard, "folder": str(forge.input_dir / "demo"), "prompt": "a red house",
            "sampler_name": "Euler", "scheduler": "Automatic", "steps": STEPS, "cfg_scale": 5, "probes": 8, **kw}


@pytest.fixture(scope="module")
def calibrated(forge, guard_name) -> tuple[dict, float]:
    t0 = time.time()
    status, body = forge.post("/cpsample/calibrate", _body(forge, guard_name), timeout=600)
    assert status == 200, body
    return body, time.time() - t0


def test_calibrate_route_samples_the_probes_with_the_webui(calibrated, guard_name):
    body, seconds = calibrated
    report = body["report"]
    assert body["stopped"] is False and body["name"] == guard_name
    assert "8 training images" in report and "at 64x64 px" in report, report
    assert "note: these are not exactly" not in report, report  # the same latents as training made
    assert "calibration on 8 probe seeds (Euler/Automatic, 4 steps, cfg 5, 64x64 px (SD15 model))" in report, report
    assert "unguarded: 0 of 8 probes copy" in report and "no copies among 8 probes" in report, report
    # every model call of every probe went through CPSample's post-CFG hook: 8 probes x 4 Euler steps
    assert "32 model calls" in report, report
    picture = Image.open(io.BytesIO(base64.b64decode(body["picture"])))
    assert picture.size[0] >= 320 and picture.size[1] > 0
    assert body["summary"].startswith("no copies among 8 probes")
    assert seconds < 300, f"calibration took {seconds:.0f} s"


def test_the_guard_file_carries_the_calibration_and_protection_uses_it(calibrated, forge, small_txt2img,
                                                                       guard_name):
    body, _ = calibrated
    path = _guards_dir(forge) / guard_name
    stored = json.loads(read_metadata(path)["calibration"])
    assert stored == body["calibration"] and stored["probes"] == 8 and stored["no_copies"] is True
    assert stored["sampler"].startswith("Euler/Automatic, 4 steps")
    guard = load_guard(path)
    assert guard.info["n_images"] == 8 and guard.calibrated_settings() == stored["settings"]
    assert not [p.name for p in _guards_dir(forge).iterdir() if p.name.startswith(".")]
    # the accordion's "Use the guard's calibration" (on by default): the infotext says what was used
    payload = {**small_txt2img(), "alwayson_scripts": {"CPSample": {"args": [True, guard_name, 5000.0, 0.5]}}}
    info = json.loads(forge.txt2img(payload)["info"])["extra_generation_params"]
    assert info[INFOTEXT["alpha"]] == stored["settings"]["alpha"], info
    assert info[INFOTEXT["scale"]] == stored["settings"]["scale"], info


@pytest.mark.parametrize("change, message", [
    ({"guard": "nope"}, "guard 'nope' not found"),
    ({"folder": "MISSING"}, "does not exist"),
    ({"sampler_name": "Eulr"}, "sampler_name 'Eulr' is not a sampler of this webui; it has: "),
    ({"scheduler": "Sometimes"}, "scheduler 'Sometimes' is not a scheduler of this webui"),
    ({"probes": 4}, "probes must be between 8 and 4096"),
    ({"width": 64}, "width 64 and height 0: set both"),
    ({"save_as": "../out"}, "guard name '../out' is not allowed"),
    ({"stepz": 3}, "unknown field 'stepz'"),
])
def test_calibrate_route_refuses_bad_input_and_keeps_serving(forge, guard_name, tmp_path, change, message):
    if change.get("folder") == "MISSING":
        change = {"folder": str(tmp_path / "nope")}
    before = {p.name: p.stat().st_mtime_ns for p in _guards_dir(forge).iterdir()}
    status, answer = forge.post("/cpsample/calibrate", {**_body(forge, guard_name), **change}, timeout=300)
    assert status == 400, answer
    assert message in answer["detail"], answer
    assert {p.name: p.stat().st_mtime_ns for p in _guards_dir(forge).iterdir()} == before
    assert forge.get("/sdapi/v1/progress", timeout=30) is not None


def test_interrupt_during_calibration_saves_nothing(forge, guard_name):
    result = {}
    before = {p.name: p.stat().st_mtime_ns for p in _guards_dir(forge).iterdir()}

    def run():
        result["answer"] = forge.post("/cpsample/calibrate", _body(forge, guard_name, probes=4096,
                                                                   save_as="interrupted"), timeout=600)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 300
    while time.time() < deadline:
        state = forge.get("/sdapi/v1/progress?skip_current_image=true", timeout=30).get("state", {})
        if state.get("job") == "cpsample_calibrate_guard" and state.get("job_no", 0) >= 8:
            break  # the first chunk of probes is done
        time.sleep(0.2)
    else:
        pytest.fail(f"calibration never reported progress: {state}")
    assert state.get("job_count", 0) >= 4096  # the progress bar counts probe images
    forge.interrupt()
    t.join(timeout=300)
    status, answer = result["answer"]
    assert status == 200, answer
    assert answer["stopped"] is True and "nothing was saved" in answer["report"], answer
    assert {p.name: p.stat().st_mtime_ns for p in _guards_dir(forge).iterdir()} == before
    assert forge.get("/sdapi/v1/progress", timeout=30) is not None
