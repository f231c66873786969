"""Stands in for torchvision in the browser demo's CPU environment when no CPU build of torchvision
could be installed (tools/comfyui_cpu_env.py copies it into that venv; nothing else uses it).

ComfyUI 0.3.75 imports torchvision at startup for model families the demo never loads (Stable Cascade,
Cosmos, ACE audio) and through spandrel for upscale models. Importing anything from here works; calling
or subclassing it raises an error that says torchvision is missing and how to get it.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+placeholder"
_WHY = ("torchvision is not installed in this CPU demo environment (only a placeholder is): "
        "run tools/serve_comfyui.py --cuda, or install torchvision's CPU build from "
        "https://download.pytorch.org/whl/cpu into .cache/comfyui-cpu/venv")


class _Missing:
    """Any name looked up in the placeholder: fine to import, an error to use."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> "_Missing":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name}: {_WHY}")

    def __mro_entries__(self, bases):
        raise RuntimeError(f"cannot subclass {self._name}: {_WHY}")

    def __repr__(self) -> str:
        return f"<placeholder {self._name}>"


def _module_getattr(prefix: str):
    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{prefix}.{attr}")
    return __getattr__


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves every `torchvision.<sub>` module as a placeholder module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__getattr__ = _module_getattr(spec.name)
        return mod

    def exec_module(self, module):
        parent, _, child = module.__name__.rpartition(".")
        setattr(sys.modules[parent], child, module)


__getattr__ = _module_getattr(__name__)
if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.append(_Finder())
