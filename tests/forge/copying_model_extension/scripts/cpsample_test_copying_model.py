"""A test-only Forge extension: make the loaded checkpoint a model that copies its training images.

    POST /cpsample-test/copying-model {"folder": "<dir of PNGs>", "bandwidth": 0.1}
    POST /cpsample-test/copying-model {"folder": ""}        (the checkpoint's own UNet again)

The UNet patcher of the loaded model gets, as its model function wrapper, the exact denoiser of a kernel density
on the folder's latents (the ComfyUI test pack's KernelDenoiser; latents from CPSample's own webui encoder, so
exactly what a guard trained on the folder sees). Forge's processing, its samplers and CFG, the VAE and every
extension hook stay real, and every generation uses it, the extension's calibration probes included, until it
is turned off or another checkpoint loads. tests/forge/conftest.py links this folder into the test server's
extensions.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
for path in (REPO, REPO / "tests" / "integration"):
    if str(path) not in sys.path:
        sys.path.append(str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from modules import script_callbacks, shared  # noqa: E402
from modules.call_queue import queue_lock  # noqa: E402

from test_models_pack import KernelDenoiser  # noqa: E402

OBJECTS = ("forge_objects", "forge_objects_original", "forge_objects_after_applying_lora")


def _images(folder: Path) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))
    if not files:
        raise ValueError(f"no PNG images in {folder}")
    return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).float() / 255.0


def set_copying(folder: str, bandwidth: float) -> dict:
    from cpsample_nodes.webui import host

    model = shared.sd_model
    own = getattr(model, "_cpsample_test_unet", None) or model.forge_objects_original.unet
    model._cpsample_test_unet = own
    unet, count = own, 0
    if folder:
        latents = host.encoder(model, 0)(_images(Path(folder)))
        unet = own.clone()
        unet.set_model_unet_function_wrapper(KernelDenoiser(latents, bandwidth))
        count = latents.shape[0]
    for name in OBJECTS:
        getattr(model, name).unet = unet
    return {"latents": count, "checkpoint": model.sd_checkpoint_info.name}


def _on_app_started(_demo, app) -> None:
    from fastapi import Body, HTTPException

    @app.post("/cpsample-test/copying-model")
    def copying_model(body: dict = Body(...)) -> dict:
        with queue_lock:
            try:
                return set_copying(str(body.get("folder") or ""), float(body.get("bandwidth", 0.1)))
            except ValueError as e:
                raise HTTPException(status_code=400, detail=str(e))


script_callbacks.on_app_started(_on_app_started)
