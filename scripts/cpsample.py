"""CPSample accordion for txt2img and img2img: steer generations away from a guard's training images.

Forge: a post-CFG function on a clone of the UNet patcher, set before every sampling (as Forge's
own PAG and SAG do); it sees every sampler's x0 prediction, x and σ. A1111: the shared CFG
callbacks, registered once here and acting only inside CPSample's own generations.
"""
import sys
from pathlib import Path

import gradio as gr

from modules import script_callbacks, scripts
from modules.ui_common import create_refresh_button
from modules.ui_components import InputAccordion

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from cpsample_nodes.core.guard import DEFAULT_ALPHA, DEFAULT_SCALE, OBJECTIVES  # noqa: E402
from cpsample_nodes.usecases.guard_files import list_guards  # noqa: E402
from cpsample_nodes.webui import a1111, generation, host  # noqa: E402
from cpsample_nodes.webui.settings import GUARD_INPUTS, INFOTEXT, restore_values  # noqa: E402


def _guard_choices() -> list[str]:
    return list_guards(host.guards_dir())


class CPSampleScript(scripts.Script):
    sorting_priority = 15

    def title(self):
        return "CPSample"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        choices = _guard_choices()
        with InputAccordion(False, label="CPSample", elem_id=self.elem_id("enabled")) as enabled:
            with gr.Row():
                guard = gr.Dropdown(label="Guard", choices=choices, value=choices[0] if choices else None,
                                    allow_custom_value=True, elem_id=self.elem_id("guard"))
                create_refresh_button(guard, lambda: None, lambda: {"choices": _guard_choices()},
                                      self.elem_id("guard_refresh"))
                use_calibration = gr.Checkbox(label="Use the guard's calibration", value=True,
                                              elem_id=self.elem_id("use_calibration"))
            with gr.Row():
                scale = gr.Slider(label="Guard scale", minimum=0.0, maximum=10000.0, step=10.0, value=DEFAULT_SCALE,
                                  elem_id=self.elem_id("scale"))
                alpha = gr.Slider(label="Gate alpha", minimum=0.0, maximum=0.5, step=0.001, value=DEFAULT_ALPHA,
                                  elem_id=self.elem_id("alpha"))
            with gr.Row():
                start = gr.Slider(label="Start at", minimum=0.0, maximum=1.0, step=0.01, value=0.0,
                                  elem_id=self.elem_id("start_percent"))
                end = gr.Slider(label="End at", minimum=0.0, maximum=1.0, step=0.01, value=1.0,
                                elem_id=self.elem_id("end_percent"))
            with gr.Row():
                objective = gr.Dropdown(label="Objective", choices=list(OBJECTIVES), value=OBJECTIVES[0],
                                        elem_id=self.elem_id("objective"))
                guard_input = gr.Dropdown(label="Guard reads", choices=list(GUARD_INPUTS), value=GUARD_INPUTS[0],
                                          elem_id=self.elem_id("guard_input"))

        def restore(key):
            return lambda d: restore_values(d).get(key, gr.update())

        # Paste / "send to": the settings come back; an infotext without CPSample keys turns it off.
        self.infotext_fields = [
            (enabled, lambda d: INFOTEXT["guard"] in d),
            # a gradio update: the host cannot convert into a dropdown that has no value yet, and the
            # list may be older than the guard
            (guard, lambda d: gr.update(value=d[INFOTEXT["guard"]], choices=_guard_choices())
             if INFOTEXT["guard"] in d else None),
            (scale, INFOTEXT["scale"]),
            (alpha, INFOTEXT["alpha"]),
            (start, INFOTEXT["start_percent"]),
            (end, INFOTEXT["end_percent"]),
            (objective, INFOTEXT["objective"]),
            (guard_input, INFOTEXT["guard_input"]),
            (use_calibration, restore("use_calibration")),
        ]
        # The order of settings.ARGS: what API callers pass in alwayson_scripts.
        return [enabled, guard, scale, alpha, start, end, objective, guard_input, use_calibration]

    def process(self, p, *args):
        generation.start(p, args, host.guards_dir())

    def process_before_every_sampling(self, p, *args, **kwargs):
        generation.before_sampling(p)

    def postprocess_batch(self, p, *args, **kwargs):
        generation.after_batch(p)

    def postprocess(self, p, processed, *args):
        generation.finish(p)


script_callbacks.on_cfg_denoiser(a1111.on_cfg_denoiser, name="cpsample_cfg_denoiser")
script_callbacks.on_cfg_after_cfg(a1111.on_cfg_after_cfg, name="cpsample_cfg_after_cfg")
