"""Install this pack's missing requirements into the running Python (ComfyUI-Manager, A1111/Forge).

Only what is missing is installed, and torch is never touched: it belongs to the host.
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


def main() -> int:
    todo = missing()
    if not todo:
        return 0
    if importlib.util.find_spec("torch") is None:
        print("[CPSample] torch is not installed in this Python; install the host (ComfyUI) first.", file=sys.stderr)
        return 1
    print(f"[CPSample] installing {' '.join(todo)}")
    # A constraint on the installed torch keeps pip from swapping it for another build.
    import torch
    constraint = Path(__file__).with_name(".torch-constraint.txt")
    constraint.write_text(f"torch=={torch.__version__}\n")
    try:
        return subprocess.call([sys.executable, "-m", "pip", "install", "-c", str(constraint), *todo])
    finally:
        constraint.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
