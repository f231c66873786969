"""Server routes of the pack (registered once, on ComfyUI's PromptServer, when the pack loads).

GET /cpsample/guard_info?name=<file> → the guard's facts (guard_facts.py) for Load Guard's panel, so the
panel fills as soon as a file is picked, before anything runs. Only files that Load Guard's dropdown
lists are read: names from the pack's `cpsample` model folders, `.safetensors`, no folders climbed out
of, no absolute paths. Refusals are 400 (bad name, not a guard file) or 404 (no such guard), with a
JSON {"error": message}. Guard files hold no images, and nothing here returns image data.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from . import paths

log = logging.getLogger("CPSample")

GUARD_INFO = "/cpsample/guard_info"
_registered = False


class RouteError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_name(name: str | None) -> str:
    """The guard name if it may be read, else RouteError(400) saying why."""
    if not name:
        raise RouteError(400, "missing ?name=<guard file>: a file name from models/cpsample/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise RouteError(400, f"{name!r} is an absolute path: give a guard file name from models/cpsample/")
    parts = name.replace("\\", "/").split("/")
    if any(p in ("..", ".") for p in parts) or "\x00" in name:
        raise RouteError(400, f"{name!r} leaves the guard folders: '..' and '.' are not allowed in guard names")
    if os.path.splitext(name)[1].lower() not in paths.EXTENSIONS:
        raise RouteError(400, f"{name!r} is not a guard file: guards are .safetensors files in models/cpsample/")
    return name


def _guard_dirs() -> list[str]:
    import folder_paths

    paths.register()
    return folder_paths.get_folder_paths(paths.FOLDER_KEY)


def guard_info(name: str | None) -> dict[str, Any]:
    """Facts of the listed guard ``name``; RouteError for anything else."""
    from ..core import GuardFileError, load_guard
    from .guard_facts import guard_facts

    name = check_name(name)
    if name not in paths.guard_files():
        raise RouteError(404, f"no guard named {name!r} in models/cpsample/ (or a 'cpsample:' folder of "
                              f"extra_model_paths.yaml)")
    path = paths.guard_path(name)
    if not any(os.path.commonpath([os.path.abspath(path), os.path.abspath(d)]) == os.path.abspath(d)
               for d in _guard_dirs()):
        raise RouteError(400, f"{name!r} resolves outside the guard folders")
    try:
        guard = load_guard(path)
    except GuardFileError as e:
        raise RouteError(400, f"{name!r} is not a CPSample guard file: {e}") from None
    return guard_facts(guard, name, path)


def register() -> None:
    """Add the routes to ComfyUI's server (idempotent; a no-op outside a running ComfyUI)."""
    global _registered
    if _registered:
        return
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return

    @server.routes.get(GUARD_INFO)
    async def _guard_info(request):
        try:
            return web.json_response(guard_info(request.rel_url.query.get("name")))
        except RouteError as e:
            return web.json_response({"error": str(e)}, status=e.status)
        except Exception as e:  # noqa: BLE001 - a route must answer, not take the server's handler down
            log.exception("CPSample guard_info failed")
            return web.json_response({"error": f"cannot read guard info: {type(e).__name__}: {e}"}, status=500)

    _registered = True
