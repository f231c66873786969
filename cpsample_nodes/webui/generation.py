"""One generation's life in the CPSample script, from ``process`` to ``postprocess``.

The script in ``scripts/cpsample.py`` only forwards the host's calls here, so this path (A1111's as
well as Forge's) runs in tests with the glue alone.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from . import a1111, host, protect
from .guidance import hook_forge_unet

log = logging.getLogger("CPSample")
ATTR = "cpsample"  # where a generation keeps its prepared guidance (on the processing object)


def start(p: Any, args: tuple, guards_dir: str | Path) -> protect.Prepared | None:
    """``process``: read the settings, load and check the guard, write the infotext, and on A1111
    serve this generation from the CFG callbacks. A refusal makes the generation fail with the reason."""
    a1111.end()  # a session left over by a generation that failed
    setattr(p, ATTR, None)
    try:
        settings, pinned = protect.settings_for(args, p)
        if not settings.enabled:
            return None
        family = host.model_family(p.sd_model)
        prepared = protect.prepare(settings, family, guards_dir, pinned)
    except ValueError as e:  # Refused, a bad setting, a1111.Unsupported
        error = e if isinstance(e, protect.Refused) else protect.Refused(str(e))
        log.error(str(error))
        protect.refuse(p, error)
        return None
    p.extra_generation_params.update(prepared.infotext)
    setattr(p, ATTR, prepared)
    if prepared.guidance.scale > 0 and not host.is_forge(p.sd_model):
        a1111.begin(p, prepared.guidance, p.sd_model, family)
    return prepared


def _active(p: Any) -> protect.Prepared | None:
    prepared = getattr(p, ATTR, None)
    return prepared if prepared is not None and prepared.guidance.scale > 0 else None


def before_sampling(p: Any) -> None:
    """``process_before_every_sampling`` (Forge): hook this sampling's fresh UNet."""
    prepared = _active(p)
    if prepared is None or not host.is_forge(p.sd_model):
        return
    objects = p.sd_model.forge_objects
    objects.unet = hook_forge_unet(objects.unet, prepared.guidance)


def after_batch(p: Any) -> None:
    """``postprocess_batch``: what the gate did goes into the infotext (written after this)."""
    prepared = _active(p)
    summary = prepared.guidance.summary() if prepared is not None else None
    if summary:
        p.extra_generation_params["CPSample gate"] = summary.split(";")[0]


def finish(p: Any) -> None:
    """``postprocess``: stop serving this generation; one line on what the guard did."""
    a1111.end(p)
    prepared = _active(p)
    if prepared is not None:
        log.info("CPSample: %s", prepared.guidance.summary() or f"guided {prepared.guidance.steps} steps")
