"""The CPSample tab (train a guard on the current checkpoint; check generated images for copies of
the training images) and the same operations as HTTP routes under /cpsample/."""
import sys
from pathlib import Path

import gradio as gr

from modules import script_callbacks, shared

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from cpsample_nodes.core import images as imgs  # noqa: E402
from cpsample_nodes.core.metrics import REPLICA_L2_RATIO, REPLICA_SSIM  # noqa: E402
from cpsample_nodes.webui import api, tasks  # noqa: E402
from cpsample_nodes.webui.train import DEFAULT_MAX_STEPS  # noqa: E402


def _train(folder, class_folder, name, seed, max_steps, batch_size, policy, resolution, overwrite,
           progress=gr.Progress()):
    values = {"folder": folder, "class_folder": class_folder, "name": name, "seed": int(seed),
              "max_steps": int(max_steps), "batch_size": int(batch_size), "resolution_policy": policy,
              "resolution": int(resolution), "overwrite": bool(overwrite)}
    try:
        result = tasks.train_guard(values, on_progress=lambda s, t, text: progress((s, t), desc=text))
    except api.CLIENT_ERRORS as e:
        return f"Error: {e}"
    if result["stopped"]:
        return result["report"]
    return f"{result['report']}\nSaved to {result['path']}. Pick it in the CPSample accordion (refresh the list)."


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


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row():
            with gr.Column():
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
                    batch_size = gr.Number(label="Batch size", value=32, precision=0,
                                           elem_id="cpsample_train_batch_size")
                with gr.Row():
                    policy = gr.Dropdown(label="Resolution policy", choices=list(imgs.POLICIES), value="resize",
                                         elem_id="cpsample_train_policy")
                    resolution = gr.Number(label="Resolution (0: smallest side)", value=0, precision=0,
                                           elem_id="cpsample_train_resolution")
                with gr.Row():
                    train = gr.Button("Train guard", variant="primary", elem_id="cpsample_train_button")
                    stop = gr.Button("Interrupt", elem_id="cpsample_train_interrupt")
                report = gr.Textbox(label="Report", lines=6, interactive=False, elem_id="cpsample_train_report")
            with gr.Column():
                gr.Markdown("### Replication check\nGenerated images against the training folder: nearest "
                            "training image, calibrated ℓ2 ratio and SSIM, side by side.")
                files = gr.File(label="Generated images", file_count="multiple", file_types=["image"],
                                elem_id="cpsample_check_images")
                check_folder = gr.Textbox(label="Training images folder", elem_id="cpsample_check_folder")
                with gr.Row():
                    k = gr.Number(label="k", value=10, precision=0, elem_id="cpsample_check_k")
                    ratio = gr.Number(label="Copy below ratio", value=round(REPLICA_L2_RATIO, 3),
                                      elem_id="cpsample_check_ratio")
                    ssim = gr.Number(label="Copy above SSIM", value=REPLICA_SSIM, elem_id="cpsample_check_ssim")
                check = gr.Button("Check", elem_id="cpsample_check_button")
                check_report = gr.Textbox(label="Check report", lines=6, interactive=False,
                                          elem_id="cpsample_check_report")
                pairs = gr.Image(label="Generated | nearest training image", type="pil", interactive=False,
                                 elem_id="cpsample_check_pairs")

        train.click(_train, inputs=[folder, class_folder, name, seed, max_steps, batch_size, policy, resolution,
                                    overwrite], outputs=[report])
        stop.click(lambda: shared.state.interrupt(), inputs=[], outputs=[])
        check.click(_check, inputs=[files, check_folder, k, ratio, ssim], outputs=[check_report, pairs])
    return [(tab, "CPSample", "cpsample")]


def on_app_started(demo, app):
    opts = shared.cmd_opts
    if opts.api or opts.nowebui:  # the routes come with the webui's own API, behind its credentials
        api.register(app, api.parse_auth(opts.api_auth))


script_callbacks.on_ui_tabs(on_ui_tabs, name="cpsample_tab")
script_callbacks.on_app_started(on_app_started, name="cpsample_api")
