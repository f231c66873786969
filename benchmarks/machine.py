"""The machine a benchmark ran on, for its output.

A guard trained with the same seed is not the same guard on every CPU: the float kernels torch picks
(AVX2 or AVX-512, oneDNN's and the BLAS's code paths) round differently, and the stop check that ends
training passes or fails on such a difference (docs/protection.md, "Another machine, other guards").
A CPU's name ("AMD EPYC") does not say which code paths ran: oneDNN picks its kernels and block sizes,
and so its summation order, by the CPU's model and caches. So the record names the family, model,
stepping and cache as well, and every result that depends on a trained guard records them and the
kernels it ran with.
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


def cpu_id() -> str:
    """``family F model M stepping S, cache C`` from /proc/cpuinfo; empty where that is not readable."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("cpu family", "model", "stepping", "cache size") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:  # the first processor's block is enough
                break
    except OSError:
        return ""
    if "cpu family" not in fields:
        return ""
    text = f"family {fields['cpu family']} model {fields.get('model', '?')} stepping {fields.get('stepping', '?')}"
    return text + (f", cache {fields['cache size']}" if "cache size" in fields else "")


def cpu_capability() -> str:
    """The vector instruction set torch's own CPU kernels dispatch to (e.g. AVX2, AVX512)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # torch before 2.1
        return "unknown"


def info() -> dict[str, object]:
    return {"cpu": cpu_model(), "cpu_id": cpu_id(), "cpu_capability": cpu_capability(), "logical_cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def describe() -> str:
    """One line: ``<cpu> (<family, model ...>; <capability> kernels), N logical CPUs, torch X (T threads),
    python Y``."""
    m = info()
    ident = f"{m['cpu_id']}; " if m["cpu_id"] else ""
    return (f"{m['cpu']} ({ident}{m['cpu_capability']} kernels), {m['logical_cpus']} logical CPUs, "
            f"torch {m['torch']} ({m['threads']} threads), python {m['python']}")
