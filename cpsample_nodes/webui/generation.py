"""One generation's life in the CPSample script, from ``process`` to ``postprocess``.

``process`` reads the accordion's settings, loads and checks the guard and resolves the settings it is
applied with (usecases); Forge then gets the guided step as a post-CFG function on a clone of its UNet
before every sampling (as its own PAG and SAG do), A1111 through its CFG callbacks (``a1111.py``).

A refusal (bad setting, bad guard file, a guard for another model family) must reach the user. The
webuis catch and only log what a script raises in ``process``, so the refusal is raised where nothing
catches it: in place of the generation's sampling, before the model does any work. The UI shows the
message, the API answers 400 with it, and the server goes on serving.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import GuardFileError
from ..usecases import guard_files
from ..usecases.guided_step import GuidedStep, PostCFG, Sampling
from ..usecases.model import GuardMismatch, ModelFamily, check_guard
from ..usecases.settings import resolve_settings
from . import a1111, host
from .family import forge_noise_space
from .settings import AXES, Settings

log = logging.getLogger("CPSample")
ATTR = "cpsample"  # where a generation keeps what it prepared (on the processing object)


class Refused(ValueError):
    """CPSample will not run this generation; the message says why and what to do."""

    def __init__(self, message: str):
        super().__init__(message)
        # the webui's API answers with these (read from the instance's own attributes)
        self.status_code = 400
        self.detail = message


@dataclass
class Prepared:
    step: GuidedStep
    family: ModelFamily
    infotext: dict[str, Any]


def prepare(settings: Settings, family: ModelFamily, folder: str | Path,
            pinned: frozenset[str] = frozenset()) -> Prepared:
    """Load and check the guard for this model family and resolve its settings (``pinned``: set by an
    X/Y/Z axis, so a calibration does not replace them); Refused with the reason."""
    name = settings.guard
    try:
        guard = guard_files.load(folder, name)
    except GuardFileError as e:
        raise Refused(f"CPSample cannot load guard {name!r}: {e}") from None
    try:
        check_guard(guard, family)
    except GuardMismatch as e:
        raise Refused(f"CPSample guard {name!r} does not fit this model: {e}") from None
    try:
        applied = resolve_settings(guard, settings.scale, settings.alpha, settings.use_calibration, pinned)
    except ValueError as e:  # a calibration that does not check out (a file edited by hand)
        raise Refused(f"CPSample guard {name!r} has an unusable calibration: {e}") from None
    step = GuidedStep(guard, applied, settings.start_percent, settings.end_percent, settings.objective,
                      settings.guard_input)
    log.info("CPSample: %s", applied.description)
    # The infotext records what steered the generation: the calibration's scale and alpha when used.
    return Prepared(step, family, settings.infotext(scale=applied.scale, alpha=applied.alpha))


def start(p: Any, args: tuple, guards_dir: str | Path) -> Prepared | None:
    """``process``: settings, guard, infotext; on A1111 serve this generation from the CFG callbacks.
    A refusal makes the generation fail with the reason (``refuse``)."""
    a1111.end()  # a session left over by a generation that failed
    setattr(p, ATTR, None)
    try:
        axes = {name: getattr(p, attr) for name, attr in AXES.items() if getattr(p, attr, None) is not None}
        settings = Settings.from_args(args, overrides=axes)
        if not settings.enabled:
            return None
        family = host.model_family(p.sd_model)
        prepared = prepare(settings, family, guards_dir, frozenset(axes))
    except ValueError as e:  # Refused, a bad setting, a1111.Unsupported
        refuse(p, e if isinstance(e, Refused) else Refused(str(e)))
        return None
    p.extra_generation_params.update(prepared.infotext)
    setattr(p, ATTR, prepared)
    if prepared.step.scale > 0 and not host.is_forge(p.sd_model):
        a1111.begin(p, prepared.step, p.sd_model, family)
    return prepared


def refuse(p: Any, error: Refused) -> None:
    """Make this generation fail with ``error`` where the host shows it: at its sampling call."""
    log.error(str(error))

    def sample(*args: Any, **kwargs: Any):
        raise error

    p.sample = sample


def _active(p: Any) -> Prepared | None:
    prepared = getattr(p, ATTR, None)
    return prepared if prepared is not None and prepared.step.scale > 0 else None


def forge_sampling(args: dict) -> Sampling | None:
    """Forge's post-CFG args → the sampling's predictor (its noise schedule, a sampler-specific one included)."""
    predictor = getattr(args.get("model"), "predictor", None)
    if predictor is None:
        return None
    return id(predictor), lambda: forge_noise_space(predictor), predictor.percent_to_sigma


def before_sampling(p: Any) -> None:
    """``process_before_every_sampling`` (Forge): a clone of this sampling's fresh UNet patcher with the
    guided step as a post-CFG function (the original is untouched; Forge restores its UNet before every
    sampling, so nothing outlives the generation)."""
    prepared = _active(p)
    if prepared is not None and host.is_forge(p.sd_model):
        objects = p.sd_model.forge_objects
        objects.unet = objects.unet.clone()
        objects.unet.set_model_sampler_post_cfg_function(PostCFG(prepared.step, forge_sampling))


def after_batch(p: Any) -> None:
    """``postprocess_batch``: what the gate did goes into the infotext (written after this)."""
    prepared = _active(p)
    if prepared is not None:
        p.extra_generation_params["CPSample gate"] = prepared.step.summary().split(";")[0]


def finish(p: Any) -> None:
    """``postprocess``: stop serving this generation; one line on what the guard did."""
    a1111.end(p)
    prepared = _active(p)
    if prepared is not None:
        log.info("CPSample: %s", prepared.step.summary())
