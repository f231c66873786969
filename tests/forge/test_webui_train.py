"""Training a guard through the extension's API route in a real Forge, and the route's bad inputs.

The guard is trained on the checkpoint Forge has loaded, through Forge's own VAE encoding and noise
schedule; it must load with the core's load_guard and describe the model as ComfyUI would (SD15,
ModelSamplingDiscrete+EPS), so the same file protects in both hosts.
"""
from __future__ import annotations

import threading
import time

import pytest

from cpsample_nodes.core import load_guard

pytestmark = pytest.mark.forge


def _guards_dir(forge):
    return forge.models_dir / "cpsample"


def _alive(forge) -> None:
    """The server still answers after an error."""
    assert forge.get("/sdapi/v1/progress", timeout=30) is not None


def test_train_route_makes_a_guard_that_loads(forge):
    status, body = forge.post("/cpsample/train", {"folder": str(forge.input_dir / "demo"), "name": "route demo",
                                                  "max_steps": 20, "batch_size": 8, "seed": 3})
    assert status == 200, body
    assert body["stopped"] is False and body["name"] == "route demo.safetensors"
    path = _guards_dir(forge) / "route demo.safetensors"
    assert body["path"] == str(path) and path.is_file()
    guard = load_guard(path)
    assert guard.latent_channels == 4 and guard.space.kind == "vp"
    assert guard.info["latent_format"] == "SD15"
    assert guard.info["model_sampling"] == "ModelSamplingDiscrete+EPS"
    assert guard.info["host"].startswith("Forge") and guard.info["n_images"] == 8
    assert guard.info["image_size"] == "64x64" and guard.info["steps"] <= 20
    assert "8 images at 64x64 px" in body["report"] and "SD15" in body["report"]
    assert "route demo.safetensors" in forge.get("/cpsample/guards")["guards"]
    # no temporary files next to it
    assert not [p.name for p in _guards_dir(forge).iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("body, message", [
    ({"folder": "EMPTY"}, "is empty"),
    ({"folder": "MISSING"}, "does not exist"),
    ({"folder": "DEMO", "name": "../outside"}, "guard name '../outside' is not allowed"),
    ({"folder": "DEMO", "max_steps": 0}, "max_steps and batch_size must be at least 1"),
    ({"folder": "DEMO", "stepz": 5}, "unknown field 'stepz'"),
    ({"folder": "DEMO", "heads": 0}, "heads must lie between 1 and 16, got 0"),
    ({}, "no training images"),
])
def test_train_route_refuses_bad_input_and_keeps_serving(forge, tmp_path, body, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    folders = {"EMPTY": str(empty), "MISSING": str(tmp_path / "nope"), "DEMO": str(forge.input_dir / "demo")}
    if "folder" in body:
        body = {**body, "folder": folders[body["folder"]]}
    before = sorted(p.name for p in _guards_dir(forge).iterdir())
    status, answer = forge.post("/cpsample/train", body, timeout=120)
    assert status == 400, answer
    assert message in answer["detail"], answer
    if body.get("folder") in (folders["EMPTY"], folders["MISSING"]):
        assert body["folder"] in answer["detail"]  # the message names the folder
    assert sorted(p.name for p in _guards_dir(forge).iterdir()) == before
    _alive(forge)


def test_interrupt_during_training_saves_nothing(forge):
    result = {}

    def run():
        result["answer"] = forge.post("/cpsample/train", {"folder": str(forge.input_dir / "demo"),
                                                          "name": "interrupted", "max_steps": 100000,
                                                          "batch_size": 8}, timeout=600)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 300
    while time.time() < deadline:
        progress = forge.get("/sdapi/v1/progress?skip_current_image=true", timeout=30)
        state = progress.get("state", {})
        if state.get("job") == "cpsample_train_guard" and state.get("sampling_step", 0) >= 1:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"training never reported progress: {progress}")
    assert state.get("sampling_steps") == 100000  # the webui's progress bar sees the training
    forge.interrupt()
    t.join(timeout=300)
    status, answer = result["answer"]
    assert status == 200, answer
    assert answer["stopped"] is True and "nothing was saved" in answer["report"]
    names = [p.name for p in _guards_dir(forge).iterdir()]
    assert not [n for n in names if "interrupted" in n], names  # neither the guard nor a temporary file
    _alive(forge)


def test_check_route_finds_a_copy_and_draws_the_pairs(forge):
    import base64
    import io

    from PIL import Image

    demo = forge.input_dir / "demo"
    copy = base64.b64encode((demo / "train_05.png").read_bytes()).decode()
    other = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 140, 200)).save(other, format="PNG")
    fresh = base64.b64encode(other.getvalue()).decode()
    status, body = forge.post("/cpsample/check", {"images": [copy, "data:image/png;base64," + fresh],
                                                  "folder": str(demo), "k": 3})
    assert status == 200, body
    assert body["flagged"] == 1, body["report"]
    assert body["rows"][0]["nearest"] == "train_05.png" and body["rows"][0]["ratio"] == 0.0
    assert "image 0: nearest train_05.png" in body["report"] and "LIKELY COPY" in body["report"].splitlines()[1]
    pairs = Image.open(io.BytesIO(base64.b64decode(body["pairs"])))
    assert pairs.width == 2 * 64 + 4 and pairs.height >= 2 * 64  # generated | nearest, one row each
    status, body = forge.post("/cpsample/check", {"images": ["not base64!"], "folder": str(demo)})
    assert status == 400 and "images[0] is not a readable base64 image" in body["detail"], body
    status, body = forge.post("/cpsample/check", {"images": [copy], "folder": str(demo / "nope")})
    assert status == 400 and "does not exist" in body["detail"], body
    _alive(forge)
