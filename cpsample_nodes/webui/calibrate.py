"""Calibrating a guard on the webui's current model, as ComfyUI's Calibrate Guard does: the tab's and the
API's request, then ``usecases.calibrating`` with the webui's probe sampler (``probes.ProbeSampler``: its
own txt2img with the user's prompt, sampler and size). The calibration is written into the guard file
(atomically), where the accordion's "Use the guard's calibration" finds it, in ComfyUI as well.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..core import NoiseSpace, save_guard
from ..core import images as imgs
from ..core.calibration import MIN_PROBES, SampleFn
from ..usecases import guard_files
from ..usecases.calibrating import calibrate_from_folder
from ..usecases.model import ModelFamily, check_guard
from .request import typed_fields
from .train import folder_path

Progress = Callable[[int, int, str], None]
MAX_PROBES = 4096


@dataclass(frozen=True)
class CalibrateRequest:
    guard: str
    folder: str
    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 0          # 0 with height 0: the guard's training image size
    height: int = 0
    seed: int = 0           # probes: seed, seed + 1, ...; confirmation seeds follow them
    probes: int = 32
    save_as: str = ""       # "": the calibration goes into the guard's own file

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CalibrateRequest":
        """From the tab or a JSON body; a clear error names a missing, unknown or mistyped field."""
        kw = typed_fields(cls, values)
        if not kw.get("guard"):
            raise ValueError("no guard chosen: give the name of a guard in models/cpsample/")
        if not kw.get("folder"):
            raise ValueError("no training images: give the folder the guard was trained on")
        req = cls(**kw)
        if not MIN_PROBES <= req.probes <= MAX_PROBES:
            raise ValueError(f"probes must be between {MIN_PROBES} and {MAX_PROBES} (fewer cannot tell a 10x cut "
                             f"from chance), got {req.probes}")
        if req.steps < 1 or req.seed < 0 or req.width < 0 or req.height < 0 or not 0 <= req.cfg_scale <= 100:
            raise ValueError(f"steps must be at least 1, seed, width and height at least 0, cfg_scale within "
                             f"[0, 100]; got steps {req.steps}, seed {req.seed}, width {req.width}, height "
                             f"{req.height}, cfg_scale {req.cfg_scale}")
        return req

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate_guard(req: CalibrateRequest, *, guards_dir: str | Path,
                    make_sampler: Callable[[int, int], SampleFn],
                    encode: Callable[[torch.Tensor, int], torch.Tensor],
                    decode: Callable[[torch.Tensor], torch.Tensor], family: ModelFamily, space: NoiseSpace,
                    multiple: int = 8, progress: Progress | None = None,
                    should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Calibrate guard ``req.guard`` and save it. ``make_sampler(width, height)`` gives the core's
    ``sample(guide, seeds)`` at that size; ``encode(IMAGE, seed)`` the model's sampling latents (the VAE's
    posterior drawn with that seed); ``decode(latents)`` IMAGE [B, H, W, 3] in [0, 1]. Returns {"path",
    "name", "report", "summary", "picture" (PIL), "calibration"}; ValueError / GuardFileError for bad
    input; CalibrationStopped when ``should_stop`` ended it (nothing is written then)."""
    guards_dir = Path(guards_dir)
    source = guard_files.resolve(guards_dir, req.guard)
    target = source if not req.save_as else guard_files.new_path(guards_dir, req.save_as)  # bad names fail first
    guard = guard_files.load_file(source)
    check_guard(guard, family)
    # the guard's own seed draws the VAE posterior, as training did: the same images give the same latents
    label_seed = int(guard.info.get("label_seed", 0) or 0)
    result = calibrate_from_folder(
        guard, folder_path(req.folder), make_sampler=make_sampler, encode=lambda images: encode(images, label_seed),
        decode=decode, space=space, seed=req.seed, probes=req.probes, width=req.width, height=req.height,
        multiple=multiple, header=f"CPSample calibration of {source.name}", source=req.folder,
        footer=f"Saved to {target.name}: pick it in the CPSample accordion with \"Use the guard's calibration\".",
        progress=progress, should_stop=should_stop)
    save_guard(result.guard, target)
    return {"path": str(target), "name": target.relative_to(guards_dir).as_posix(), "report": result.report,
            "summary": result.summary, "picture": imgs.tensor_to_pil(result.picture)[0],
            "calibration": result.guard.info["calibration"]}
