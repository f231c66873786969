"""Fixtures that run the pack inside a real ComfyUI (0.3.75, offline, CPU) — no mocks.

The environment comes from tools/comfyui_env.py (built once into .cache/comfyui/, minutes the first
time, instant after). One server per test session, on a free port, in a temporary base directory:

    base/custom_nodes/CPSample -> this repo        (the pack as users install it)
    shared_models/{checkpoints,loras,cpsample_extra} via --extra-model-paths-config
    input/cpsample_demo, cpsample_mixed, cpsample_empty, cpsample_noimages, cpsample_corrupt, cpsample_copy.png
    output/, temp/, user/, comfyui.log

Set CPSAMPLE_REQUIRE_COMFYUI=1 (CI) to fail instead of skipping when the environment cannot be built.
Set CPSAMPLE_KEEP_COMFYUI=1 to keep the temporary directory (its path is printed).
The server runs with OMP_NUM_THREADS=1 (CPSAMPLE_COMFY_THREADS=N to change, 0 for torch's default): on a
shared 2-core machine torch's libgomp threads spin and make the tiny test ops 4x slower.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # pack_helpers.py, shared by the pack tests

import comfyui_harness as H  # noqa: E402


def _make_guard_file(path: Path, channels: int, kind: str, latent_format: str) -> None:
    """A real (untrained) guard file for mismatch tests, written with the project's own core."""
    import torch

    sys.path.insert(0, str(REPO))
    from cpsample_nodes.core import Guard, GuardConfig, GuardNet, NoiseSpace, save_guard

    space = NoiseSpace.flow() if kind == "flow" else NoiseSpace.vp()
    torch.manual_seed(0)
    guard = Guard(GuardNet(GuardConfig(in_channels=channels)), space,
                  info={"latent_format": latent_format, "model_sampling": "test", "n_images": 4})
    save_guard(guard, path)


@pytest.fixture(scope="session")
def comfy_layout(comfy_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("comfyui")
    layout = H.make_layout(root, Path(comfy_env["checkpoint"]))
    # A copy of a training image at the top of the input dir (LoadImage lists only that level).
    shutil.copy(layout["folders"]["demo"] / "train_03.png", layout["input"] / "cpsample_copy.png")
    # Guards that must be refused on the SD1.5 model (shown in the dropdown through the yaml folder).
    _make_guard_file(layout["extra_guards"] / "flux16_guard.safetensors", 16, "flow", "Flux")
    _make_guard_file(layout["extra_guards"] / "sdxl_guard.safetensors", 4, "vp", "SDXL")
    (layout["extra_guards"] / "not_a_guard.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    # A test-only pack with a model that copies its training images (Calibrate Guard's tests).
    (Path(layout["base"]) / "custom_nodes" / "test_models_pack").symlink_to(
        Path(__file__).resolve().parent / "test_models_pack", target_is_directory=True)
    yield layout
    if os.environ.get("CPSAMPLE_KEEP_COMFYUI"):
        print(f"\nComfyUI test directory kept: {root}")


@pytest.fixture(scope="session")
def comfy(comfy_env, comfy_layout):
    threads = int(os.environ.get("CPSAMPLE_COMFY_THREADS", "1"))  # 0 = torch's default
    server = H.ComfyServer(comfy_layout, comfy_env["python"], comfy_env["comfyui"], threads=threads or None)
    server.start(timeout=240)
    print(f"\nComfyUI {comfy_env['comfyui_version']} at {server.url} (startup {server.startup_s:.1f} s), "
          f"log {server.log_path}")
    yield server
    server.stop()
    if os.environ.get("CPSAMPLE_KEEP_COMFYUI") or os.environ.get("CI"):
        tail = server.log()[-4000:]
        print(f"\n--- ComfyUI log tail ({server.log_path}) ---\n{tail}")


@pytest.fixture(scope="session")
def object_info(comfy):
    return comfy.object_info()


@pytest.fixture
def run_prompt(comfy):
    """Queue an API prompt; return the /history entry, asserting it finished as expected."""

    def run(prompt: dict, expect: str = "success", timeout: float = 300) -> dict:
        entry = comfy.run(prompt, timeout=timeout)
        status = entry["status"]["status_str"]
        if status != expect:
            err = H.history_error(entry)
            detail = (f"{err.get('node_type')} (node {err.get('node_id')}): {err.get('exception_type')}: "
                      f"{err.get('exception_message')}\n{''.join(err.get('traceback') or [])}" if err else entry)
            raise AssertionError(f"prompt finished with {status!r}, expected {expect!r}: {detail}\n"
                                 f"log tail:\n{comfy.log()[-3000:]}")
        return entry

    return run


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: runs a real ComfyUI server (slow, needs .cache/comfyui)")
