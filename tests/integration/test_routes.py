"""GET /cpsample/guard_info on the real ComfyUI: facts for listed guards, clear refusals for the rest."""
from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from cpsample_nodes.core import Guard, GuardConfig, GuardNet, NoiseSpace, save_guard  # noqa: E402

pytestmark = pytest.mark.integration


def guard_info(comfy, name: str | None) -> tuple[int, dict]:
    query = "" if name is None else "?name=" + urllib.parse.quote(name, safe="")
    try:
        return 200, comfy.get("/cpsample/guard_info" + query)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def listed_guard(comfy_layout) -> str:
    """An untrained guard with recorded facts, in the extra `cpsample:` folder of the yaml."""
    import torch

    torch.manual_seed(0)
    guard = Guard(GuardNet(GuardConfig(in_channels=4)), NoiseSpace.vp(),
                  info={"latent_format": "SD15", "model_sampling": "ModelSamplingDiscrete+EPS", "n_images": 5,
                        "image_size": "64x48", "steps": 7, "accuracy": {"0.0413-0.1": 0.6}, "memorised": False})
    save_guard(guard, str(Path(comfy_layout["extra_guards"]) / "routes_guard.safetensors"))
    return "routes_guard.safetensors"


def test_facts_of_a_listed_guard(comfy, listed_guard):
    status, facts = guard_info(comfy, listed_guard)
    assert status == 200, facts
    assert facts["name"] == listed_guard and facts["images"] == 5 and facts["image_size"] == "64x48"
    assert facts["latent_format"] == "SD15" and facts["noise_kind"] == "vp" and facts["steps"] == 7
    assert facts["accuracy"] == {"0.0413-0.1": 0.6} and facts["memorised"] is False
    assert facts["parameters"] > 1000 and facts["file_kb"] > 1
    assert len(json.dumps(facts)) < 4000  # facts only: no tensors, no image data


@pytest.mark.parametrize("name,status,words", [
    (None, 400, "missing ?name="),
    ("../cpsample_extra/routes_guard.safetensors", 400, "'..'"),
    ("a/../../b.safetensors", 400, "'..'"),
    ("/etc/passwd", 400, "absolute path"),
    ("C:\\guards\\g.safetensors", 400, "absolute path"),
    ("comfyui.log", 400, "not a guard file"),
    ("tiny-sd15.safetensors", 404, "no guard named"),  # a checkpoint, not in the guard folders
    ("no_such_guard.safetensors", 404, "no guard named"),
    ("not_a_guard.safetensors", 400, "not a CPSample guard file"),  # listed, but not a guard
])
def test_refusals_are_clear(comfy, name, status, words):
    got, body = guard_info(comfy, name)
    assert got == status and words in body.get("error", ""), (got, body)
