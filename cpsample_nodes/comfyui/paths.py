"""The `cpsample` model folder (models/cpsample/) for guard files, registered with folder_paths.

ComfyUI already owns the key `classifiers`, so guards get their own key. A user's
extra_model_paths.yaml may create the key `cpsample` before packs load, with an empty extension set
(which accepts every file): keep its paths, put models/cpsample first, and restrict to .safetensors.
"""
from __future__ import annotations

import os

FOLDER_KEY = "cpsample"
EXTENSIONS = {".safetensors"}


def register() -> None:
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER_KEY)
    paths, exts = folder_paths.folder_names_and_paths.get(FOLDER_KEY, ([], set()))
    paths = [default] + [p for p in paths if os.path.normcase(os.path.abspath(p)) != os.path.normcase(os.path.abspath(default))]
    folder_paths.folder_names_and_paths[FOLDER_KEY] = (paths, set(EXTENSIONS) | set(exts or ()))


def save_dir() -> str:
    """Where Save Guard writes: models/cpsample (created on first save)."""
    import folder_paths

    register()
    return folder_paths.get_folder_paths(FOLDER_KEY)[0]


def guard_files() -> list[str]:
    import folder_paths

    register()
    return folder_paths.get_filename_list(FOLDER_KEY)


def guard_path(name: str) -> str:
    import folder_paths

    register()
    return folder_paths.get_full_path_or_raise(FOLDER_KEY, name)
