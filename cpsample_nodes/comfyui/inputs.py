"""What the CPSample nodes share: their category, the guard socket type, the input folders they read
images from, and the text a node shows while it runs."""
from __future__ import annotations

import os
from pathlib import Path

from comfy_api.latest import io

from ..core import images as imgs

CATEGORY = "CPSample"
NO_FOLDER = "(none: use the images input)"
GUARD = io.Custom("CPSAMPLE_GUARD")


def input_dir() -> str:
    import folder_paths

    return folder_paths.get_input_directory()


def folder_options() -> list[str]:
    """Sub-folders of ComfyUI's input directory (hidden ones left out), then NO_FOLDER."""
    import folder_paths

    try:
        subs = folder_paths.get_input_subfolders()
    except AttributeError:  # older ComfyUI without get_input_subfolders
        base = input_dir()
        subs = sorted(os.path.relpath(r, base).replace(os.sep, "/") for r, _, _ in os.walk(base) if r != base)
    return [s for s in subs if not any(part.startswith(".") for part in s.split("/"))] + [NO_FOLDER]


def folder_path(folder: str) -> Path:
    """The input sub-folder ``folder``; ValueError for one that climbs out of the input directory."""
    base = os.path.realpath(input_dir())
    path = os.path.realpath(os.path.join(base, folder))
    if os.path.commonpath([base, path]) != base:
        raise ValueError(f"image folder {folder!r} is outside ComfyUI's input directory")
    return Path(path)


def chosen_folder(folder: str | None) -> Path | None:
    """The folder a combo input names, or None for NO_FOLDER (or no value)."""
    return folder_path(folder) if folder and folder != NO_FOLDER else None


def folder_fingerprint(folder: str | None) -> str:
    """Changes when the folder's files change, so a node re-runs then, not only on a new name."""
    if not folder or folder == NO_FOLDER:
        return ""
    try:
        return imgs.folder_fingerprint(folder_path(folder))
    except Exception as e:  # noqa: BLE001 - a broken folder is reported by execute, with its name
        return repr(e)


def node_id(cls) -> str | None:
    """The running node's id (its hidden unique_id), for progress text and events."""
    return cls.hidden.unique_id if getattr(cls, "hidden", None) is not None else None


def send_text(node_id: str | None, text: str) -> None:
    """Text shown on the node while it runs."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # noqa: BLE001 - progress text is cosmetic (absent in some versions)
        pass
