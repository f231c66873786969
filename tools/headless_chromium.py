"""Drive headless Chromium over the DevTools protocol through a pipe: standard library only.

`--remote-debugging-pipe` makes Chromium read protocol commands from fd 3 and write replies to fd 4
(NUL-separated JSON), so no websocket client is needed and no debugging port is opened.

    with Chromium() as browser:
        page = browser.open("http://127.0.0.1:7860/", width=1400, height=1000)
        page.wait_for("!!document.querySelector('#tabs')", timeout=120)
        page.screenshot(Path("shot.png"), clip={"x": 0, "y": 0, "width": 800, "height": 600})
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# Quiet, offline, sandbox-free (containers run as root) and without a GPU.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """One tab, attached with a flat session id."""

    def __init__(self, browser: "Chromium", session_id: str):
        self.browser, self.session_id = browser, session_id

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        return self.browser.call(method, session_id=self.session_id, timeout=timeout, **params)

    def evaluate(self, expression: str, timeout: float = 60):
        res = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                        returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expression[:120]!r}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.5):
        """Evaluate until the value is truthy; return it (TimeoutError otherwise)."""
        t0 = time.time()
        value = None
        while time.time() - t0 < timeout:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"{expression[:200]!r} stayed {value!r} for {timeout:.0f} s")

    def screenshot(self, path: Path, clip: dict | None = None) -> Path:
        params = {"format": "png", "captureBeyondViewport": True}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = self.call("Page.captureScreenshot", timeout=120, **params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


class Chromium:
    """A headless Chromium process with a fresh profile, spoken to over the DevTools pipe."""

    def __init__(self, binary: str | None = None, extra_flags: tuple = ()):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise FileNotFoundError("no chromium found (Debian: apt-get install chromium; tools/ensure_chromium.sh)")
        self.extra_flags = list(extra_flags)
        self.proc: subprocess.Popen | None = None
        self._profile: str | None = None
        self._next_id = 0
        self._buf = b""
        self.events: list = []

    # ---- process
    def __enter__(self) -> "Chromium":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self._profile = tempfile.mkdtemp(prefix="cpsample-chromium-")
        cmd_r, cmd_w = os.pipe()
        rsp_r, rsp_w = os.pipe()
        # The child's ends go to fds 3 and 4; move them out of the way first so dup2 cannot clobber them.
        child_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(rsp_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r)
        os.close(rsp_w)

        def to_fds_3_4() -> None:
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        cmd = [self.binary, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
               *self.extra_flags, "about:blank"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=to_fds_3_4, pass_fds=(3, 4))
        os.close(child_r)
        os.close(child_w)
        self._w, self._r = cmd_w, rsp_r

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.call("Browser.close", timeout=10)
            except (OSError, RuntimeError, TimeoutError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for fd in (getattr(self, "_w", None), getattr(self, "_r", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._w = self._r = None
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    # ---- protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no reply from chromium")
            ready, _, _ = select.select([self._r], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with code {self.proc.returncode}")
                continue
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session_id: str | None = None, timeout: float = 60, **params) -> dict:
        self._next_id += 1
        mid = self._next_id
        msg = {"id": mid, "method": method, "params": params}
        if session_id:
            msg["sessionId"] = session_id
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._w, data):]
        deadline = time.time() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") != mid:
                self.events.append(reply)  # events and late replies: kept for debugging only
                del self.events[:-200]
                continue
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    def open(self, url: str, width: int = 1400, height: int = 1000) -> Page:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(self, session)
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=url)
        return page
