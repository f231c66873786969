"""Guard files in a folder: listing, safe names for new files, cached loading, atomic saving.

Both hosts keep guards in ``models/cpsample/``; ComfyUI may add folders (extra_model_paths.yaml) and
resolves listed names itself, the webui resolves names here. New names are one rule everywhere:
letters, digits, space, ``. _ -``, no folders; an existing file is kept and a number added unless
overwriting is asked for.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..core import Guard, GuardFileError, load_guard, save_guard

EXTENSION = ".safetensors"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._\-]*$")


def list_guards(folder: str | os.PathLike) -> list[str]:
    """Guard files under ``folder`` (sub-folders included), as names relative to it, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if f.lower().endswith(EXTENSION) and not f.startswith("."):
                names.append(Path(root, f).relative_to(folder).as_posix())
    return sorted(names, key=str.lower)


def resolve(folder: str | os.PathLike, name: str) -> Path:
    """The file of guard ``name`` inside ``folder``; a clear error for a name that leaves the folder
    or names no file (a pasted infotext may name a guard this machine does not have)."""
    base = Path(folder).resolve()
    n = (name or "").strip()
    if not n:
        raise GuardFileError("no guard chosen")
    if not n.lower().endswith(EXTENSION):
        n += EXTENSION
    path = (base / n).resolve()
    if os.path.commonpath([base, path]) != str(base):
        raise GuardFileError(f"guard {name!r} is outside {base}")
    if not path.is_file():
        have = list_guards(base)
        listed = ", ".join(have[:8]) + (" …" if len(have) > 8 else "")
        raise GuardFileError(f"guard {name!r} not found in {base}"
                             f"{f' (it has: {listed})' if have else ' (it holds no guards yet)'}")
    return path


def new_path(folder: str | os.PathLike, name: str, overwrite: bool = False, what: str = "guard name") -> Path:
    """Where a new guard called ``name`` goes. A bad name is a ValueError naming it (``what``: how the
    host calls the field); without ``overwrite`` an existing file is kept and a number is added."""
    n = (name or "").strip()
    if n.lower().endswith(EXTENSION):
        n = n[: -len(EXTENSION)]
    if not SAFE_NAME.match(n) or ".." in n:
        raise ValueError(f"{what} {name!r} is not allowed: use letters, digits, space, '.', '_' or '-' "
                         f"(no folders)")
    folder = Path(folder)
    path = folder / (n + EXTENSION)
    i = 1
    while not overwrite and path.exists():
        path = folder / f"{n}_{i:05d}{EXTENSION}"
        i += 1
    return path


def save_new(guard: Guard, folder: str | os.PathLike, name: str, overwrite: bool = False,
             what: str = "guard name") -> Path:
    """Save ``guard`` as ``name`` in ``folder`` (see ``new_path``), atomically; returns the file."""
    return save_guard(guard, new_path(folder, name, overwrite, what))


# Loaded guards by file, valid while the file's size and mtime stay the same.
_CACHE: dict[Path, tuple[tuple[int, int], Guard]] = {}


def load(folder: str | os.PathLike, name: str) -> Guard:
    """Guard ``name`` from ``folder`` (re-read when the file changed); GuardFileError says why not."""
    return load_file(resolve(folder, name))


def load_file(path: Path) -> Guard:
    """The guard in ``path``, cached until the file changes (one guard in memory is enough)."""
    st = path.stat()
    stamp = (st.st_size, st.st_mtime_ns)
    hit = _CACHE.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    guard = load_guard(path)
    _CACHE.clear()
    _CACHE[path] = (stamp, guard)
    return guard
