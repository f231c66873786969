"""What the offline host environments share (tools/comfyui_env.py, tools/comfyui_cpu_env.py, tools/forge_env.py):
log lines, commands, the disk check, the venv with pinned torch, the build stamp, the course of a build
(`ensure`) and the command line.

Each builder keeps its own steps (where the host comes from, which checkpoint it makes); the stamp
records the builder's recipe, so a changed recipe rebuilds and a half-built one never looks ready.
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
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def log(name: str, msg: str) -> None:
    print(f"[{name}] {msg}", file=sys.stderr, flush=True)


def run(name: str, cmd: list, **kw) -> None:
    log(name, "$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def check_disk(name: str, folder: Path, needed_gb: float, what: str) -> None:
    """Refuse to start a build the disk under ``folder`` cannot hold, saying how much is free."""
    free_gb = shutil.disk_usage(folder).free / 2**30
    if free_gb < needed_gb:
        raise SystemExit(f"[{name}] only {free_gb:.1f} GB free under {folder}; building the {what} test "
                         f"environment needs about {needed_gb:g} GB. Free some space and run again.")


def build_venv(name: str, venv: Path, workdir: Path, torch_pins: list[str], reqs: list[str], pins: list[str],
               import_check: str) -> None:
    """A venv with ``torch_pins`` first, then the host's ``reqs`` and the pack's requirements.txt, all
    within ``torch_pins`` + ``pins``; ``import_check`` runs in it last (torchvision's C ops must load)."""
    py = venv_python(venv)
    if not py.exists():
        run(name, [sys.executable, "-m", "venv", venv])
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    run(name, pip + torch_pins)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cons = Path(tmp) / "constraints.txt"
        cons.write_text("\n".join(torch_pins + pins) + "\n")
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(reqs) + "\n")
        run(name, pip + ["-c", cons, "-r", req])
        # The pack's own requirements, within the host's pins (as its users get them).
        if (REPO / "requirements.txt").exists():
            run(name, pip + ["-c", cons, "-r", REPO / "requirements.txt"])
    run(name, [py, "-c", import_check])


def stamp_matches(stamp: Path, recipe: dict) -> bool:
    """True when ``stamp`` records exactly this recipe (a missing or unreadable stamp: False)."""
    try:
        return json.loads(stamp.read_text()).get("recipe_info") == recipe
    except (OSError, ValueError, AttributeError):
        return False


def write_stamp(stamp: Path, recipe: dict, started: float) -> None:
    stamp.write_text(json.dumps({"recipe_info": recipe, "built_s": round(time.time() - started, 1),
                                 "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))


def clear(files: tuple[Path, ...], dirs: tuple[Path, ...]) -> None:
    """Remove a previous build (``--force``)."""
    for p in files:
        p.unlink(missing_ok=True)
    for d in dirs:
        if d.exists():
            shutil.rmtree(d)


def ensure(name: str, force: bool, *, cache: Path, stamp: Path, checkpoint: Path, dirs: tuple[Path, ...],
           disk_for: tuple[Path, ...], check_disk: Callable[[], None], steps: tuple[Callable[[], None], ...],
           make_checkpoint: Callable[[], None], recipe: Callable[[], dict], is_ready: Callable[[], bool],
           paths: Callable[[], dict], also_clear: tuple[Path, ...] = ()) -> dict:
    """The builders' common course: nothing to do while ``is_ready()``. Otherwise (``force``: first remove
    ``dirs``, the checkpoint and ``also_clear``) drop the stamp, check the disk where any of ``disk_for`` is
    missing, run ``steps`` (the host, the venv), make the checkpoint anew and write the stamp last, so a
    half-built environment never looks ready. Returns ``paths()``."""
    cache.mkdir(parents=True, exist_ok=True)
    if not force and is_ready():
        return paths()
    t0 = time.time()
    if force:
        clear((stamp, checkpoint, *also_clear), dirs)
    stamp.unlink(missing_ok=True)
    if not all(p.exists() for p in disk_for):
        check_disk()
    for step in steps:
        step()
    checkpoint.unlink(missing_ok=True)  # the recipe changed: rebuild it
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    make_checkpoint()
    write_stamp(stamp, recipe(), t0)
    log(name, f"ready in {time.time() - t0:.0f} s")
    return paths()


def main(doc: str | None, ensure: Callable[..., dict], paths: Callable[[], dict],
         is_ready: Callable[[], bool]) -> int:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="rebuild everything")
    ap.add_argument("--check", action="store_true", help="exit 0 if built, 1 if not; build nothing")
    args = ap.parse_args()
    if args.check:
        print(json.dumps(paths()))
        return 0 if is_ready() else 1
    print(json.dumps(ensure(force=args.force), indent=1))
    return 0
