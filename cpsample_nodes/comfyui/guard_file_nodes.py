"""CPSample Save Guard and Load Guard: guard files in models/cpsample/ (node ids CPSampleSaveGuard,
CPSampleLoadGuard). Names and atomic saving are ``usecases.guard_files``; ComfyUI's folder_paths lists
and resolves the files (``paths.py``)."""
from __future__ import annotations

import json
import logging
import os

from comfy_api.latest import io, ui

from ..core import GuardFileError, load_guard
from ..usecases import guard_files
from . import paths
from .guard_facts import guard_facts
from .inputs import CATEGORY, GUARD

log = logging.getLogger("CPSample")


class SaveGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleSaveGuard",
            display_name="CPSample Save Guard",
            category=CATEGORY,
            description="Saves a guard to models/cpsample/ as .safetensors (weights + metadata, no image names).",
            inputs=[
                GUARD.Input("guard", tooltip="The guard to save."),
                io.String.Input("filename", default="guard",
                                tooltip="File name in models/cpsample/ (letters, digits, space, . _ -); "
                                        ".safetensors is added."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file of that name; otherwise a number is added."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the guard was written.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, guard, filename, overwrite) -> io.NodeOutput:
        path = guard_files.save_new(guard, paths.save_dir(), filename, overwrite, what="filename")
        msg = f"saved guard to {path}"
        log.info(msg)
        return io.NodeOutput(str(path), ui=ui.PreviewText(msg))


class LoadGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleLoadGuard",
            display_name="CPSample Load Guard",
            category=CATEGORY,
            description="Loads a guard saved by CPSample Save Guard from models/cpsample/.",
            inputs=[io.Combo.Input("guard_name", options=paths.guard_files(),
                                   tooltip="Guard file in models/cpsample/ (or a 'cpsample:' folder of "
                                           "extra_model_paths.yaml).")],
            outputs=[GUARD.Output(display_name="guard", tooltip="The loaded guard."),
                     io.String.Output(display_name="info", tooltip="The guard's metadata as JSON.")],
        )

    @classmethod
    def fingerprint_inputs(cls, guard_name=None, **kwargs):
        try:
            st = os.stat(paths.guard_path(guard_name))
            return f"{st.st_size}:{st.st_mtime_ns}"
        except Exception as e:  # noqa: BLE001
            return repr(e)

    @classmethod
    def execute(cls, guard_name) -> io.NodeOutput:
        path = paths.guard_path(guard_name)
        try:
            guard = load_guard(path)
        except GuardFileError as e:
            raise ValueError(f"cannot load guard {guard_name!r}: {e}") from None
        info = json.dumps(guard.info, indent=1, default=str, sort_keys=True)
        # The node shows these facts in a panel (web/cpsample.js); the info output keeps the full JSON.
        return io.NodeOutput(guard, info, ui={"cpsample_guard": (guard_facts(guard, guard_name, path),)})
