"""Fixtures that run the extension inside a real Forge (dfdcbab6, offline, CPU): no mocks.

The environment comes from tools/forge_env.py (built once into .cache/forge/: a few minutes the first
time, instant after). One server per test session, on a free port, with its own data directory
(tools/forge_harness.py):

    data/extensions/CPSample -> this repository    (the extension, as users install it)
    data/extensions/cpsample-test-copying-model    (test-only: POST /cpsample-test/copying-model makes the
                                                    loaded checkpoint copy a folder's images; test_families_forge)
    data/models/Stable-diffusion/sd15-random.safetensors, data/models/cpsample/ (guards)
    data/outputs/, input/demo/ (8 small PNGs), forge.log

Fixtures: `forge_env` (paths of the built environment), `forge` (the running server: .url, .get,
.post, .txt2img, .log(), .models_dir, .input_dir, .data_dir), `small_txt2img` (a fast payload).
Set CPSAMPLE_REQUIRE_FORGE=1 (CI) to fail instead of skipping when the environment cannot be built.
Set CPSAMPLE_KEEP_FORGE=1 to keep the temporary directory (its path is printed).
Set CPSAMPLE_FORGE_NOWEBUI=1 to start the API only (faster; the browser test then skips).
The server runs with OMP_NUM_THREADS=1 (CPSAMPLE_FORGE_THREADS=N to change, 0 for torch's default).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cross_host.py, shared by the tests that cross to ComfyUI

import forge_env as forge_env_lib  # noqa: E402  (the fixture below takes the plain name)
import forge_harness as FH  # noqa: E402
import cdp  # noqa: E402


@pytest.fixture(scope="session")
def forge_env() -> dict:
    t0 = time.time()
    try:
        env = forge_env_lib.ensure()
    except (subprocess.CalledProcessError, OSError, RuntimeError, SystemExit) as e:
        if os.environ.get("CPSAMPLE_REQUIRE_FORGE"):
            raise
        pytest.skip(f"cannot build the offline Forge test environment (tools/forge_env.py): {e}")
    env["build_s"] = round(time.time() - t0, 1)
    return env


_RUNNING: list = []  # the session's Forge, for the early stop below


def pytest_runtest_teardown(item, nextitem):
    """Stop Forge after the last test that uses it: the session's other tests (ComfyUI, units) should not
    run next to an idle server holding ~7 GB of memory."""
    if not _RUNNING:
        return
    items = item.session.items
    later = items[items.index(item) + 1:] if item in items else []
    if not any("forge" in getattr(it, "fixturenames", ()) for it in later):
        for server in _RUNNING:
            server.stop()


@pytest.fixture(scope="session")
def forge(forge_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("forge")
    copying = Path(__file__).parent / "copying_model_extension"  # test-only, see its script
    layout = FH.make_data_dir(root, Path(forge_env["checkpoint"]), extensions={"cpsample-test-copying-model": copying})
    threads = int(os.environ.get("CPSAMPLE_FORGE_THREADS", "1"))  # 0 = torch's default
    server = FH.ForgeServer(layout, forge_env["python"], forge_env["forge_dir"],
                            webui=not os.environ.get("CPSAMPLE_FORGE_NOWEBUI"), threads=threads or None)
    server.start(timeout=360)
    # Warm up: the first generation loads the model (~10 s); tests meet a loaded host and time only their own work.
    t0 = time.time()
    try:
        server.txt2img({"prompt": "warm-up", "seed": 0, "width": 64, "height": 64, "steps": 1,
                        "sampler_name": "Euler", "scheduler": "Automatic", "save_images": False})
    except BaseException:
        server.stop()
        raise
    server.first_txt2img_s = time.time() - t0
    print(f"\nForge {forge_env['forge_version']} at {server.url} (startup {server.startup_s:.1f} s, first "
          f"txt2img {server.first_txt2img_s:.1f} s), log {server.log_path}")
    _RUNNING.append(server)
    yield server
    server.stop()
    _RUNNING.remove(server)
    if os.environ.get("CPSAMPLE_KEEP_FORGE") or os.environ.get("CI"):
        print(f"\n--- Forge log tail ({server.log_path}) ---\n{server.log()[-4000:]}")
    if os.environ.get("CPSAMPLE_KEEP_FORGE"):
        print(f"\nForge test directory kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)  # outputs, guards, config of this session


@pytest.fixture
def forge_ui(forge):
    """The Forge server, for tests that open its page in headless Chromium: skipped when Forge runs
    without its web UI; a missing chromium fails under CPSAMPLE_REQUIRE_FORGE, as a missing Forge does."""
    if not forge.webui:
        pytest.skip("Forge runs without its web UI (CPSAMPLE_FORGE_NOWEBUI)")
    if cdp.find_chromium() is None:
        if os.environ.get("CPSAMPLE_REQUIRE_FORGE"):
            pytest.fail("chromium is missing (tools/ensure_chromium.sh installs it)")
        pytest.skip("chromium is missing")
    return forge


@pytest.fixture(scope="session")
def train_demo_guard(forge):
    """Train a guard on the shipped demo images through the extension's route; returns its answer."""

    def train(name: str, max_steps: int = 20) -> dict:
        status, body = forge.post("/cpsample/train", {"folder": str(forge.input_dir / "demo"), "name": name,
                                                      "max_steps": max_steps, "batch_size": 8, "overwrite": True})
        assert status == 200, body
        return body

    return train


@pytest.fixture
def small_txt2img():
    """A txt2img payload small enough for a CPU (64×64, 3 steps); keyword arguments override fields."""

    def make(**over) -> dict:
        payload = {"prompt": "a photo of a cat", "negative_prompt": "", "seed": 1234, "width": 64, "height": 64,
                   "steps": 3, "cfg_scale": 5.0, "sampler_name": "Euler", "scheduler": "Automatic",
                   "batch_size": 1, "n_iter": 1, "send_images": True, "save_images": False}
        payload.update(over)
        return payload

    return make


def pytest_configure(config):
    config.addinivalue_line("markers", "forge: runs a real Forge server (slow, builds .cache/forge first)")
