"""The --device check shared by the benchmark scripts that can run on a GPU."""
from __future__ import annotations

import sys


def require_device(device: str) -> None:
    """Exit 2 with a message when ``device`` names a GPU this machine does not have."""
    import torch

    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        print(f"--device {device}: no CUDA device here (torch {torch.__version__}); use --device cpu",
              file=sys.stderr)
        sys.exit(2)
