"""CPSample nodes, V3 schema (comfy_api.latest), category "CPSample".

Node ids are stable (workflows store them): CPSampleTrainGuard, CPSampleTrainGuardWithClassImages,
CPSampleSaveGuard, CPSampleLoadGuard,
CPSampleProtectModel, CPSampleReplicationCheck; CPSampleCalibrateGuard lives in calibrate_node.py.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import re
from collections import OrderedDict

import torch
from comfy_api.latest import io, ui

from ..core import GuardFileError, TrainingStopped, load_guard, save_guard, train_guard
from ..core import images as imgs
from ..core.network import DEFAULT_HEADS
from ..core.training import DEFAULT_NEGATIVES, MAX_HEADS, outcome_text, progress_text
from . import events, host, paths
from .guard_facts import guard_facts
from .patch import GUARD_INPUTS, protect
from ..core.guard import DEFAULT_ALPHA, DEFAULT_SCALE

DEFAULT_MAX_STEPS = int(inspect.signature(train_guard).parameters["max_steps"].default)
from . import replication

log = logging.getLogger("CPSample")

CATEGORY = "CPSample"
NO_FOLDER = "(none: use the images input)"
Guard = io.Custom("CPSAMPLE_GUARD")

POLICY_HELP = ("How images of different sizes are brought to one size. resize: scale the short side to "
               "'resolution' (0 = the smallest short side in the set) and centre-crop a square; crop: "
               "centre-crop everything to the smallest common size without scaling; exact: every image "
               "must already have the same size. Sizes are rounded down to a multiple of the VAE's "
               "downscale factor.")


def _input_dir() -> str:
    import folder_paths

    return folder_paths.get_input_directory()


def _folder_options() -> list[str]:
    import folder_paths

    try:
        subs = folder_paths.get_input_subfolders()
    except AttributeError:  # older ComfyUI without get_input_subfolders
        base = _input_dir()
        subs = sorted(os.path.relpath(r, base).replace(os.sep, "/") for r, _, _ in os.walk(base) if r != base)
    return [s for s in subs if not any(part.startswith(".") for part in s.split("/"))] + [NO_FOLDER]


def _folder_path(folder: str) -> str:
    base = os.path.realpath(_input_dir())
    path = os.path.realpath(os.path.join(base, folder))
    if os.path.commonpath([base, path]) != base:
        raise ValueError(f"image folder {folder!r} is outside ComfyUI's input directory")
    return path


def _downscale(vae) -> int:
    try:
        r = vae.spacial_compression_encode()
    except AttributeError:
        r = getattr(vae, "downscale_ratio", 8)
    if isinstance(r, (tuple, list)):
        r = r[-1]
    try:
        return max(1, int(r))
    except (TypeError, ValueError):
        return 8


def _send_text(node_id, text: str) -> None:
    if node_id is None:
        return
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # noqa: BLE001 - progress text is cosmetic (absent in some versions)
        pass


# Encoded latents by (image content hash, VAE identity): re-running Train Guard with other training
# settings (steps, batch size, seed) does not encode again. Small LRU, kept in RAM.
_LATENT_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_LATENT_CACHE_SIZE = 4
LATENT_CACHE_STATS = {"hits": 0, "misses": 0}


def _vae_key(vae) -> tuple:
    """Identity of a VAE for the cache: the object plus a cheap weight fingerprint, so a new VAE that
    happens to reuse a freed object's address does not hit the old entry."""
    module = getattr(vae, "first_stage_model", vae)
    fp = []
    try:
        params = list(module.parameters())
        for p in (params[:2] + params[-2:]) if params else []:
            fp.append((tuple(p.shape), float(p.detach().double().sum())))
    except Exception:  # noqa: BLE001
        pass
    return (id(module), tuple(fp))


def _encode_cached(vae, images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    key = (imgs.content_hash(images), _vae_key(vae))
    hit = _LATENT_CACHE.get(key)
    if hit is not None:
        _LATENT_CACHE.move_to_end(key)
        LATENT_CACHE_STATS["hits"] += 1
        return hit, True
    lat = vae.encode(images[..., :3]).to("cpu", torch.float32)
    _LATENT_CACHE[key] = lat
    while len(_LATENT_CACHE) > _LATENT_CACHE_SIZE:
        _LATENT_CACHE.popitem(last=False)
    LATENT_CACHE_STATS["misses"] += 1
    return lat, False


def _comfy_version() -> str:
    try:
        import comfyui_version

        return f"ComfyUI {comfyui_version.__version__}"
    except Exception:  # noqa: BLE001
        return "ComfyUI"


def _folder_fingerprint(folder: str | None) -> str:
    """Changes when the folder's files change, so a node re-runs then, not only on a new name."""
    if not folder or folder == NO_FOLDER:
        return ""
    try:
        return imgs.folder_fingerprint(_folder_path(folder))
    except Exception as e:  # noqa: BLE001 - a broken folder is reported by execute, with its name
        return repr(e)


def _train_inputs() -> list:
    return [
        io.Model.Input("model", tooltip="The model to protect: its noise schedule (model_sampling) and "
                       "latent format define the noisy latents the guard learns."),
        io.Vae.Input("vae", tooltip="The VAE that encodes the training images into this model's latents."),
        io.Combo.Input("folder", options=_folder_options(),
                       tooltip="Sub-folder of ComfyUI's input directory holding the training images "
                               f"(the fine-tuning set). '{NO_FOLDER}' uses only the images input."),
        io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                     tooltip="Seed for the random labels, the weight initialisation and the noise."),
        io.Int.Input("max_steps", default=DEFAULT_MAX_STEPS, min=1, max=100000,
                     tooltip="Upper bound on optimisation steps; training stops earlier once the guard "
                             "is right about every image at every noise level that matters."),
        io.Int.Input("batch_size", default=32, min=1, max=1024,
                     tooltip="Noisy latents per optimisation step."),
        io.Combo.Input("resolution_policy", options=list(imgs.POLICIES), default="resize",
                       tooltip=POLICY_HELP),
        io.Int.Input("resolution", default=0, min=0, max=4096, step=8,
                     tooltip="Training resolution in pixels for the 'resize' policy; 0 uses the "
                             "smallest short side among the images. Ignored by 'crop' and 'exact'."),
        io.Image.Input("images", optional=True,
                       tooltip="Optional extra training images from other nodes (added to the folder's, "
                               "brought to the same size)."),
    ]


# Last among each node's inputs and optional, so saved workflows (widget values in order) and API
# prompts made before it existed keep loading; they now train the default, three heads.
HEADS_HELP = ("Independent random labellings the guard fits at once, one output each, at the same cost per "
              "sampling step. 3 (the default): the pushes of the labellings share what moves a sample away "
              "from a training image and differ in the rest; on the benchmarks three-head guards met the "
              "protection goal in 56 of 60 calibrations (one head: 49) and the copy goal uncalibrated in "
              "30 of 48 (one head: 22), with somewhat worse samples where a fine-tune copies every time "
              "(docs/protection.md, 'Guards with several heads'). 1 is the paper's guard, one labelling. It "
              "trained in about as many steps either way.")


def _heads_input() -> io.Int.Input:
    return io.Int.Input("heads", default=DEFAULT_HEADS, min=1, max=MAX_HEADS, optional=True, tooltip=HEADS_HELP)


def _class_batch(class_folder: str | None, class_images, hw: tuple[int, int]) -> torch.Tensor | None:
    """Class images (same kind of picture, not in the training set) at the training size, or None."""
    parts = []
    if class_folder and class_folder != NO_FOLDER:
        parts.append(imgs.load_image_folder(_folder_path(class_folder), hw=hw)[0])
    if class_images is not None:
        parts.append(imgs.conform_tensor(class_images, hw))
    return torch.cat(parts) if parts else None


def _train(node_id, model, vae, folder, seed, max_steps, batch_size, resolution_policy, resolution, images=None,
           class_folder=None, class_images=None, heads=None) -> io.NodeOutput:
    import comfy.model_management as mm
    import comfy.utils

    multiple = _downscale(vae)
    names: list[str] = []
    batch = None
    hw = None
    if folder and folder != NO_FOLDER:
        path = _folder_path(folder)
        batch, names, hw = imgs.load_image_folder(path, policy=resolution_policy, size=resolution,
                                                  multiple=multiple)
    if images is not None:
        if hw is None:
            extra, hw = imgs.conform(imgs.tensor_to_pil(images), policy=resolution_policy, size=resolution,
                                     multiple=multiple)
        else:
            extra = imgs.conform_tensor(images, hw)
        batch = extra if batch is None else torch.cat([batch, extra.to(batch)])
        names += [f"images input #{i}" for i in range(images.shape[0])]
    if batch is None:
        raise ValueError("no training images: choose an image folder or connect the images input")
    if batch.shape[0] < 2:
        raise ValueError(f"a guard needs at least 2 training images, got {batch.shape[0]}")
    class_batch = _class_batch(class_folder, class_images, hw)
    if class_batch is not None:
        imgs.refuse_training_images_as_class(batch, names, class_batch)

    raw, cached = _encode_cached(vae, batch)
    lf = host.latent_format(model)
    latents = lf.process_in(raw.clone())
    ms = host.model_sampling(model)
    space = host.noise_space(ms)
    desc = host.describe(model)
    if latents.shape[1] != desc["latent_channels"]:
        raise ValueError(f"the VAE makes {latents.shape[1]}-channel latents but the model's latent format "
                         f"{desc['latent_format']} has {desc['latent_channels']}: use this model's VAE")
    negatives = DEFAULT_NEGATIVES
    if class_batch is not None:
        negatives = lf.process_in(_encode_cached(vae, class_batch)[0].clone())

    pbar = comfy.utils.ProgressBar(max_steps, node_id=node_id)
    last = {"acc": {}}
    chart = events.TrainChart(node_id)  # the node's live loss / accuracy chart (web/cpsample.js)

    def progress(step, total, stats):
        chart.update(step, total, stats)
        acc = stats.get("accuracy") or {}
        if acc != last["acc"]:
            last["acc"] = acc
            _send_text(node_id, progress_text(step, total, stats))
        pbar.update_absolute(step, total)  # also raises if the user pressed Cancel

    def should_stop():
        return mm.processing_interrupted()

    info = {"latent_format": desc["latent_format"], "model_sampling": desc["model_sampling"],
            "host": _comfy_version(), "image_size": f"{hw[1]}x{hw[0]}",
            "resolution_policy": resolution_policy}
    if class_batch is not None:
        info["class_images"] = int(class_batch.shape[0])
    try:
        with torch.inference_mode(False):
            guard = train_guard(latents, space=space, seed=seed, progress=progress, should_stop=should_stop,
                                max_steps=max_steps, batch_size=batch_size, info=info, negatives=negatives,
                                heads=DEFAULT_HEADS if heads is None else int(heads), device=mm.get_torch_device())
    except TrainingStopped:
        mm.throw_exception_if_processing_interrupted()
        raise
    guard = guard.with_space(space.builtin())  # no references to this model's objects
    guard.info = dict(guard.info)
    report = (f"CPSample guard: {batch.shape[0]} images at {hw[1]}x{hw[0]} px "
              f"(policy {resolution_policy}, multiple of {multiple}), "
              f"latents {tuple(latents.shape[1:])} {'from cache' if cached else 'encoded'}; "
              f"{f'{class_batch.shape[0]} class images as negatives; ' if class_batch is not None else ''}"
              f"{desc['latent_format']}, {desc['model_sampling']} ({space.kind}); "
              f"{outcome_text(guard.info)}")
    log.info(report)
    _send_text(node_id, report)
    final = chart.finish(guard.info)
    return io.NodeOutput(guard, report, ui={"text": (report,), "cpsample_train": (final,)})


_TRAIN_DESCRIPTION = ("Trains a small noise-aware classifier (the guard) to memorise random labels on the images a "
                      "model was fine-tuned on. Protect Model then steers sampling away from them.")


def _train_outputs() -> list:
    return [Guard.Output(display_name="guard", tooltip="The trained guard."),
            io.String.Output(display_name="report", tooltip="What was trained: images, size, accuracy.")]


def _node_id(cls):
    return cls.hidden.unique_id if getattr(cls, "hidden", None) is not None else None


class TrainGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleTrainGuard",
            display_name="CPSample Train Guard",
            category=CATEGORY,
            description=_TRAIN_DESCRIPTION,
            inputs=_train_inputs() + [_heads_input()],
            outputs=_train_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, folder=None, **kwargs):
        return _folder_fingerprint(folder)

    @classmethod
    def execute(cls, model, vae, folder, seed, max_steps, batch_size, resolution_policy, resolution,
                images=None, heads=None) -> io.NodeOutput:
        return _train(_node_id(cls), model, vae, folder, seed, max_steps, batch_size, resolution_policy,
                      resolution, images, heads=heads)


class TrainGuardWithClassImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleTrainGuardWithClassImages",
            display_name="CPSample Train Guard (with class images)",
            category=CATEGORY,
            description=_TRAIN_DESCRIPTION + (" Class images (pictures of the same kind that are not in the "
                                              "training set, e.g. DreamBooth regularisation images) teach the "
                                              "guard to stay unsure on new pictures of that kind, so it pushes "
                                              "only near the training images and spoils fewer samples."),
            inputs=_train_inputs() + [
                io.Combo.Input("class_folder", options=_folder_options(),
                               tooltip="Sub-folder of ComfyUI's input directory holding class images: the same "
                                       "kind of picture as the training set, none of them in it. Brought to the "
                                       f"training size. '{NO_FOLDER}' uses only the class_images input."),
                io.Image.Input("class_images", optional=True,
                               tooltip="Optional extra class images from other nodes."),
                _heads_input(),
            ],
            outputs=_train_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, folder=None, class_folder=None, **kwargs):
        return _folder_fingerprint(folder) + "|" + _folder_fingerprint(class_folder)

    @classmethod
    def execute(cls, model, vae, folder, seed, max_steps, batch_size, resolution_policy, resolution,
                images=None, class_folder=None, class_images=None, heads=None) -> io.NodeOutput:
        if (not class_folder or class_folder == NO_FOLDER) and class_images is None:
            raise ValueError("no class images: choose a class_folder or connect the class_images input "
                             "(or use CPSample Train Guard, which needs none)")
        return _train(_node_id(cls), model, vae, folder, seed, max_steps, batch_size, resolution_policy,
                      resolution, images, class_folder, class_images, heads)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._\-]*$")


class SaveGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleSaveGuard",
            display_name="CPSample Save Guard",
            category=CATEGORY,
            description="Saves a guard to models/cpsample/ as .safetensors (weights + metadata, no image names).",
            inputs=[
                Guard.Input("guard", tooltip="The guard to save."),
                io.String.Input("filename", default="guard",
                                tooltip="File name in models/cpsample/ (letters, digits, space, . _ -); "
                                        ".safetensors is added."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file of that name; otherwise a number is added."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the guard was written.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, guard, filename, overwrite) -> io.NodeOutput:
        name = filename.strip()
        if name.lower().endswith(".safetensors"):
            name = name[: -len(".safetensors")]
        if not _SAFE_NAME.match(name) or ".." in name:
            raise ValueError(f"filename {filename!r} is not allowed: use letters, digits, space, '.', '_' or '-' "
                             f"(no folders)")
        folder = paths.save_dir()
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name + ".safetensors")
        if not overwrite:
            i = 1
            while os.path.exists(path):
                path = os.path.join(folder, f"{name}_{i:05d}.safetensors")
                i += 1
        save_guard(guard, path)
        msg = f"saved guard to {path}"
        log.info(msg)
        return io.NodeOutput(path, ui=ui.PreviewText(msg))


class LoadGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleLoadGuard",
            display_name="CPSample Load Guard",
            category=CATEGORY,
            description="Loads a guard saved by CPSample Save Guard from models/cpsample/.",
            inputs=[io.Combo.Input("guard_name", options=paths.guard_files(),
                                   tooltip="Guard file in models/cpsample/ (or a 'cpsample:' folder of "
                                           "extra_model_paths.yaml).")],
            outputs=[Guard.Output(display_name="guard", tooltip="The loaded guard."),
                     io.String.Output(display_name="info", tooltip="The guard's metadata as JSON.")],
        )

    @classmethod
    def fingerprint_inputs(cls, guard_name=None, **kwargs):
        try:
            st = os.stat(paths.guard_path(guard_name))
            return f"{st.st_size}:{st.st_mtime_ns}"
        except Exception as e:  # noqa: BLE001
            return repr(e)

    @classmethod
    def execute(cls, guard_name) -> io.NodeOutput:
        path = paths.guard_path(guard_name)
        try:
            guard = load_guard(path)
        except GuardFileError as e:
            raise ValueError(f"cannot load guard {guard_name!r}: {e}") from None
        info = json.dumps(guard.info, indent=1, default=str, sort_keys=True)
        # The node shows these facts in a panel (web/cpsample.js); the info output keeps the full JSON.
        return io.NodeOutput(guard, info, ui={"cpsample_guard": (guard_facts(guard, guard_name, path),)})


SETTINGS_CALIBRATION = "calibration (if the guard has one)"
SETTINGS_MANUAL = "manual"
SETTINGS_MODES = (SETTINGS_CALIBRATION, SETTINGS_MANUAL)


def _protect_settings(guard, mode: str, scale: float, alpha: float) -> tuple[float, float, dict, str]:
    """(scale, alpha, further guide kwargs, a sentence saying which settings Protect Model uses)."""
    if mode not in SETTINGS_MODES:
        raise ValueError(f"settings must be one of {list(SETTINGS_MODES)}, got {mode!r}")
    if scale == 0:
        return 0.0, alpha, {}, "CPSample Protect Model: scale 0, protection off (the model is returned unchanged)"
    has_cal = guard.info.get("calibration") is not None
    # 'manual' never reads the calibration; otherwise it is checked (a hand-edited file fails by value)
    cal = guard.calibrated_settings() if mode == SETTINGS_CALIBRATION else None
    if cal is None:
        if has_cal:
            why = " (the guard's calibration is ignored: settings 'manual')"
        elif mode == SETTINGS_CALIBRATION:
            why = " (this guard has no calibration: CPSample Calibrate Guard measures one on your model)"
        else:
            why = ""
        return scale, alpha, {}, f"CPSample Protect Model: manual settings scale {scale:g}, α {alpha:g}{why}"
    extra = {k: cal[k] for k in ("max_step", "sigma_max") if k in cal}
    scale, alpha = cal.get("scale", scale), cal.get("alpha", alpha)
    info = guard.info.get("calibration") or {}
    before, after = info.get("unguarded_rate"), info.get("calibrated_rate")
    rates = ""
    if isinstance(before, (int, float)) and isinstance(after, (int, float)):
        rates = f"; copies on {info.get('probes', '?')} probes {before:.0%} → {after:.0%}"
    if info.get("reached") is False:
        rates += " (the calibration missed its target: the best setting found; see its report)"
    used = _format_settings({"scale": scale, "alpha": alpha, **extra})
    return scale, alpha, extra, f"CPSample Protect Model: calibrated settings {used}{rates}"


def _format_settings(settings: dict) -> str:
    """e.g. 'scale 1000, α 0.2, σ ≤ 2, max step 1' (guide keyword arguments for people)."""
    parts = []
    for k, v in settings.items():
        if k == "sigma_max":
            parts.append("every step" if v is None else f"σ ≤ {v:g}")
        elif k == "max_step":
            parts.append(f"max step {'none' if v is None else format(v, 'g')}")
        else:
            parts.append(f"{'α' if k == 'alpha' else k} {v:g}")
    return ", ".join(parts)


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
                Guard.Input("guard", tooltip="A guard from Train Guard or Load Guard for this model's latents."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100000.0, step=1.0,
                               tooltip="Guidance strength s. 0 disables protection (bit-identical output). Each "
                                       "step's change is capped at the noise still present (σ RMS)."),
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
        try:
            scale, alpha, extra, text = _protect_settings(guard, settings or SETTINGS_CALIBRATION, scale, alpha)
            m = protect(model, guard, scale, alpha, start_percent, end_percent, objective, guard_input, extra,
                        node_id=_node_id(cls))
        except ValueError as e:  # HostMismatch, a bad window or a hand-edited calibration
            raise ValueError(f"CPSample Protect Model: {e}") from None
        log.info(text)
        _send_text(_node_id(cls), text)
        return io.NodeOutput(m, ui=ui.PreviewText(text))


class ReplicationCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CPSampleReplicationCheck",
            display_name="CPSample Replication Check",
            category=CATEGORY,
            description=("For each generated image: the nearest training image, its calibrated ℓ2 ratio "
                         "(Carlini et al. 2023; near 0 = copy), SSIM and optional CLIP-vision cosine. "
                         "Outputs a text report and a grid of pairs."),
            inputs=[
                io.Image.Input("images", tooltip="Generated images to check."),
                io.Combo.Input("folder", options=_folder_options(),
                               tooltip="Sub-folder of the input directory with the training images "
                                       "(the one Train Guard used)."),
                io.Int.Input("k", default=10, min=1, max=1000,
                             tooltip="Neighbours 2..k+1 whose mean distance calibrates the ℓ2 ratio."),
                io.Float.Input("ratio_threshold", default=round(replication.REPLICA_L2_RATIO, 3), min=0.0, max=1.0,
                               step=0.01, tooltip="A calibrated ℓ2 ratio below this flags a likely copy "
                                                  "(1/3 as in Carlini et al. 2023)."),
                io.Float.Input("ssim_threshold", default=replication.REPLICA_SSIM, min=0.0, max=1.0, step=0.01,
                               tooltip="A best SSIM above this flags a likely copy."),
                io.Image.Input("training_images", optional=True,
                               tooltip="Optional training images from other nodes (added to the folder's)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional CLIP vision model: adds the cosine similarity of image "
                                            "embeddings to the nearest training image."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="Per image: nearest training image and scores."),
                     io.Image.Output(display_name="pairs", tooltip="Generated | nearest training image, scores drawn.")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder=None, **kwargs):
        return _folder_fingerprint(folder)

    @classmethod
    def execute(cls, images, folder, k, ratio_threshold, ssim_threshold, training_images=None, clip_vision=None
                ) -> io.NodeOutput:
        hw = (int(images.shape[1]), int(images.shape[2]))
        parts, names = [], []
        if folder and folder != NO_FOLDER:
            path = _folder_path(folder)
            files = imgs.list_images(path)
            parts.append(imgs.conform([imgs.open_rgb(p) for p in files], names=[p.name for p in files], hw=hw)[0])
            names += [p.name for p in files]
        if training_images is not None:
            parts.append(imgs.conform_tensor(training_images, hw))
            names += [f"training_images #{i}" for i in range(training_images.shape[0])]
        if not parts:
            raise ValueError("no training images: choose a folder or connect training_images")
        train = torch.cat(parts)
        gen = images[..., :3].float().cpu()
        sc = replication.scores(gen, train, k)
        nearest = sc["nearest"]
        cos = None
        if clip_vision is not None:
            cos_all = replication.clip_cosine(clip_vision, gen, train)
            cos = cos_all.gather(1, nearest.view(-1, 1).to(cos_all.device)).view(-1).cpu()
        report, captions, _ = replication.report(gen, sc, names, ratio_threshold, ssim_threshold, cos)
        grid = replication.pair_grid(gen, train, nearest, captions)
        return io.NodeOutput(report, grid, ui=ui.PreviewText(report))


NODES = [TrainGuard, TrainGuardWithClassImages, SaveGuard, LoadGuard, ProtectModel, ReplicationCheck]
