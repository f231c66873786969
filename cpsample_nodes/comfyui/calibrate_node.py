"""CPSample Calibrate Guard (node id CPSampleCalibrateGuard): the guard's settings measured on the user's model.

The node loads the training folder as Train Guard did, samples probe seeds with the user's MODEL, prompt and
sampler (calibrate.ProbeSampler), lets the core's ``calibrate`` choose the setting, and returns a new guard
carrying the calibration, a report and the evidence picture.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..core import CalibrationStopped, calibrate, dataset_digest, evidence
from ..core import images as imgs
from ..core.calibration import MIN_PROBES, PROBE_COST_NOTE
from . import host
from .calibrate import ProbeSampler, check_unprotected, vae_decoder
from .nodes import (CATEGORY, NO_FOLDER, Guard, _downscale, _encode_cached, _folder_fingerprint, _folder_options,
                    _folder_path, _node_id, _send_text, log)


def _calibration_images(guard, folder: str, vae, width: int, height: int) -> tuple[torch.Tensor, list[str], bool]:
    """The training folder as Train Guard loaded it, or at width x height (see images.calibration_images)."""
    if not folder or folder == NO_FOLDER:
        raise ValueError("no training images: choose the folder the guard was trained on (Train Guard's folder)")
    return imgs.calibration_images(guard.info, _folder_path(folder), _downscale(vae), width, height)


def _calibrate(cls, model, guard, positive, negative, vae, folder, seed, probes, steps, cfg, sampler_name,
               scheduler, width, height) -> io.NodeOutput:
    import comfy.model_management as mm
    import comfy.utils

    node_id = _node_id(cls)
    try:
        host.check_guard(guard, model)
        check_unprotected(model)
    except ValueError as e:  # HostMismatch or an already protected model
        raise ValueError(f"CPSample Calibrate Guard: {e}") from None
    batch, names, at_guard_size = _calibration_images(guard, folder, vae, width, height)
    raw, cached = _encode_cached(vae, batch)
    lf = host.latent_format(model)
    latents = lf.process_in(raw.clone())  # the space Train Guard trained the guard in
    if latents.shape[1] != guard.latent_channels:
        raise ValueError(f"the VAE makes {latents.shape[1]}-channel latents but the guard takes "
                         f"{guard.latent_channels}: use the VAE the guard was trained with")
    same_set = at_guard_size and guard.info.get("dataset_digest") == dataset_digest(latents)
    h, w = batch.shape[1], batch.shape[2]

    g = guard.with_space(host.noise_space(host.model_sampling(model)))  # a new Guard: its own info dict
    with torch.inference_mode(False):
        g.net.to(model.load_device)
    sampler = ProbeSampler(model, positive, negative, steps, cfg, sampler_name, scheduler, tuple(latents.shape[1:]),
                           on_step=mm.throw_exception_if_processing_interrupted)
    decode = vae_decoder(vae, lf)
    pbar = comfy.utils.ProgressBar(probes, node_id=node_id)

    def progress(done, total, stats):
        # total counts every setting; calibration usually stops well before it
        _send_text(node_id, f"calibrating ({stats.get('setting')}): {done} probe images sampled, "
                            f"{stats.get('model_calls')} model calls")
        pbar.update_absolute(done, total)  # also raises if the user pressed Cancel

    try:
        cal = calibrate(g, sampler, latents, seeds=range(seed, seed + probes), decode=decode, progress=progress,
                        should_stop=mm.processing_interrupted, sampler_description=sampler.describe(w, h))
    except CalibrationStopped:
        mm.throw_exception_if_processing_interrupted()
        raise
    out = g.with_space(guard.space)  # the input guard stays as it was (ComfyUI caches it)

    report, copies = evidence.report(
        cal, latents, names, same_set=same_set,
        header=f"CPSample Calibrate Guard: {batch.shape[0]} training images from {folder} at {w}x{h} px, latents "
               f"{'from cache' if cached else 'encoded'}",
        footer="Save this guard and use it in CPSample Protect Model (settings: calibration).")
    log.info(report)
    picture = evidence.evidence_picture(cal, copies, decode, batch, names, sampler.describe(w, h))
    _send_text(node_id, evidence.calibration_summary(cal))  # one line on the node; the report goes to its output
    return io.NodeOutput(out, report, picture,
                         ui={"text": (report,), **ui.PreviewImage(picture, cls=cls).as_dict()})


class CalibrateGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import comfy.samplers

        return io.Schema(
            node_id="CPSampleCalibrateGuard",
            display_name="CPSample Calibrate Guard",
            category=CATEGORY,
            description=("Measures how often your fine-tuned model copies its training images with your prompt and "
                         "sampler, then finds the guard setting (gate α, σ window, and a stronger scale where "
                         "needed) that cuts the copies to a tenth, spoils the fewest samples and moves the others "
                         "least, and checks it again on as many new seeds. Outputs the guard with that calibration "
                         "(Protect Model applies it), a report and a picture: copy rate per setting, and unguarded | "
                         "calibrated for the seeds that copied."),
            inputs=[
                io.Model.Input("model", tooltip="The fine-tuned model you generate with (LoRA applied), without "
                                                "Protect Model: calibration samples it with and without the guard."),
                Guard.Input("guard", tooltip="The guard trained on this model's training images (Train Guard or "
                                             "Load Guard)."),
                io.Conditioning.Input("positive", tooltip="A prompt you generate with: copies are counted on it."),
                io.Conditioning.Input("negative", tooltip="The negative prompt you generate with."),
                io.Vae.Input("vae", tooltip="The VAE the guard was trained with: encodes the training images and "
                                            "decodes the probes, so copies are counted on pixels as well "
                                            "(as Replication Check does)."),
                io.Combo.Input("folder", options=_folder_options(),
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
            outputs=[Guard.Output(display_name="guard", tooltip="A copy of the guard carrying its calibration: "
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
        return _folder_fingerprint(folder)

    @classmethod
    def execute(cls, model, guard, positive, negative, vae, folder, seed, probes, steps, cfg, sampler_name,
                scheduler, width, height) -> io.NodeOutput:
        return _calibrate(cls, model, guard, positive, negative, vae, folder, seed, probes, steps, cfg,
                          sampler_name, scheduler, width, height)
