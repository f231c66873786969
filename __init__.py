"""CPSample for ComfyUI: train a guard on a fine-tune's images, sample away from them, check for copies.

ComfyUI imports this file as the pack (custom_nodes/CPSample/__init__.py) and calls `comfy_entrypoint`
(V3 node API, `comfy_api.latest`). The ComfyUI glue is imported lazily inside it, so importing the pack
outside ComfyUI (tests, tools) needs nothing from ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .cpsample_nodes.comfyui.extension import entrypoint

    return entrypoint()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
