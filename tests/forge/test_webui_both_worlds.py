"""One guard, both worlds: a guard trained in a real ComfyUI protects in a real Forge, and one trained
in Forge protects in ComfyUI, as the same file with the same metadata and the same noise space.

Both hosts run SD1.5-family checkpoints (ComfyUI the project's tiny SD1.5-shaped one, Forge the
full-size random one), so the guards describe the same family: latent format SD15, sampling
ModelSamplingDiscrete+EPS, the same σ range. ComfyUI runs in this module only (a second server
next to the session's Forge).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cpsample_nodes.core import load_guard
from cross_host import assert_same_family, comfy_run, comfy_sample, comfy_server, forge_pixels

pytestmark = [pytest.mark.forge, pytest.mark.integration]


@pytest.fixture(scope="module")
def comfy(comfy_env, tmp_path_factory):
    with comfy_server(comfy_env, tmp_path_factory.mktemp("comfyui_both")) as running:
        yield running


def _comfy_sample(server, layout, prefix: str, guard: str | None) -> torch.Tensor:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": layout["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red house"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
    }
    return comfy_sample(server, layout, graph, ["1", 0], ["2", 0], ["3", 0], prefix, guard)


def test_one_guard_both_worlds(forge, comfy, small_txt2img, train_demo_guard):
    server, layout = comfy
    # a guard trained in ComfyUI (Train Guard -> Save Guard) ...
    comfy_run(server, {
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
    assert_same_family(from_comfy, from_forge, "SD15", "ModelSamplingDiscrete+EPS")
    assert load_guard(from_comfy).info["host"].startswith("ComfyUI")
    assert load_guard(from_forge).info["host"].startswith("Forge")

    # ComfyUI's guard protects in Forge
    shutil.copy(from_comfy, forge.models_dir / "cpsample" / "from_comfy.safetensors")
    payload = small_txt2img()
    plain = forge_pixels(forge, payload)
    guarded = forge_pixels(forge, payload, [True, "from_comfy.safetensors", 5000.0, 0.5])
    assert not np.array_equal(plain, guarded), "the ComfyUI guard changed nothing in Forge"

    # Forge's guard protects in ComfyUI
    shutil.copy(from_forge, Path(layout["guards"]) / "from_forge.safetensors")
    plain_c = _comfy_sample(server, layout, "plain", None)
    guarded_c = _comfy_sample(server, layout, "guarded", "from_forge.safetensors")
    assert torch.isfinite(guarded_c).all()
    assert not torch.equal(plain_c, guarded_c), "the Forge guard changed nothing in ComfyUI"
