#!/usr/bin/env python3
"""Build (once) the offline Forge test environment for this extension, cached in `.cache/forge/`.

    python tools/forge_env.py            # build if needed, print the paths as JSON
    python tools/forge_env.py --force    # rebuild from scratch
    python tools/forge_env.py --check    # exit 0 if built, 1 if not; build nothing

What it makes (all git-ignored, never committed), from the source archives in `../shared/hosts/`
(nothing is cloned: CI has no GitHub either):

* `.cache/forge/webui/`        Forge (stable-diffusion-webui-forge dfdcbab6), with
                               `repositories/huggingface_guess/` (its model detector, the commit its
                               launcher pins) and `repositories/stable-diffusion-webui-assets/` (fonts, CSS).
* `.cache/forge/venv/`         Python venv: torch==2.14.1 + torchvision==0.29.1 (the pair that imports
                               together), Forge's requirements pinned to them with `-c` (its
                               `setuptools==69.5.1` pin replaced, `joblib` added), this extension's requirements.
* `.cache/forge/models/sd15-random.safetensors`  a random-weight, full-size SD1.5 checkpoint made from
                               Forge's own module classes (`tools/forge_checkpoint.py`); Forge detects it as SD15.
* `.cache/forge/stamp.json`    written last; while it matches the recipe a re-run does nothing.

Runs with any Python 3.10/3.11 (the project venv is fine); it needs only the standard library.
The venv gets the interpreter that runs this script: Forge accepts Python 3.7-3.11.
"""
from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import env_build  # tools/: the builder runs as a script from there, and the tests put it on sys.path

REPO = Path(__file__).resolve().parent.parent
# CPSAMPLE_FORGE_CACHE: build elsewhere (e.g. to time a from-scratch build beside a working one).
CACHE = Path(os.environ.get("CPSAMPLE_FORGE_CACHE", REPO / ".cache" / "forge")).resolve()
FORGE_DIR = CACHE / "webui"
VENV = CACHE / "venv"
MODELS = CACHE / "models"
CHECKPOINT = MODELS / "sd15-random.safetensors"
STAMP = CACHE / "stamp.json"

# The hosts' sources: next to the checkout in development, or where CPSAMPLE_HOSTS_DIR points.
HOSTS_DIR = Path(os.environ.get("CPSAMPLE_HOSTS_DIR", REPO.parent / "shared" / "hosts"))
FORGE_TAR = "stable-diffusion-webui-forge-dfdcbab6.tar.gz"
GUESS_TAR = "huggingface_guess-84826248.tar.gz"
ASSETS_TAR = "stable-diffusion-webui-assets-6f7db241.tar.gz"
FORGE_VERSION = "f2.0.1v1.10.1 (dfdcbab6)"

TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
# Forge's pin makes pip fall back to an old torch; >=77,<81 still ships pkg_resources,
# which pytorch_lightning 1.9.4 imports.
SETUPTOOLS = "setuptools>=77,<81"
EXTRA_REQS = ["joblib",     # imported by a built-in extension, missing from Forge's requirements
              "requests"]   # the checkpoint check and tests' helpers
RECIPE_VERSION = 1  # bump when the steps below change
NAME = "forge_env"

# torch's CUDA wheel with its nvidia libraries is ~5.5 GB, the rest of the venv ~1 GB,
# Forge ~0.1 GB, the checkpoint 2.1 GB.
NEEDED_FREE_GB = 10.0


def venv_python() -> Path:
    return env_build.venv_python(VENV)


def _recipe() -> dict:
    pack_req = REPO / "requirements.txt"
    return {
        "recipe": RECIPE_VERSION,
        "sources": [FORGE_TAR, GUESS_TAR, ASSETS_TAR],
        "torch": TORCH_PINS,
        "setuptools": SETUPTOOLS,
        "extra": EXTRA_REQS,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "pack_requirements": env_build.sha16(pack_req.read_bytes()) if pack_req.exists() else "",
        "checkpoint_script": env_build.sha16((REPO / "tools" / "forge_checkpoint.py").read_bytes()),
    }


def is_ready() -> bool:
    return (env_build.stamp_matches(STAMP, _recipe()) and venv_python().exists()
            and (FORGE_DIR / "launch.py").exists() and CHECKPOINT.exists())


def paths() -> dict:
    return {"forge_dir": str(FORGE_DIR), "python": str(venv_python()), "checkpoint": str(CHECKPOINT),
            "cache": str(CACHE), "forge_version": FORGE_VERSION}


def _source(name: str) -> Path:
    path = HOSTS_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the Forge test environment is built from the archives in "
                                f"{HOSTS_DIR} (set CPSAMPLE_HOSTS_DIR to their folder)")
    return path


def _untar_single(archive: Path, dest: Path, workdir: Path) -> None:
    """Unpack an archive holding one top-level folder into `dest` (replacing it)."""
    staging = Path(tempfile.mkdtemp(dir=workdir))
    with tarfile.open(archive) as tf:
        tf.extractall(staging, filter="data")
    tops = [p for p in staging.iterdir()]
    if len(tops) != 1 or not tops[0].is_dir():
        raise RuntimeError(f"{archive.name}: expected one top-level folder, found {[p.name for p in tops]}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tops[0].rename(dest)
    shutil.rmtree(staging)


def _unpack_forge() -> None:
    if (FORGE_DIR / "launch.py").exists():
        return
    staging = CACHE / "webui.partial"
    if staging.exists():
        shutil.rmtree(staging)
    _untar_single(_source(FORGE_TAR), staging, CACHE)
    repos = staging / "repositories"
    # Where Forge's launcher would clone them (modules/paths.py, modules/ui.py read these folders).
    _untar_single(_source(GUESS_TAR), repos / "huggingface_guess", CACHE)
    _untar_single(_source(ASSETS_TAR), repos / "stable-diffusion-webui-assets", CACHE)
    staging.rename(FORGE_DIR)  # last: a half-unpacked tree never looks complete
    env_build.log(NAME, f"Forge unpacked into {FORGE_DIR}")


def _check_disk() -> None:
    env_build.check_disk(NAME, CACHE, NEEDED_FREE_GB, "Forge")


def _forge_requirements() -> tuple[list, list]:
    """Forge's requirements_versions.txt as (requirements, constraints), torch and setuptools replaced."""
    reqs, pins = [], []
    for line in (FORGE_DIR / "requirements_versions.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        name = spec.split("==")[0].strip().lower()
        if not spec or name in ("torch", "torchvision", "torchaudio", "setuptools"):
            continue
        reqs.append(spec)
        if "==" in spec:
            pins.append(spec)
    return reqs + [SETUPTOOLS] + EXTRA_REQS, pins


def _build_venv() -> None:
    reqs, pins = _forge_requirements()
    # torchvision's C ops must load next to this torch, and pkg_resources must exist.
    env_build.build_venv(NAME, VENV, CACHE, TORCH_PINS, reqs, pins,
                         "import torch, torchvision, torchvision.ops, pkg_resources, pytorch_lightning, gradio; "
                         "print('torch', torch.__version__, 'torchvision', torchvision.__version__)")


def _build_checkpoint() -> None:
    env_build.run(NAME, [venv_python(), REPO / "tools" / "forge_checkpoint.py", "--forge", FORGE_DIR,
                         "--out", CHECKPOINT],
                  cwd=FORGE_DIR, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def ensure(force: bool = False) -> dict:
    # The disk check also where only the checkpoint (2.1 GB) is missing.
    return env_build.ensure(NAME, force, cache=CACHE, stamp=STAMP, checkpoint=CHECKPOINT, dirs=(FORGE_DIR, VENV),
                            disk_for=(venv_python(), CHECKPOINT), check_disk=_check_disk,
                            steps=(_unpack_forge, _build_venv), make_checkpoint=_build_checkpoint,
                            recipe=_recipe, is_ready=is_ready, paths=paths)


def main() -> int:
    return env_build.main(__doc__, ensure, paths, is_ready)


if __name__ == "__main__":
    sys.exit(main())
