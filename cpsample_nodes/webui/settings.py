"""The accordion's settings: their order (what the API's ``alwayson_scripts`` args are), their
checks, and how they go into the PNG infotext and come back from it.

The names and limits follow the ComfyUI node Protect Model, so a setting means the same in both hosts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

from ..core.guard import DEFAULT_ALPHA, DEFAULT_SCALE, OBJECTIVES
from ..usecases.guided_step import GUARD_INPUTS
MAX_SCALE = 100000.0


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and its value."""


@dataclass(frozen=True)
class Settings:
    enabled: bool = False
    guard: str = ""  # file name under models/cpsample/
    scale: float = DEFAULT_SCALE
    alpha: float = DEFAULT_ALPHA
    start_percent: float = 0.0
    end_percent: float = 1.0
    objective: str = "uncertainty"
    guard_input: str = GUARD_INPUTS[0]
    use_calibration: bool = True

    # --- from the host ----------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: Sequence[Any], overrides: Mapping[str, Any] | None = None) -> "Settings":
        """The script's args in ``ARGS`` order (the UI, or an API list, which may stop early: the rest
        keep their defaults), or a dict by name first (handier in API calls; the webui fills the places
        after it with the UI's defaults, which are then ignored). ``overrides`` (X/Y/Z plot axes) win and
        turn protection on. Checked when enabled: SettingsError names the first bad setting."""
        if args and isinstance(args[0], Mapping):
            values = dict(args[0])
        elif len(args) > len(ARGS):
            raise SettingsError(f"CPSample takes at most {len(ARGS)} args ({', '.join(ARGS)}), got {len(args)}")
        else:
            values = dict(zip(ARGS, args))
        if overrides:
            values.update(enabled=True, **overrides)
        settings = cls.from_dict(values)
        return settings.validate() if settings.enabled else settings

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Settings":
        unknown = sorted(set(values) - set(ARGS))
        if unknown:
            raise SettingsError(f"unknown CPSample setting {unknown[0]!r}; the settings are {', '.join(ARGS)}")
        kw = {}
        for f in fields(cls):
            if f.name in values and values[f.name] is not None:
                kw[f.name] = _convert(f.name, values[f.name], type(getattr(cls, f.name)))
        return cls(**kw)

    # --- checks -----------------------------------------------------------------------------
    def validate(self) -> "Settings":
        """Raise SettingsError naming the first bad setting; return self when all are usable."""
        if self.enabled and not self.guard.strip():
            raise SettingsError("CPSample is enabled but no guard is chosen: pick a guard file from "
                                "models/cpsample/ (or train one in the CPSample tab)")
        if not 0 <= self.scale <= MAX_SCALE:
            raise SettingsError(f"CPSample scale must lie in [0, {MAX_SCALE:g}], got {self.scale:g}")
        if not 0 <= self.alpha <= 0.5:
            raise SettingsError(f"CPSample alpha must lie in [0, 0.5], got {self.alpha:g}")
        for name in ("start_percent", "end_percent"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise SettingsError(f"CPSample {name} must lie in [0, 1], got {v:g}")
        if self.start_percent >= self.end_percent:
            raise SettingsError(f"CPSample start_percent ({self.start_percent:g}) must be below end_percent "
                                f"({self.end_percent:g})")
        if self.objective not in OBJECTIVES:
            raise SettingsError(f"CPSample objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.guard_input not in GUARD_INPUTS:
            raise SettingsError(f"CPSample guard_input must be one of {', '.join(GUARD_INPUTS)}, "
                                f"got {self.guard_input!r}")
        return self

    @property
    def active(self) -> bool:
        """Whether a generation with these settings is steered at all (scale 0 changes nothing)."""
        return self.enabled and self.scale > 0

    # --- infotext ---------------------------------------------------------------------------
    def infotext(self, **used: Any) -> dict[str, Any]:
        """Keys for ``p.extra_generation_params`` (written into the PNG and shown under the image);
        ``used``: values that steered in place of these settings (a calibration's scale and alpha)."""
        values = {**self.as_dict(), **used}
        return {INFOTEXT[name]: _format(values[name]) for name in ARGS if name != "enabled"}

    @classmethod
    def from_infotext(cls, params: Mapping[str, Any]) -> "Settings":
        """Settings from a parsed infotext (values as the host parsed them, often strings);
        without the CPSample keys, protection is off."""
        if INFOTEXT["guard"] not in params:
            return cls()
        values: dict[str, Any] = {"enabled": True}
        for name in ARGS:
            key = INFOTEXT.get(name)
            if key in params:
                values[name] = params[key]
        return cls.from_dict(values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ARGS = tuple(f.name for f in fields(Settings))
# X/Y/Z plot axes set these attributes on the processing object (scripts/cpsample_xyz.py); they win
# over the accordion.
AXES = {"scale": "cpsample_scale", "alpha": "cpsample_alpha", "start_percent": "cpsample_start_percent",
        "end_percent": "cpsample_end_percent"}
# Infotext key per setting ("enabled" is implied by the presence of the guard key).
INFOTEXT = {
    "guard": "CPSample guard",
    "scale": "CPSample scale",
    "alpha": "CPSample alpha",
    "start_percent": "CPSample start",
    "end_percent": "CPSample end",
    "objective": "CPSample objective",
    "guard_input": "CPSample guard input",
    "use_calibration": "CPSample calibration",
}
_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0", ""}


def restore_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """The accordion's values from a pasted infotext (protection off without CPSample keys)."""
    return Settings.from_infotext(params).as_dict() if INFOTEXT["guard"] in params else {"enabled": False}


def _format(v: Any) -> Any:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return float(f"{v:.6g}")
    return v


def _convert(name: str, v: Any, kind: type) -> Any:
    """One setting from whatever the host hands over (gradio value, JSON, or infotext string)."""
    try:
        if kind is bool:
            if isinstance(v, str):
                s = v.strip().lower()
                if s in _TRUE:
                    return True
                if s in _FALSE:
                    return False
                raise ValueError
            if isinstance(v, (bool, int)):
                return bool(v)
            raise ValueError
        if kind is float:
            if isinstance(v, bool):
                raise ValueError
            return float(v)
        if kind is str:
            if not isinstance(v, str):
                raise ValueError
            return v.strip()
    except (TypeError, ValueError):
        pass
    raise SettingsError(f"CPSample {name} must be a {kind.__name__}, got {v!r}")
