"""Typed request fields from the tab or a JSON body: a clear error names a missing, unknown or mistyped field."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

R = TypeVar("R")


def typed_fields(cls: type[R], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` checked against the dataclass ``cls``: each value of the type of its field's default
    (str for fields without one); None means "the default"."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; the fields are {', '.join(known)}")
    kw: dict[str, Any] = {}
    for name, v in values.items():
        if v is None:
            continue
        default = getattr(cls, name, "")
        kind = type(default) if isinstance(default, (int, float, bool, str)) else str
        if kind is bool and not isinstance(v, bool):
            raise ValueError(f"{name} must be true or false, got {v!r}")
        if kind is int and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v)):
            raise ValueError(f"{name} must be a whole number, got {v!r}")
        if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != v):
            raise ValueError(f"{name} must be a number, got {v!r}")
        if kind is str and not isinstance(v, str):
            raise ValueError(f"{name} must be text, got {v!r}")
        kw[name] = kind(v) if kind is not str else v.strip()
    return kw
