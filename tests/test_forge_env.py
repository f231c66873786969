"""The Forge test-environment builder, without building or starting Forge."""
from __future__ import annotations

import shutil
import sys
from collections import namedtuple
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import forge_env  # noqa: E402

Usage = namedtuple("Usage", "total used free")


def test_low_disk_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(forge_env, "CACHE", tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * 2**30, 8 * 2**30, 2 * 2**30))
    with pytest.raises(SystemExit) as e:
        forge_env._check_disk()
    msg = str(e.value)
    assert str(tmp_path) in msg and "2.0 GB free" in msg and "about 10 GB" in msg


def test_missing_source_archive_names_the_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(forge_env, "HOSTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        forge_env._source(forge_env.FORGE_TAR)
    assert str(tmp_path) in str(e.value) and "CPSAMPLE_HOSTS_DIR" in str(e.value)


def test_forge_requirements_keep_pins_but_not_the_torch_or_setuptools_ones(monkeypatch, tmp_path):
    (tmp_path / "requirements_versions.txt").write_text(
        "setuptools==69.5.1  # temp fix\nGitPython==3.1.32\ntorch\ntorchvision==0.18.1\ngradio==4.40.0\n\n")
    monkeypatch.setattr(forge_env, "FORGE_DIR", tmp_path)
    reqs, pins = forge_env._forge_requirements()
    assert "GitPython==3.1.32" in reqs and "gradio==4.40.0" in reqs
    assert not any(r.lower().startswith(("torch", "setuptools==")) for r in reqs)
    assert forge_env.SETUPTOOLS in reqs and "joblib" in reqs
    assert pins == ["GitPython==3.1.32", "gradio==4.40.0"]


def test_stale_stamp_is_not_ready(monkeypatch, tmp_path):
    monkeypatch.setattr(forge_env, "STAMP", tmp_path / "stamp.json")
    (tmp_path / "stamp.json").write_text('{"recipe_info": {"recipe": 0}}')
    assert not forge_env.is_ready()
