"""Encoded latents by (image content, VAE): re-running Train Guard with other training settings (steps,
batch size, seed), or Calibrate Guard on the same folder, does not encode again. Small LRU, in RAM."""
from __future__ import annotations

from collections import OrderedDict

import torch

from ..core import images as imgs

_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
SIZE = 4
STATS = {"hits": 0, "misses": 0}


def vae_key(vae) -> tuple:
    """Identity of a VAE for the cache: the object plus a cheap weight fingerprint, so a new VAE that
    happens to reuse a freed object's address does not hit the old entry."""
    module = getattr(vae, "first_stage_model", vae)
    fp = []
    try:
        params = list(module.parameters())
        for p in (params[:2] + params[-2:]) if params else []:
            fp.append((tuple(p.shape), float(p.detach().double().sum())))
    except Exception:  # noqa: BLE001
        pass
    return (id(module), tuple(fp))


def encode(vae, images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """VAE Encode of IMAGE [N, H, W, 3+] (raw latents on the CPU) and whether it came from the cache."""
    key = (imgs.content_hash(images), vae_key(vae))
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        STATS["hits"] += 1
        return hit, True
    lat = vae.encode(images[..., :3]).to("cpu", torch.float32)
    _CACHE[key] = lat
    while len(_CACHE) > SIZE:
        _CACHE.popitem(last=False)
    STATS["misses"] += 1
    return lat, False


def model_encoder(vae, latent_format) -> tuple:
    """(encode(IMAGE) → latents in the model's space (``process_in``, where guards live), notes): notes
    collects "from cache" / "encoded" per call, for the node's report."""
    notes: list[str] = []

    def run(images: torch.Tensor) -> torch.Tensor:
        raw, cached = encode(vae, images)
        notes.append("from cache" if cached else "encoded")
        return latent_format.process_in(raw.clone())

    return run, notes
