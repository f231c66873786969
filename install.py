"""Install this pack's missing requirements into the running Python (ComfyUI-Manager, A1111/Forge).

Only what is missing is installed, and torch is never touched: it belongs to the host. Under the
AUTOMATIC1111/Forge launcher (which runs this file with the webui's Python and the webui on
PYTHONPATH) pip is called through the launcher's own helper, so its --skip-install and index URL
settings apply; elsewhere (ComfyUI-Manager, by hand) through `python -m pip`.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

# import name -> pip requirement
REQUIREMENTS = {"numpy": "numpy", "safetensors": "safetensors", "einops": "einops",
                "kornia": "kornia", "PIL": "pillow"}


def missing() -> list[str]:
    return [req for mod, req in REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]


def _webui_launcher():
    """The A1111/Forge launcher module when this runs under it, else None."""
    if importlib.util.find_spec("launch") is None or importlib.util.find_spec("modules") is None:
        return None
    try:
        import launch
    except Exception:  # noqa: BLE001 - some other module called "launch": not the webui
        return None
    return launch if callable(getattr(launch, "run_pip", None)) else None


def main() -> int:
    todo = missing()
    if not todo:
        return 0
    if importlib.util.find_spec("torch") is None:
        print("[CPSample] torch is not installed in this Python; install the host (ComfyUI, A1111 or Forge) first.",
              file=sys.stderr)
        return 1
    print(f"[CPSample] installing {' '.join(todo)}")
    # A constraint on the installed torch keeps pip from swapping it for another build.
    import torch
    constraint = Path(__file__).with_name(".torch-constraint.txt")
    constraint.write_text(f"torch=={torch.__version__}\n")
    try:
        launcher = _webui_launcher()
        if launcher is not None:
            launcher.run_pip(f'install -c "{constraint}" {" ".join(todo)}', f"CPSample requirements: {' '.join(todo)}")
            return 0
        return subprocess.call([sys.executable, "-m", "pip", "install", "-c", str(constraint), *todo])
    finally:
        constraint.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
