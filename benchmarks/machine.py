"""The machine a benchmark ran on, for its output.

A guard trained with the same seed is not the same guard on every CPU: the float kernels torch picks
(AVX2 or AVX-512, oneDNN's and the BLAS's code paths) round differently, and the stop check that ends
training passes or fails on such a difference (docs/protection.md, "Another machine, other guards").
So every result that depends on a trained guard records the CPU and the kernels it ran with.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The vector instruction set torch's own CPU kernels dispatch to (e.g. AVX2, AVX512)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # torch before 2.1
        return "unknown"


def info() -> dict[str, object]:
    return {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "logical_cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def describe() -> str:
    """One line: ``<cpu> (<capability> kernels), N logical CPUs, torch X (T threads), python Y``."""
    m = info()
    return (f"{m['cpu']} ({m['cpu_capability']} kernels), {m['logical_cpus']} logical CPUs, "
            f"torch {m['torch']} ({m['threads']} threads), python {m['python']}")
