"""The V3 extension object ComfyUI gets from the pack's `comfy_entrypoint`."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import paths, routes


class CPSampleExtension(ComfyExtension):
    async def on_load(self) -> None:  # awaited by ComfyUI 0.38; 0.3.75 does not call it
        paths.register()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        paths.register()
        from .nodes import NODES

        return list(NODES)


def entrypoint() -> CPSampleExtension:
    paths.register()
    routes.register()  # before the server adds its routes (it does so after packs load)
    return CPSampleExtension()
