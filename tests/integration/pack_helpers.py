"""Helpers shared by the tests that run the pack in a real ComfyUI (test_comfyui_pack.py, test_calibrate_node.py,
test_dataset_folders.py): API prompts, the text a node showed, a node's error, a saved latent, a cancel.
conftest.py puts this folder on sys.path."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import comfyui_harness as H

CKPT = "tiny-sd15.safetensors"


def ui_text(entry: dict, node_id) -> str:
    """Text a node showed in the UI (PreviewAny / PreviewText)."""
    text = entry["outputs"].get(str(node_id), {}).get("text")
    if isinstance(text, (list, tuple)):
        return "\n".join(str(t) for t in text)
    return str(text or "")


def error_of(entry: dict) -> dict:
    err = H.history_error(entry)
    assert err is not None, f"no execution_error in {entry['status']}"
    return err


def sample_prompt(prefix: str, guard: str | None = None, scale: float = 1.0, alpha: float = 0.5,
                  cfg: float = 5.0, seed: int = 3, steps: int = 4, sampler: str = "euler",
                  guard_input: str = "denoised", size: int = 64, settings: str | None = None) -> dict:
    """txt2img that saves the final latent (exact comparison), optionally through Protect Model
    (``settings`` None: the prompt has no settings input, as one saved before it existed)."""
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red house"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 2}},
        "6": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                         "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
                         "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"latents/{prefix}"}},
    }
    if guard is not None:
        p["10"] = {"class_type": "CPSampleLoadGuard", "inputs": {"guard_name": guard}}
        p["11"] = {"class_type": "CPSampleProtectModel",
                   "inputs": {"model": ["1", 0], "guard": ["10", 0], "scale": scale, "alpha": alpha,
                              "start_percent": 0.0, "end_percent": 1.0, "objective": "uncertainty",
                              "guard_input": guard_input}}
        if settings is not None:
            p["11"]["inputs"]["settings"] = settings
        p["6"]["inputs"]["model"] = ["11", 0]
    return p


def replication_prompt(image: str, folder: str, k: int = 5, clip_vision: str | None = None,
                       grid: bool = False) -> dict:
    """Replication Check of one input image against ``folder``: its report in node 3 (PreviewAny), with
    ``grid`` the generated | nearest picture in node 4, with ``clip_vision`` that model's embeddings too."""
    p = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "CPSampleReplicationCheck",
              "inputs": {"images": ["1", 0], "folder": folder, "k": k, "ratio_threshold": 0.333,
                         "ssim_threshold": 0.9}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    if grid:
        p["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}
    if clip_vision is not None:
        p["5"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": clip_vision}}
        p["2"]["inputs"]["clip_vision"] = ["5", 0]
    return p


def saved_latent(comfy_layout, prefix: str) -> torch.Tensor:
    files = sorted((Path(comfy_layout["output"]) / "latents").glob(f"{prefix}_*.latent"))
    assert files, f"no latent saved for {prefix}"
    return load_file(str(files[-1]))["latent_tensor"]


def assert_still_serving(comfy, run_prompt):
    assert comfy.alive()
    assert comfy.get("/system_stats")["system"]["comfyui_version"]
    entry = run_prompt({"1": {"class_type": "PreviewAny", "inputs": {"source": "still serving"}}})
    assert ui_text(entry, 1) == "still serving"


def interrupt_when_running(comfy, prompt: dict, after: float) -> dict:
    """Queue ``prompt`` and press Cancel ``after`` seconds once it runs; → its /history entry, asserting it
    stopped within 10 s as an interrupted run."""
    pid = comfy.queue(prompt)
    t0 = time.time()
    while time.time() - t0 < 60:  # wait until it is running
        if any(item[1] == pid for item in comfy.get("/queue").get("queue_running", [])):
            break
        time.sleep(0.1)
    time.sleep(after)
    t1 = time.time()
    comfy.interrupt()
    entry = comfy.wait(pid, timeout=60)
    assert time.time() - t1 < 10
    assert entry["status"]["status_str"] == "error"
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    return entry
