"""Run a real Forge with this extension: data directory, server process, HTTP helpers.

Standard library only, so the project venv (pytest) and any python can import it. The server itself
runs with the venv that `tools/forge_env.py` builds. Used by `tests/forge/conftest.py`.

One server gets its own `--data-dir` (Forge keeps config.json, extensions/, models/ and outputs/
there), so guards and outputs belong to one test session and the cached Forge folder stays clean:

    data/extensions/CPSample -> this repository   (the extension, as a user's clone would sit)
    data/extensions/<name>   -> test-only extensions the caller names (`extensions`)
    data/models/Stable-diffusion/<checkpoint>    -> the cached random SD1.5 checkpoint
    data/models/cpsample/                        guards
    data/outputs/                                what Forge saves
    input/demo/                                  8 small distinct PNGs (training folders for tests)
    forge.log                                    the server's stdout and stderr
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from comfyui_harness import free_port, synthetic_png
from host_process import HostProcess, child_env

REPO = Path(__file__).resolve().parent.parent
EXTENSION_NAME = "CPSample"


def _own_session_dying_with_parent() -> None:
    """In the child: a process group of its own (stop() ends it whole), and on Linux a SIGTERM when the
    test process dies, so a killed pytest leaves no Forge behind holding GBs of memory."""
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def make_data_dir(root: Path, checkpoint: Path, link: bool = True, extensions: dict[str, Path] | None = None) -> dict:
    """Lay out a Forge data directory under `root`; the extension is a symlink to this repo (or a copy), each of
    `extensions` ({name: folder}) a symlink beside it."""
    root = Path(root)
    data = root / "data"
    ext = data / "extensions" / EXTENSION_NAME
    ext.parent.mkdir(parents=True, exist_ok=True)
    if not ext.exists():
        if link:
            ext.symlink_to(REPO, target_is_directory=True)
        else:
            shutil.copytree(REPO, ext, ignore=shutil.ignore_patterns(".git", ".cache", ".venv", "__pycache__",
                                                                      ".pytest_cache", "*.egg-info"))
    for name, folder in (extensions or {}).items():
        if not (ext.parent / name).exists():
            (ext.parent / name).symlink_to(Path(folder).resolve(), target_is_directory=True)
    ckpt_dir = data / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / checkpoint.name
    if not ckpt.exists():
        ckpt.symlink_to(checkpoint)
    (data / "models" / "cpsample").mkdir(parents=True, exist_ok=True)
    inputs = root / "input"
    for i in range(8):
        synthetic_png(inputs / "demo" / f"train_{i:02d}.png", 64, 64, seed=i)
    return {"root": root, "data": data, "models": data / "models", "input": inputs,
            "outputs": data / "outputs", "checkpoint": ckpt, "extension": ext}


class ForgeServer(HostProcess):
    """A Forge process on 127.0.0.1:<free port>, CPU only, one torch thread, offline."""
    name = "Forge"

    def __init__(self, layout: dict, python: Path, forge_dir: Path, port: int | None = None,
                 webui: bool = True, threads: int | None = 1, extra_args: tuple = ()):
        self.layout, self.python, self.forge_dir = layout, Path(python), Path(forge_dir)
        self.port = port or free_port()
        self.webui, self.threads = webui, threads
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(layout["root"]) / "forge.log"
        self.startup_s: float | None = None
        self.startup_log = ""
        self.first_txt2img_s: float | None = None

    # ---- paths the tests use
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return Path(self.layout["data"])

    @property
    def models_dir(self) -> Path:
        return Path(self.layout["models"])

    @property
    def input_dir(self) -> Path:
        return Path(self.layout["input"])

    @property
    def outputs_dir(self) -> Path:
        return Path(self.layout["outputs"])

    # ---- process
    def command(self) -> list:
        cmd = [str(self.python), "launch.py",
               # No clones, installs or version checks: the venv and repositories/ are already built.
               "--skip-prepare-environment", "--skip-install", "--skip-python-version-check",
               "--skip-torch-cuda-test", "--skip-version-check", "--no-download-sd-model",
               "--always-cpu", "--use-cpu", "all", "--precision", "full", "--disable-nan-check", "--no-hashing",
               "--api", "--server-name", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--ckpt", str(self.layout["checkpoint"]),
               # Gradio serves only the allowed paths, by default the data dir: with the data dir outside
               # Forge's folder, Forge's own script.js and javascript/ would answer 403.
               "--gradio-allowed-path", str(self.forge_dir)]
        if not self.webui:
            cmd.append("--nowebui")
        return cmd + self.extra_args

    def start(self, timeout: float = 300.0) -> "ForgeServer":
        env = child_env(self.threads, drop=("COMMANDLINE_ARGS",))
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
                    "GRADIO_ANALYTICS_ENABLED": "False"})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.forge_dir, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_own_session_dying_with_parent)
        self._wait_until_up(lambda: self.get("/sdapi/v1/options", timeout=5), "/sdapi/v1/options", timeout, 0.5,
                            (urllib.error.URLError, ConnectionError, OSError, ValueError))
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(timeout=20)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the server's own group (see _own_session_dying_with_parent)
        except ProcessLookupError:
            pass

    # ---- HTTP
    def _request(self, method: str, path: str, data=None, timeout: float = 60) -> tuple:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, (json.loads(raw) if raw else None)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str, timeout: float = 60):
        """GET → the decoded JSON; an HTTP error raises (with the body)."""
        status, body = self._request("GET", path, timeout=timeout)
        if status >= 400:
            raise urllib.error.HTTPError(self.url + path, status, json.dumps(body)[:2000], None, None)
        return body

    def post(self, path: str, json_body=None, timeout: float = 600) -> tuple:
        """POST JSON → (status, decoded JSON body); HTTP errors are returned, not raised."""
        return self._request("POST", path, {} if json_body is None else json_body, timeout=timeout)

    def txt2img(self, payload: dict, timeout: float = 600) -> dict:
        """POST /sdapi/v1/txt2img; returns the response (images as base64 PNG, info as a JSON string)."""
        status, body = self.post("/sdapi/v1/txt2img", payload, timeout=timeout)
        if status != 200:
            raise AssertionError(f"txt2img failed with HTTP {status}: {json.dumps(body)[:3000]}\n"
                                 f"log tail:\n{self.log()[-3000:]}")
        return body

    def interrupt(self) -> None:
        self.post("/sdapi/v1/interrupt", {})
