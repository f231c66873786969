"""CPSample Calibrate Guard (node id CPSampleCalibrateGuard): the guard's settings measured on the user's model.

The node samples probe seeds with the user's MODEL, prompt and sampler (calibrate.ProbeSampler) and hands them
to ``usecases.calibrating`` (the training folder loaded as Train Guard did, the core's ``calibrate``); it
returns a new guard carrying the calibration, a report and the evidence picture.
"""
from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..core import CalibrationStopped
from ..core.calibration import MIN_PROBES, PROBE_COST_NOTE
from ..usecases.calibrating import calibrate_from_folder
from . import host, latent_cache
from .calibrate import ProbeSampler, check_unprotected, vae_decoder
from .inputs import CATEGORY, GUARD, chosen_folder, folder_fingerprint, folder_options, node_id, send_text

log = logging.getLogger("CPSample")


def run(cls, model, guard, positive, negative, vae, folder, seed, probes, steps, cfg, sampler_name, scheduler,
        width, height) -> io.NodeOutput:
    """The node's execute: checks, the host's sampler and VAE, ``usecases.calibrating``, the result."""
    import comfy.model_management as mm
    import comfy.utils

    node = node_id(cls)
    try:
        host.check_guard(guard, model)
        check_unprotected(model)
    except ValueError as e:  # HostMismatch or an already protected model
        raise ValueError(f"CPSample Calibrate Guard: {e}") from None
    path = chosen_folder(folder)
    if path is None:
        raise ValueError("no training images: choose the folder the guard was trained on (Train Guard's folder)")
    lf = host.latent_format(model)
    encode_cached, _ = latent_cache.model_encoder(vae, lf)
    shapes: list[tuple] = []
    pbar = comfy.utils.ProgressBar(probes, node_id=node)

    def encode(images):
        latents = encode_cached(images)
        shapes.append(tuple(latents.shape[1:]))  # the probes' latent shape
        return latents

    def make_sampler(width: int, height: int) -> ProbeSampler:
        sampler = ProbeSampler(model, positive, negative, steps, cfg, sampler_name, scheduler, shapes[-1],
                               on_step=mm.throw_exception_if_processing_interrupted)
        sampler.description = sampler.describe(width, height)
        return sampler

    def progress(done: int, total: int, text: str) -> None:
        send_text(node, text)
        pbar.update_absolute(done, total)  # also raises if the user pressed Cancel

    try:
        result = calibrate_from_folder(
            guard, path, make_sampler=make_sampler, encode=encode, decode=vae_decoder(vae, lf),
            space=host.noise_space(host.model_sampling(model)), seed=seed, probes=probes, width=width, height=height,
            multiple=host.vae_downscale(vae), header="CPSample Calibrate Guard", source=folder,
            footer="Save this guard and use it in CPSample Protect Model (settings: calibration).",
            progress=progress, should_stop=mm.processing_interrupted, device=model.load_device)
    except CalibrationStopped:
        mm.throw_exception_if_processing_interrupted()
        raise
    log.info(result.report)
    send_text(node, result.summary)  # one line on the node; the report goes to its output
    return io.NodeOutput(result.guard, result.report, result.picture,
                         ui={"text": (result.report,), **ui.PreviewImage(result.picture, cls=cls).as_dict()})


class CalibrateGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import comfy.samplers

        return io.Schema(
            node_id="CPSampleCalibrateGuard",
            display_name="CPSample Calibrate Guard",
            category=CATEGORY,
            description=("Measures how often your fine-tuned model copies its training images with your prompt and "
                         "sampler, then finds the guard setting (gate α, σ window, and a stronger push where "
                         "needed) that cuts the copies to a tenth, spoils the fewest samples and moves the others "
                         "least, and checks it again on as many new seeds. Outputs the guard with that calibration "
                         "(Protect Model applies it), a report and a picture: copy rate per setting, and unguarded | "
                         "calibrated for the seeds that copied."),
            inputs=[
                io.Model.Input("model", tooltip="The fine-tuned model you generate with (LoRA applied), without "
                                                "Protect Model: calibration samples it with and without the guard."),
                GUARD.Input("guard", tooltip="The guard trained on this model's training images (Train Guard or "
                                             "Load Guard)."),
                io.Conditioning.Input("positive", tooltip="A prompt you generate with: copies are counted on it."),
                io.Conditioning.Input("negative", tooltip="The negative prompt you generate with."),
                io.Vae.Input("vae", tooltip="The VAE the guard was trained with: encodes the training images and "
                                            "decodes the probes, so copies are counted on pixels as well "
                                            "(as Replication Check does)."),
                io.Combo.Input("folder", options=folder_options(),
                               tooltip="The training images: the sub-folder of the input directory that Train "
                                       "Guard used (loaded at the guard's size and resolution policy)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="First probe seed; the probes are seed, seed+1, … and the chosen setting is "
                                     "confirmed on the same number of seeds after them. Probe seed s is the "
                                     "image KSampler makes with seed s and batch size 1."),
                io.Int.Input("probes", default=32, min=MIN_PROBES, max=4096,
                             tooltip=f"Probe images per setting (at least {MIN_PROBES}). More probes measure "
                                     "smaller copy rates; each setting stops early once it cannot reach the target. "
                                     + PROBE_COST_NOTE),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps, as in your KSampler."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale, as in your KSampler."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.SAMPLER_NAMES), default="euler_ancestral",
                               tooltip="The sampler you generate with (an ancestral or SDE one suits protection)."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="normal",
                               tooltip="The scheduler you generate with."),
                io.Int.Input("width", default=0, min=0, max=16384, step=8,
                             tooltip="Probe width in pixels; 0 (with height 0) = the guard's training image size."),
                io.Int.Input("height", default=0, min=0, max=16384, step=8,
                             tooltip="Probe height in pixels; 0 (with width 0) = the guard's training image size."),
            ],
            outputs=[GUARD.Output(display_name="guard", tooltip="A copy of the guard carrying its calibration: "
                                                                "save it, and Protect Model uses the settings."),
                     io.String.Output(display_name="report", tooltip="Copy rates per setting tried, the chosen "
                                                                     "setting, model calls and time."),
                     io.Image.Output(display_name="evidence", tooltip="Copy rate per setting, then unguarded | "
                                                                      "calibrated | nearest training image for "
                                                                      "each probe seed that copied.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, folder=None, **kwargs):
        return folder_fingerprint(folder)

    @classmethod
    def execute(cls, model, guard, positive, negative, vae, folder, seed, probes, steps, cfg, sampler_name,
                scheduler, width, height) -> io.NodeOutput:
        return run(cls, model, guard, positive, negative, vae, folder, seed, probes, steps, cfg, sampler_name,
                   scheduler, width, height)
