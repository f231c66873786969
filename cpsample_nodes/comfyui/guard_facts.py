"""A guard's facts for people: what Load Guard's panel and GET /cpsample/guard_info show.

Only numbers and short strings from the guard's metadata (never the dataset digest's inputs, never
image data), in a fixed shape the frontend can lay out without knowing every metadata key.
"""
from __future__ import annotations

import os
from typing import Any

from ..usecases.settings import format_settings

_SCALAR = (str, int, float, bool)


def _count(rate: Any, n: Any) -> str:
    """'17 of 32 (53%)' from a stored rate and its probe count."""
    if not isinstance(rate, (int, float)) or not isinstance(n, int) or n <= 0:
        return "?"
    return f"{round(rate * n)} of {n} ({rate:.0%})"


def calibration_words(cal: Any) -> dict[str, str] | None:
    """A stored calibration (``info["calibration"]``) in words: the setting chosen, the copies before and
    after on the probe seeds (and on the confirmation seeds), and the sampler it was measured on."""
    if not isinstance(cal, dict):
        return None
    n = cal.get("probes")
    settings = cal.get("settings") if isinstance(cal.get("settings"), dict) else {}
    words = {"sampler": str(cal.get("sampler") or "not recorded")}
    if cal.get("no_copies"):
        words["chosen"] = f"the gentlest setting ({format_settings(settings)}): nothing to remove"
        words["copies"] = f"none among {n} probe seeds unguarded"
        return words
    chosen = format_settings(settings)
    if cal.get("reached") is False:
        chosen += " (missed the target: the best setting found)"
    words["chosen"] = chosen
    copies = f"{_count(cal.get('unguarded_rate'), n)} probe seeds unguarded → {_count(cal.get('calibrated_rate'), n)} calibrated"
    seeds, confirm = cal.get("confirm_seeds"), cal.get("confirm_copies")
    if isinstance(seeds, int) and seeds > 0 and isinstance(confirm, int):
        copies += f"; {confirm} of {seeds} on new seeds"
    words["copies"] = copies
    return words


def _scalars(d: Any) -> dict[str, Any]:
    """The scalar entries of a metadata dict (nested lists / dicts left out)."""
    if not isinstance(d, dict):
        return {}
    return {str(k): v for k, v in d.items() if isinstance(v, _SCALAR) or v is None}


def guard_facts(guard, name: str, path: str | None = None) -> dict[str, Any]:
    info = guard.info or {}
    acc = info.get("accuracy") if isinstance(info.get("accuracy"), dict) else {}
    facts: dict[str, Any] = {
        "name": name,
        "images": info.get("n_images"),
        "image_size": info.get("image_size"),
        "resolution_policy": info.get("resolution_policy"),
        "class_images": info.get("class_images"),
        "latent_format": info.get("latent_format"),
        "model_sampling": info.get("model_sampling"),
        "noise_kind": getattr(getattr(guard, "space", None), "kind", None),
        "latent_shape": info.get("latent_shape"),
        "steps": info.get("steps"),
        "train_seconds": info.get("train_seconds"),
        "memorised": info.get("memorised"),
        "accuracy": {str(k): float(v) for k, v in acc.items() if isinstance(v, (int, float))},
        "required_bands": [str(b) for b in info.get("required_bands", []) if isinstance(b, str)],
        "negatives": info.get("negatives"),
        "host": info.get("host"),
        "created": info.get("created"),
        "calibration": _scalars(info.get("calibration")) or None,
        "calibration_words": calibration_words(info.get("calibration")),
        "parameters": sum(int(p.numel()) for p in guard.net.parameters()) if hasattr(guard, "net") else None,
    }
    if path:
        try:
            facts["file_kb"] = round(os.path.getsize(path) / 1024, 1)
        except OSError:
            pass
    return facts
