"""CPSample Train Guard and Train Guard (with class images): a guard from the fine-tune's images.

Node ids CPSampleTrainGuard, CPSampleTrainGuardWithClassImages; inputs keep their names and order
(saved workflows store widget values in order). The training itself is ``usecases.training``.
"""
from __future__ import annotations

import inspect
import logging

import torch
from comfy_api.latest import io

from ..core import TrainingStopped, train_guard
from ..core import images as imgs
from ..core.network import DEFAULT_HEADS
from ..core.training import MAX_HEADS, progress_text
from ..usecases.training import class_images, train_from_images, training_images
from . import events, host, latent_cache
from .inputs import CATEGORY, GUARD, NO_FOLDER, chosen_folder, folder_fingerprint, folder_options, node_id, send_text

log = logging.getLogger("CPSample")

DEFAULT_MAX_STEPS = int(inspect.signature(train_guard).parameters["max_steps"].default)
DESCRIPTION = ("Trains a small noise-aware classifier (the guard) to memorise random labels on the images a "
               "model was fine-tuned on. Protect Model then steers sampling away from them.")
POLICY_HELP = ("How images of different sizes and shapes are brought to the sizes the guard trains at. The "
               "folder is read with its sub-folders (a LoRA dataset tree, kohya's '10_name' repeat folders "
               "included: each image once); caption and other non-image files are skipped. bucket: each "
               "image keeps its aspect, scaled to the nearest of a few sizes of about 'resolution' squared "
               "pixels (as LoRA trainers' aspect-ratio buckets, e.g. 832x1216 at 1024), and training batches "
               "one size at a time. resize: scale the short side to 'resolution' and centre-crop a square; "
               "crop: centre-crop everything to the smallest common size without scaling; exact: every "
               "image must already have the same size. Sizes are rounded down to a multiple of the VAE's "
               "downscale factor.")
# Last among each node's inputs and optional, so saved workflows (widget values in order) and API
# prompts made before it existed keep loading; they now train the default, three heads.
HEADS_HELP = ("Independent random labellings the guard fits at once, one output each, at the same cost per "
              "sampling step. 3 (the default): the pushes of the labellings share what moves a sample away "
              "from a training image and differ in the rest; on the benchmarks three-head guards met the "
              "protection goal in 56 of 60 calibrations (one head: 49) and the copy goal uncalibrated in "
              "30 of 48 (one head: 22), with somewhat worse samples where a fine-tune copies every time "
              "(docs/protection.md, 'Guards with several heads'). 1 is the paper's guard, one labelling. It "
              "trained in about as many steps either way.")


def train_inputs() -> list:
    return [
        io.Model.Input("model", tooltip="The model to protect: its noise schedule (model_sampling) and "
                       "latent format define the noisy latents the guard learns."),
        io.Vae.Input("vae", tooltip="The VAE that encodes the training images into this model's latents."),
        io.Combo.Input("folder", options=folder_options(),
                       tooltip="Sub-folder of ComfyUI's input directory holding the training images "
                               f"(the fine-tuning set). '{NO_FOLDER}' uses only the images input."),
        io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                     tooltip="Seed for the random labels, the weight initialisation and the noise."),
        io.Int.Input("max_steps", default=DEFAULT_MAX_STEPS, min=1, max=100000,
                     tooltip="Upper bound on optimisation steps; training stops earlier once the guard "
                             "is right about every image at every noise level that matters."),
        io.Int.Input("batch_size", default=32, min=1, max=1024,
                     tooltip="Noisy latents per optimisation step."),
        io.Combo.Input("resolution_policy", options=list(imgs.POLICIES), default="bucket",
                       tooltip=POLICY_HELP),
        io.Int.Input("resolution", default=0, min=0, max=4096, step=8,
                     tooltip="Training resolution in pixels: the square side for 'resize' (0: the smallest "
                             "short side among the images), the bucket area's side for 'bucket' (0: the "
                             "square root of the smallest image's area; 1024 for SDXL-style buckets). "
                             "Ignored by 'crop' and 'exact'."),
        io.Image.Input("images", optional=True,
                       tooltip="Optional extra training images from other nodes (added to the folder's, "
                               "brought to the same size)."),
    ]


def heads_input() -> io.Int.Input:
    return io.Int.Input("heads", default=DEFAULT_HEADS, min=1, max=MAX_HEADS, optional=True, tooltip=HEADS_HELP)


def train_outputs() -> list:
    return [GUARD.Output(display_name="guard", tooltip="The trained guard."),
            io.String.Output(display_name="report", tooltip="What was trained: images, size, accuracy.")]


def train(node: str | None, model, vae, folder, seed, max_steps, batch_size, resolution_policy, resolution,
          images=None, class_folder=None, class_extra=None, heads=None) -> io.NodeOutput:
    """Both nodes' execute: the images, ``usecases.training``, the chart and the report."""
    import comfy.model_management as mm
    import comfy.utils

    training = training_images(chosen_folder(folder), resolution_policy, resolution, host.vae_downscale(vae),
                               extra=images)
    classes = class_images(training, chosen_folder(class_folder), class_extra)
    encode, notes = latent_cache.model_encoder(vae, host.latent_format(model))
    space = host.noise_space(host.model_sampling(model))
    pbar = comfy.utils.ProgressBar(max_steps, node_id=node)
    chart = events.TrainChart(node)  # the node's live loss / accuracy chart (web/cpsample.js)
    last = {"acc": {}}

    def progress(step: int, total: int, stats: dict) -> None:
        chart.update(step, total, stats)
        if (stats.get("accuracy") or {}) != last["acc"]:
            last["acc"] = stats.get("accuracy") or {}
            send_text(node, progress_text(step, total, stats))
        pbar.update_absolute(step, total)  # also raises if the user pressed Cancel

    try:
        trained = train_from_images(
            training, encode=encode, family=host.family(model), space=space, host=host.version(), seed=seed,
            max_steps=max_steps, batch_size=batch_size, heads=DEFAULT_HEADS if heads is None else int(heads),
            classes=classes, progress=progress, should_stop=mm.processing_interrupted,
            device=mm.get_torch_device(), latents_note=lambda: notes[0])
    except TrainingStopped:
        mm.throw_exception_if_processing_interrupted()
        raise
    report = f"CPSample guard: {trained.report}"
    log.info(report)
    send_text(node, report)
    final = chart.finish(trained.guard.info)
    return io.NodeOutput(trained.guard, report, ui={"text": (report,), "cpsample_train": (final,)})


class TrainGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleTrainGuard",
            display_name="CPSample Train Guard",
            category=CATEGORY,
            description=DESCRIPTION,
            inputs=train_inputs() + [heads_input()],
            outputs=train_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, folder=None, **kwargs):
        return folder_fingerprint(folder)

    @classmethod
    def execute(cls, model, vae, folder, seed, max_steps, batch_size, resolution_policy, resolution,
                images=None, heads=None) -> io.NodeOutput:
        return train(node_id(cls), model, vae, folder, seed, max_steps, batch_size, resolution_policy,
                     resolution, images, heads=heads)


class TrainGuardWithClassImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleTrainGuardWithClassImages",
            display_name="CPSample Train Guard (with class images)",
            category=CATEGORY,
            description=DESCRIPTION + (" Class images (pictures of the same kind that are not in the "
                                       "training set, e.g. DreamBooth regularisation images) teach the "
                                       "guard to stay unsure on new pictures of that kind, so it pushes "
                                       "only near the training images and spoils fewer samples."),
            inputs=train_inputs() + [
                io.Combo.Input("class_folder", options=folder_options(),
                               tooltip="Sub-folder of ComfyUI's input directory holding class images: the same "
                                       "kind of picture as the training set, none of them in it. Brought to the "
                                       f"training size. '{NO_FOLDER}' uses only the class_images input."),
                io.Image.Input("class_images", optional=True,
                               tooltip="Optional extra class images from other nodes."),
                heads_input(),
            ],
            outputs=train_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, folder=None, class_folder=None, **kwargs):
        return folder_fingerprint(folder) + "|" + folder_fingerprint(class_folder)

    @classmethod
    def execute(cls, model, vae, folder, seed, max_steps, batch_size, resolution_policy, resolution,
                images=None, class_folder=None, class_images=None, heads=None) -> io.NodeOutput:
        if chosen_folder(class_folder) is None and class_images is None:
            raise ValueError("no class images: choose a class_folder or connect the class_images input "
                             "(or use CPSample Train Guard, which needs none)")
        return train(node_id(cls), model, vae, folder, seed, max_steps, batch_size, resolution_policy,
                     resolution, images, class_folder, class_images, heads)
