"""The CPSample tab (train a guard on the current checkpoint; calibrate it on the model, prompt and sampler
you generate with; check generated images for copies of the training images) and the same operations as
HTTP routes under /cpsample/."""
import sys
from pathlib import Path

import gradio as gr

from modules import script_callbacks, shared
from modules.ui_common import create_refresh_button

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from cpsample_nodes.core import images as imgs  # noqa: E402
from cpsample_nodes.core.metrics import REPLICA_L2_RATIO, REPLICA_SSIM  # noqa: E402
from cpsample_nodes.core.calibration import MIN_PROBES, PROBE_COST_NOTE  # noqa: E402
from cpsample_nodes.usecases.guard_files import list_guards  # noqa: E402
from cpsample_nodes.webui import api, host, tasks  # noqa: E402
from cpsample_nodes.webui.calibrate import CalibrateRequest  # noqa: E402
from cpsample_nodes.webui.train import DEFAULT_HEADS, DEFAULT_MAX_STEPS, MAX_HEADS  # noqa: E402


def _train(folder, class_folder, name, seed, max_steps, batch_size, policy, resolution, overwrite, heads=DEFAULT_HEADS,
           progress=gr.Progress()):
    values = {"folder": folder, "class_folder": class_folder, "name": name, "seed": int(seed),
              "max_steps": int(max_steps), "batch_size": int(batch_size), "resolution_policy": policy,
              "resolution": int(resolution), "overwrite": bool(overwrite), "heads": int(heads)}
    try:
        result = tasks.train_guard(values, on_progress=lambda s, t, text: progress((s, t), desc=text))
    except api.CLIENT_ERRORS as e:
        return f"Error: {e}"
    if result["stopped"]:
        return result["report"]
    return f"{result['report']}\nSaved to {result['path']}. Pick it in the CPSample accordion (refresh the list)."


def _calibrate(guard, folder, prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, width, height,
               seed, probes, save_as, progress=gr.Progress()):
    values = {"guard": guard or "", "folder": folder, "prompt": prompt, "negative_prompt": negative_prompt,
              "sampler_name": sampler_name, "scheduler": scheduler, "steps": int(steps), "cfg_scale": float(cfg_scale),
              "width": int(width), "height": int(height), "seed": int(seed), "probes": int(probes),
              "save_as": save_as}
    try:
        result = tasks.calibrate_guard(values, on_progress=lambda s, t, text: progress((s, t), desc=text))
    except api.CLIENT_ERRORS as e:
        return f"Error: {e}", None
    return result["report"], result.get("picture")


def _guard_choices() -> list[str]:
    return list_guards(host.guards_dir())


def _sampler_choices() -> tuple[list[str], list[str]]:
    from modules import sd_samplers

    samplers = [s.name for s in sd_samplers.visible_samplers()] if hasattr(sd_samplers, "visible_samplers") \
        else [s.name for s in sd_samplers.all_samplers]
    try:
        from modules import sd_schedulers
        schedulers = [s.label for s in sd_schedulers.schedulers]
    except ImportError:
        schedulers = ["Automatic"]
    return samplers, schedulers


def _open(files) -> list:
    from PIL import Image

    out = []
    for f in files or []:
        path = f if isinstance(f, str) else getattr(f, "name", None)  # gradio 4 gives paths, gradio 3 temp files
        out.append(imgs.open_rgb(path) if path else Image.open(f))
    return out


def _check(files, folder, k, ratio_threshold, ssim_threshold):
    try:
        result = tasks.replication_check(_open(files), {"folder": folder, "k": int(k),
                                                        "ratio_threshold": ratio_threshold,
                                                        "ssim_threshold": ssim_threshold})
    except api.CLIENT_ERRORS as e:
        return f"Error: {e}", None
    return result["report"], result["pairs"]


def _train_panel() -> None:
    gr.Markdown("### Train a guard\nOn the checkpoint loaded now, with its own VAE; saved in "
                "`models/cpsample/`.")
    folder = gr.Textbox(label="Training images folder", placeholder="/path/to/the fine-tune images",
                        elem_id="cpsample_train_folder")
    class_folder = gr.Textbox(label="Class images folder (optional)",
                              placeholder="other pictures of the same kind, none of the training ones",
                              elem_id="cpsample_train_class_folder")
    with gr.Row():
        name = gr.Textbox(label="Guard name", value="guard", elem_id="cpsample_train_name")
        overwrite = gr.Checkbox(label="Overwrite", value=False, elem_id="cpsample_train_overwrite")
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, elem_id="cpsample_train_seed")
        max_steps = gr.Number(label="Max steps", value=DEFAULT_MAX_STEPS, precision=0,
                              elem_id="cpsample_train_max_steps")
        batch_size = gr.Number(label="Batch size", value=32, precision=0, elem_id="cpsample_train_batch_size")
    with gr.Row():
        policy = gr.Dropdown(label="Resolution policy", choices=list(imgs.POLICIES), value="bucket",
                             elem_id="cpsample_train_policy")
        resolution = gr.Number(label="Resolution (0: smallest side)", value=0, precision=0,
                               elem_id="cpsample_train_resolution")
        heads = gr.Number(label=f"Heads (1-{MAX_HEADS})", value=DEFAULT_HEADS, precision=0,
                          elem_id="cpsample_train_heads")
    with gr.Row():
        train = gr.Button("Train guard", variant="primary", elem_id="cpsample_train_button")
        stop = gr.Button("Interrupt", elem_id="cpsample_train_interrupt")
    report = gr.Textbox(label="Report", lines=6, interactive=False, elem_id="cpsample_train_report")
    train.click(_train, inputs=[folder, class_folder, name, seed, max_steps, batch_size, policy, resolution,
                                overwrite, heads], outputs=[report])
    stop.click(lambda: shared.state.interrupt(), inputs=[], outputs=[])


def _check_panel() -> None:
    gr.Markdown("### Replication check\nGenerated images against the training folder: nearest "
                "training image, calibrated ℓ2 ratio and SSIM, side by side.")
    files = gr.File(label="Generated images", file_count="multiple", file_types=["image"],
                    elem_id="cpsample_check_images")
    check_folder = gr.Textbox(label="Training images folder", elem_id="cpsample_check_folder")
    with gr.Row():
        k = gr.Number(label="k", value=10, precision=0, elem_id="cpsample_check_k")
        ratio = gr.Number(label="Copy below ratio", value=round(REPLICA_L2_RATIO, 3), elem_id="cpsample_check_ratio")
        ssim = gr.Number(label="Copy above SSIM", value=REPLICA_SSIM, elem_id="cpsample_check_ssim")
    check = gr.Button("Check", elem_id="cpsample_check_button")
    check_report = gr.Textbox(label="Check report", lines=6, interactive=False, elem_id="cpsample_check_report")
    pairs = gr.Image(label="Generated | nearest training image", type="pil", interactive=False,
                     elem_id="cpsample_check_pairs")
    check.click(_check, inputs=[files, check_folder, k, ratio, ssim], outputs=[check_report, pairs])


def _calibrate_inputs() -> list:
    """The calibration form, in the order of ``_calibrate``'s arguments."""
    gr.Markdown("### Calibrate a guard\nOn the checkpoint loaded now (LoRA in the prompt), with the prompt "
                "and sampler you generate with: measures how often the model copies its training "
                "images, then finds the gentlest guard setting that cuts the copies to a tenth and "
                "checks it again on as many new seeds. The calibration is saved in the guard file; "
                "the CPSample accordion uses it (\"Use the guard's calibration\").")
    defaults = CalibrateRequest(guard="", folder="")
    samplers, schedulers = _sampler_choices()
    with gr.Row():
        guard = gr.Dropdown(label="Guard", choices=_guard_choices(), allow_custom_value=True,
                            elem_id="cpsample_calibrate_guard")
        create_refresh_button(guard, lambda: None, lambda: {"choices": _guard_choices()},
                              "cpsample_calibrate_guard_refresh")
    folder = gr.Textbox(label="Training images folder (the one the guard was trained on)",
                        elem_id="cpsample_calibrate_folder")
    prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a prompt you generate with",
                        elem_id="cpsample_calibrate_prompt")
    negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="cpsample_calibrate_negative")
    with gr.Row():
        sampler = gr.Dropdown(label="Sampler", choices=samplers,
                              value=defaults.sampler_name if defaults.sampler_name in samplers
                              else (samplers[0] if samplers else None), elem_id="cpsample_calibrate_sampler")
        scheduler = gr.Dropdown(label="Schedule type", choices=schedulers,
                                value=defaults.scheduler if defaults.scheduler in schedulers
                                else (schedulers[0] if schedulers else None), elem_id="cpsample_calibrate_scheduler")
    with gr.Row():
        steps = gr.Number(label="Steps", value=defaults.steps, precision=0, elem_id="cpsample_calibrate_steps")
        cfg = gr.Number(label="CFG scale", value=defaults.cfg_scale, elem_id="cpsample_calibrate_cfg")
    with gr.Row():
        width = gr.Number(label="Width (0: training size)", value=0, precision=0, elem_id="cpsample_calibrate_width")
        height = gr.Number(label="Height (0: training size)", value=0, precision=0,
                           elem_id="cpsample_calibrate_height")
    with gr.Row():
        seed = gr.Number(label="First probe seed", value=defaults.seed, precision=0, elem_id="cpsample_calibrate_seed")
        probes = gr.Number(label=f"Probes (at least {MIN_PROBES})", value=defaults.probes, precision=0,
                           info=PROBE_COST_NOTE, elem_id="cpsample_calibrate_probes")
        save_as = gr.Textbox(label="Save as (empty: the guard's file)", elem_id="cpsample_calibrate_save_as")
    return [guard, folder, prompt, negative, sampler, scheduler, steps, cfg, width, height, seed, probes, save_as]


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row():
            with gr.Column():
                _train_panel()
            with gr.Column():
                _check_panel()
        with gr.Row():
            with gr.Column():
                inputs = _calibrate_inputs()
                with gr.Row():
                    calibrate = gr.Button("Calibrate guard", variant="primary", elem_id="cpsample_calibrate_button")
                    stop = gr.Button("Interrupt", elem_id="cpsample_calibrate_interrupt")
            with gr.Column():
                report = gr.Textbox(label="Calibration report", lines=14, interactive=False,
                                    elem_id="cpsample_calibrate_report")
                picture = gr.Image(label="Copy rate per setting; unguarded | calibrated | nearest training image",
                                   type="pil", interactive=False, elem_id="cpsample_calibrate_picture")
        calibrate.click(_calibrate, inputs=inputs, outputs=[report, picture])
        stop.click(lambda: shared.state.interrupt(), inputs=[], outputs=[])
    return [(tab, "CPSample", "cpsample")]


def on_app_started(demo, app):
    opts = shared.cmd_opts
    if opts.api or opts.nowebui:  # the routes come with the webui's own API, behind its credentials
        api.register(app, api.parse_auth(opts.api_auth))


script_callbacks.on_ui_tabs(on_ui_tabs, name="cpsample_tab")
script_callbacks.on_app_started(on_app_started, name="cpsample_api")
