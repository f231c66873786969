"""The CPSample tab's operations on the running webui (train, calibrate, check), shared by the tab and the
API routes."""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from ..core import TrainingStopped
from . import check as check_mod
from ..usecases import guard_files
from . import host
from .calibrate import CalibrateRequest, calibrate_guard as calibrate
from .train import TrainRequest, train

log = logging.getLogger("CPSample")


def _run(job: str, total: int, images: bool, on_progress: Callable[[int, int, str], None] | None,
         work: Callable[[Any, Callable[[int, int, str], None]], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work(sd_model, progress)`` as a webui job (queue, progress bar, Interrupt): {"stopped": False,
    **its result}, or {"stopped": True, "report"} when an Interrupt stopped it (nothing written)."""
    with host.job(job, total, images=images) as state_progress:
        def progress(step: int, total: int, text: str) -> None:
            state_progress(step, total, text)
            if on_progress is not None:
                on_progress(step, total, text)

        try:
            result = work(host.current_model(), progress)
        except TrainingStopped as e:  # CalibrationStopped too
            msg = f"CPSample: {e}; nothing was saved"
            log.info(msg)
            return {"stopped": True, "path": None, "name": None, "report": msg}
    log.info(result["report"])
    return {"stopped": False, **result}


def train_guard(values: Mapping[str, Any],
                on_progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Train a guard on the current checkpoint from ``values`` (TrainRequest fields). Returns
    {"stopped": False, "path", "name", "report", "info"}, or {"stopped": True, "report"} after an
    Interrupt (nothing written); ValueError with the reason for bad input. ``on_progress`` gets
    each step besides the webui's own progress (shared.state)."""
    req = TrainRequest.from_dict(values)

    def work(sd_model, progress) -> dict[str, Any]:
        return train(req, encode=host.encoder(sd_model, req.seed), family=host.model_family(sd_model),
                     space=host.noise_space(sd_model), out_folder=host.guards_dir(),
                     host=host.host_name(sd_model), device=host.device(), progress=progress,
                     should_stop=host.interrupted)

    return _run("cpsample_train_guard", req.max_steps, False, on_progress, work)


def calibrate_guard(values: Mapping[str, Any],
                    on_progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Calibrate a guard on the current checkpoint from ``values`` (CalibrateRequest fields) and write the
    calibration into its file (or ``save_as``). Returns {"stopped": False, "path", "name", "report",
    "summary", "picture" (PIL), "calibration"}, or {"stopped": True, "report"} after an Interrupt (nothing
    written); ValueError / GuardFileError with the reason for bad input."""
    from .probes import ProbeSampler

    req = CalibrateRequest.from_dict(values)

    def work(sd_model, progress) -> dict[str, Any]:
        fam = host.model_family(sd_model)

        def make_sampler(width: int, height: int) -> ProbeSampler:
            return ProbeSampler(sd_model, fam, req.prompt, req.negative_prompt, req.sampler_name, req.scheduler,
                                req.steps, req.cfg_scale, width, height)

        return calibrate(req, guards_dir=host.guards_dir(), make_sampler=make_sampler,
                         encode=lambda images, seed: host.encoder(sd_model, seed)(images),
                         decode=host.decoder(sd_model), family=fam, space=host.noise_space(sd_model),
                         progress=progress, should_stop=host.interrupted)

    return _run("cpsample_calibrate_guard", req.probes, True, on_progress, work)


def list_guards() -> dict[str, Any]:
    folder = host.guards_dir()
    return {"folder": str(folder), "guards": guard_files.list_guards(folder)}


def replication_check(images: Sequence, values: Mapping[str, Any]) -> dict[str, Any]:
    """Check PIL ``images`` against values["folder"] (k, ratio_threshold, ssim_threshold optional)."""
    known = {"folder", "k", "ratio_threshold", "ssim_threshold"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; the fields are images, {', '.join(sorted(known))}")
    kw = {k: values[k] for k in ("k", "ratio_threshold", "ssim_threshold") if values.get(k) is not None}
    try:
        kw = {k: (int(v) if k == "k" else float(v)) for k, v in kw.items()}
    except (TypeError, ValueError):
        raise ValueError(f"k, ratio_threshold and ssim_threshold must be numbers, got {kw}") from None
    return check_mod.check(images, str(values.get("folder") or ""), **kw)
