"""The machine a benchmark ran on, for its output.

A guard trained with the same seed is not the same guard on every CPU: the float kernels torch picks
(AVX2 or AVX-512, oneDNN's and the BLAS's code paths) round differently, and the stop check that ends
training passes or fails on such a difference (docs/design-log.md, "Another machine, other guards").
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


def first_cpu() -> dict[str, str]:
    """The fields of the first processor in /proc/cpuinfo (Linux); empty where it is not readable."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                if fields:  # the first processor's block is enough
                    break
                continue
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model(fields: dict[str, str] | None = None) -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    fields = first_cpu() if fields is None else fields
    return fields.get("model name") or platform.processor() or platform.machine()


def cpu_id(fields: dict[str, str] | None = None) -> str:
    """``family F model M stepping S, cache C`` from /proc/cpuinfo; empty where that is not readable."""
    fields = first_cpu() if fields is None else fields
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
    cpu = first_cpu()  # read once for both
    return {"cpu": cpu_model(cpu), "cpu_id": cpu_id(cpu), "cpu_capability": cpu_capability(), "logical_cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def describe() -> str:
    """One line: ``<cpu> (<family, model ...>; <capability> kernels), N logical CPUs, torch X (T threads),
    python Y``."""
    m = info()
    ident = f"{m['cpu_id']}; " if m["cpu_id"] else ""
    return (f"{m['cpu']} ({ident}{m['cpu_capability']} kernels), {m['logical_cpus']} logical CPUs, "
            f"torch {m['torch']} ({m['threads']} threads), python {m['python']}")
