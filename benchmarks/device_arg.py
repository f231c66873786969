"""The --device check and GPU sync shared by the benchmark scripts that can run on a GPU."""
from __future__ import annotations

import sys


def require_device(device: str) -> None:
    """Exit 2 with a message when ``device`` names a GPU this machine does not have."""
    import torch

    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        print(f"--device {device}: no CUDA device here (torch {torch.__version__}); use --device cpu",
              file=sys.stderr)
        sys.exit(2)


def sync() -> None:
    """Wait for queued GPU work (a no-op on CPU), so that a timing covers finished work."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
