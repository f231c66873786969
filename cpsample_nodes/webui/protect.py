"""Protecting one generation: from the accordion's settings to a ready guidance, or a refusal.

A refusal (bad setting, bad guard file, a guard for another model family) must reach the user.
The webuis catch and only log what a script raises in ``process``, so the refusal is raised where
nothing catches it: in place of the generation's sampling, before the model does any work. The UI
shows the message, the API answers 400 with it, and the server goes on serving.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..core import GuardFileError
from . import guards
from .family import FamilyMismatch, ModelFamily, check_guard
from .guidance import Guidance, guide_kwargs
from .settings import INFOTEXT, Settings, SettingsError

# X/Y/Z plot axes set these attributes on the processing object; they win over the accordion.
AXES = {"scale": "cpsample_scale", "alpha": "cpsample_alpha", "start_percent": "cpsample_start_percent",
        "end_percent": "cpsample_end_percent"}


class Refused(ValueError):
    """CPSample will not run this generation; the message says why and what to do."""

    def __init__(self, message: str):
        super().__init__(message)
        # the webui's API answers with these (read from the instance's own attributes)
        self.status_code = 400
        self.detail = message


@dataclass
class Prepared:
    guidance: Guidance
    family: ModelFamily
    infotext: dict[str, Any] = field(default_factory=dict)
    calibrated: bool = False


def settings_for(args: tuple, p: Any) -> tuple[Settings, frozenset[str]]:
    """The accordion's args with the X/Y/Z axes on top; the names set by an axis (pinned) come back too.
    An axis on a CPSample setting turns protection on (the plot would show nothing otherwise)."""
    settings = Settings.from_args(args)
    axes = {name: getattr(p, attr) for name, attr in AXES.items() if getattr(p, attr, None) is not None}
    if axes:
        settings = settings.with_overrides(enabled=True, **axes)
    return settings, frozenset(axes)


def prepare(settings: Settings, family: ModelFamily, folder: str | Path,
            pinned: frozenset[str] = frozenset()) -> Prepared:
    """Load and check the guard for this model family; Refused with the reason otherwise."""
    try:
        settings.validate()
    except SettingsError as e:
        raise Refused(str(e)) from None
    try:
        guard = guards.load(folder, settings.guard)
    except GuardFileError as e:
        raise Refused(f"CPSample cannot load guard {settings.guard!r}: {e}") from None
    try:
        check_guard(guard, family)
    except FamilyMismatch as e:
        raise Refused(f"CPSample guard {settings.guard!r} does not fit this model: {e}") from None
    try:
        kwargs, calibrated = guide_kwargs(guard, settings, pinned)
    except ValueError as e:  # a calibration that does not check out (a file edited by hand)
        raise Refused(f"CPSample guard {settings.guard!r} has an unusable calibration: {e}") from None
    guidance = Guidance(guard, kwargs, settings.start_percent, settings.end_percent)
    # The infotext records what steered the generation: the calibration's scale and alpha when used.
    used = settings.with_overrides(scale=kwargs["scale"], alpha=kwargs["alpha"])
    return Prepared(guidance, family, used.infotext(), calibrated)


def refuse(p: Any, error: Refused) -> None:
    """Make this generation fail with ``error`` where the host shows it: at its sampling call."""
    def sample(*args: Any, **kwargs: Any):
        raise error

    p.sample = sample


def restore_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """The accordion's values from a pasted infotext (protection off without CPSample keys)."""
    return Settings.from_infotext(params).as_dict() if INFOTEXT["guard"] in params else {"enabled": False}
