"""CPSample Protect Model (node id CPSampleProtectModel): the model with the guard's guided step.

Which settings apply (the guard's calibration or the inputs) is ``usecases.settings``; the step is
``usecases.guided_step``, set as a sampler post-CFG function (ModelPatcher.set_model_sampler_post_cfg_function,
same arguments in ComfyUI 0.3.64 … 0.38): it receives the CFG result `denoised`, the noisy `input` and
`sigma`; its output is what every sampler steps on, and several such functions chain (PAG, SAG, … compose).
The model is cloned, never mutated; model_sampling is read per call, so a ModelSampling* node placed after
this one is honoured.
"""
from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..core.guard import DEFAULT_ALPHA, DEFAULT_SCALE
from ..usecases.guided_step import GUARD_INPUTS, MARKER, GuidedStep, PostCFG, Sampling
from ..usecases.settings import resolve_settings
from . import host
from .events import GateReport
from .inputs import CATEGORY, GUARD, node_id, send_text

log = logging.getLogger("CPSample")

SETTINGS_CALIBRATION = "calibration (if the guard has one)"
SETTINGS_MANUAL = "manual"
SETTINGS_MODES = (SETTINGS_CALIBRATION, SETTINGS_MANUAL)


def comfy_sampling(args: dict) -> Sampling | None:
    """The model_sampling of this call (its identity, noise space and percent → σ), or None."""
    ms = getattr(args.get("model"), "model_sampling", None)
    if ms is None:
        return None
    return id(ms), lambda: host.noise_space(ms), ms.percent_to_sigma


def protect(model, step: GuidedStep, node: str | None = None):
    """A clone of ``model`` with the step as its post-CFG function; each sampling run with it ends with
    the gate's report to the Protect Model node ``node`` (older hosts without wrappers: no report)."""
    m = model.clone()
    m.set_model_sampler_post_cfg_function(PostCFG(step, comfy_sampling))
    try:
        from comfy.patcher_extension import WrappersMP
    except ImportError:
        return m
    if hasattr(m, "add_wrapper_with_key"):
        m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, MARKER, GateReport(step.gate, node))
    return m


class ProtectModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleProtectModel",
            display_name="CPSample Protect Model",
            category=CATEGORY,
            description=("Adds the guard's gradient to every denoising step (a post-CFG function) so samples "
                         "move away from the guard's training images. Works with every sampler, CFG on or at 1, "
                         "and with other guidance nodes; an ancestral or SDE sampler lets steered samples settle into new "
                         "images rather than near-copies. Scale 0 returns the model unchanged."),
            inputs=[
                io.Model.Input("model", tooltip="The model to protect (the one the guard was trained for)."),
                GUARD.Input("guard", tooltip="A guard from Train Guard or Load Guard for this model's latents."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100000.0, step=1.0,
                               tooltip="Guidance strength s. 0 disables protection (bit-identical output). Each "
                                       "step's change is capped at the noise still present (σ RMS), and stays "
                                       "bounded where a schedule starts from pure noise."),
                io.Float.Input("alpha", default=DEFAULT_ALPHA, min=0.0, max=0.5, step=0.0001, round=0.00001,
                               tooltip="Confidence band α: only samples the guard labels with probability "
                                       "outside [α, 1−α] (near its training images) are steered. 0.5 steers all."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Start of the sampling window (0 = first, noisiest step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="End of the sampling window (1 = last step)."),
                io.Combo.Input("objective", options=["uncertainty", "opposite"], default="uncertainty",
                               tooltip="uncertainty: push the guard's probability toward ½; opposite: push toward "
                                       "the label it does not predict."),
                io.Combo.Input("guard_input", options=list(GUARD_INPUTS), default=GUARD_INPUTS[0],
                               tooltip="denoised: the guard reads the model's x0 prediction (sees early where a "
                                       "sample is heading); noisy: the paper's form, the noisy latent at σ."),
                # Last and optional: workflows saved before it keep their widget values and get the default.
                io.Combo.Input("settings", options=list(SETTINGS_MODES), default=SETTINGS_CALIBRATION,
                               optional=True,
                               tooltip="calibration: a guard from CPSample Calibrate Guard brings the strength, "
                                       "α and σ window measured on your model, used instead of scale and alpha "
                                       "(scale 0 still turns protection off); a guard without a calibration "
                                       "uses scale and alpha as set. manual: always scale and alpha as set."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The protected model (a clone).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, guard, scale, alpha, start_percent, end_percent, objective="uncertainty",
                guard_input=None, settings=None) -> io.NodeOutput:
        mode = settings or SETTINGS_CALIBRATION
        node = node_id(cls)
        try:
            if mode not in SETTINGS_MODES:
                raise ValueError(f"settings must be one of {list(SETTINGS_MODES)}, got {mode!r}")
            host.check_guard(guard, model)
            applied = resolve_settings(guard, scale, alpha, use_calibration=mode == SETTINGS_CALIBRATION)
            step = GuidedStep(guard, applied, start_percent, end_percent, objective, guard_input or GUARD_INPUTS[0])
        except ValueError as e:  # HostMismatch, a bad window or a hand-edited calibration
            raise ValueError(f"CPSample Protect Model: {e}") from None
        protected = protect(model, step, node) if step.scale > 0 else model
        unchanged = " (the model is returned unchanged)" if step.scale == 0 else ""
        if applied.calibrated:  # the widgets show other values than the ones that run
            unchanged = (f"; the guard's calibration is used instead of the scale {scale:g} and alpha {alpha:g} "
                         f"widgets (settings: manual uses them)")
        text = f"CPSample Protect Model: {applied.description}{unchanged}"
        log.info(text)
        send_text(node, text)
        return io.NodeOutput(protected, ui=ui.PreviewText(text))
