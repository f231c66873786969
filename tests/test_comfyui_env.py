"""The ComfyUI test-environment builder refuses, with a clear message, to start on a disk too full for it."""
from __future__ import annotations

import shutil
import sys
from collections import namedtuple
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import comfyui_env  # noqa: E402

Usage = namedtuple("Usage", "total used free")


def test_low_disk_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(comfyui_env, "CACHE", tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * 2**30, 9 * 2**30, 2**30))
    with pytest.raises(SystemExit) as e:
        comfyui_env._check_disk()
    msg = str(e.value)
    assert str(tmp_path) in msg and "1.0 GB free" in msg and f"{comfyui_env.NEEDED_FREE_GB} GB" in msg


def test_enough_disk_passes(monkeypatch, tmp_path):
    monkeypatch.setattr(comfyui_env, "CACHE", tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(100 * 2**30, 0, 50 * 2**30))
    comfyui_env._check_disk()
