"""X/Y/Z plot axes for CPSample's strength settings (scale, alpha and the sampling window).

An axis sets an attribute on the processing object that the CPSample script reads in ``process``
(cpsample_nodes.webui.settings.AXES); choosing one turns protection on for the plot.
"""
import sys
from pathlib import Path

from modules import script_callbacks, scripts

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from cpsample_nodes.webui.settings import AXES  # noqa: E402

LABELS = {"scale": "[CPSample] Scale", "alpha": "[CPSample] Alpha", "start_percent": "[CPSample] Start at",
          "end_percent": "[CPSample] End at"}


def _xyz_module():
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "xy_grid.py") and hasattr(data, "module"):
            return data.module
    return None


def add_axes() -> None:
    xyz = _xyz_module()
    if xyz is None:
        return
    have = {opt.label for opt in xyz.axis_options}
    for name, label in LABELS.items():
        if label not in have:
            xyz.axis_options.append(xyz.AxisOption(label, float, xyz.apply_field(AXES[name])))


script_callbacks.on_before_ui(add_axes, name="cpsample_xyz_axes")
