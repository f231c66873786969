"""ComfyUI glue for CPSample. Every module here imports ComfyUI (comfy, folder_paths, comfy_api) and is
imported only from inside a running ComfyUI (the pack's `comfy_entrypoint`)."""
