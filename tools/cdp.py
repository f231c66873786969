"""Drive headless Chromium over the DevTools protocol with the standard library only.

Used by the browser test (tests/integration/test_browser.py, project venv: no aiohttp or websockets
there) and by tools/workflow_thumbnails.py. A minimal RFC 6455 client (text frames, masking,
fragmentation, ping) is all the protocol needs.

    with Chromium(width=1600, height=900) as page:
        page.navigate("http://127.0.0.1:8188")
        page.wait_for("!!window.app?.graph")
        page.screenshot(Path("shot.png"))
        page.console  # console messages, exceptions and log entries seen so far
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

# Flags for a quiet, reproducible headless browser: no network of its own, no first-run UI.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio", "--no-default-browser-check"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    """Blocking client: ``send(text)``, ``recv(timeout)`` → text."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + (f"?{u.query}" if u.query else "")
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        status, _, self._buf = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n", 1)[0] + b" ":
            raise ConnectionError(f"websocket handshake refused: {status[:200]!r}")

    def _need(self, n: int) -> None:
        """Buffer at least n bytes; a timeout leaves the buffer intact (frames are consumed whole)."""
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("websocket closed")
            self._buf += chunk

    def _frame(self) -> tuple[int, int, bytes]:
        """(first byte, opcode, payload) of the next whole frame."""
        self._need(2)
        b0, b1 = self._buf[0], self._buf[1]
        n, at = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, at = struct.unpack(">H", self._buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, at = struct.unpack(">Q", self._buf[2:10])[0], 10
        mask = None
        if b1 & 0x80:
            self._need(at + 4)
            mask, at = self._buf[at:at + 4], at + 4
        self._need(at + n)
        data, self._buf = self._buf[at:at + n], self._buf[at + n:]
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return b0, b0 & 0x0F, data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
            (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self.sock.sendall(head + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self, timeout: float | None = None) -> str:
        self.sock.settimeout(timeout)
        parts: list[bytes] = []
        while True:
            b0, opcode, data = self._frame()
            if opcode == 0x9:
                self._send_frame(0xA, data)
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode in (0x1, 0x2, 0x0):
                parts.append(data)
                if b0 & 0x80:
                    return b"".join(parts).decode(errors="replace")

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class Chromium:
    """One headless Chromium with one page; a fresh profile each time, removed on close."""

    def __init__(self, width: int = 1600, height: int = 900, binary: str | None = None) -> None:
        self.binary = binary or find_chromium()
        if not self.binary:
            raise RuntimeError("no Chromium found: install Debian's `chromium` (tools/ensure_chromium.sh)")
        self.width, self.height = width, height
        self.console: list[dict[str, Any]] = []  # {"kind", "level", "text", "url"}
        self.events: list[dict[str, Any]] = []
        self._id = 0

    def __enter__(self) -> "Chromium":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="cpsample_chromium_")
        self.proc = subprocess.Popen([self.binary, *FLAGS, "--remote-debugging-port=0",
                                      f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        t0 = time.time()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() - t0 > 60:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port in 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        page = None
        while page is None and time.time() - t0 < 60:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    page = next((t for t in json.loads(r.read()) if t.get("type") == "page"), None)
            except OSError:
                time.sleep(0.2)
        if page is None:
            self.close()
            raise RuntimeError("Chromium has no page target")
        self.ws = WebSocket(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)

    def _note(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            frames = (p.get("stackTrace") or {}).get("callFrames") or [{}]
            self.console.append({"kind": "console", "level": p.get("type"), "text": text,
                                 "url": frames[0].get("url", "")})
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            text = (d.get("exception") or {}).get("description") or d.get("text", "")
            self.console.append({"kind": "exception", "level": "error", "text": text, "url": d.get("url", "")})
        elif method == "Log.entryAdded":
            e = p.get("entry", {})
            self.console.append({"kind": "log", "level": e.get("level"), "text": e.get("text", ""),
                                 "url": e.get("url", "")})
        elif method:
            self.events.append(msg)
            del self.events[:-200]

    def call(self, method: str, timeout: float = 60.0, **params) -> dict[str, Any]:
        self._id += 1
        mid = self._id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"{method}: no answer in {timeout:.0f} s")
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._note(msg)

    def evaluate(self, expr: str, timeout: float = 60.0) -> Any:
        """Value of a JS expression (promises awaited); a JS exception raises RuntimeError with its text."""
        res = self.call("Runtime.evaluate", timeout=timeout, expression=expr, awaitPromise=True,
                        returnByValue=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise RuntimeError(f"JS error in {expr[:120]!r}: {(d.get('exception') or {}).get('description') or d}")
        return res.get("result", {}).get("value")

    def wait_for(self, expr: str, timeout: float = 60.0, interval: float = 0.25) -> Any:
        """Poll a JS expression until it is truthy; its value."""
        t0 = time.time()
        while True:
            v = self.evaluate(expr)
            if v:
                return v
            if time.time() - t0 > timeout:
                raise TimeoutError(f"not true after {timeout:.0f} s: {expr[:200]}")
            self.pump(interval)

    def pump(self, seconds: float) -> None:
        """Wait, collecting console messages and events meanwhile."""
        deadline = time.time() + seconds
        while (left := deadline - time.time()) > 0:
            try:
                self._note(json.loads(self.ws.recv(timeout=left)))
            except (socket.timeout, TimeoutError):
                return

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path, jpeg_quality: int | None = None, scale: float = 1.0) -> Path:
        """The page as PNG, or as JPEG with ``jpeg_quality``; ``scale`` < 1 shrinks it."""
        opts: dict = {"format": "png"} if jpeg_quality is None else {"format": "jpeg", "quality": jpeg_quality}
        if scale != 1.0:
            size = self.evaluate("[document.documentElement.clientWidth, document.documentElement.clientHeight]")
            opts["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": scale}
        shot = self.call("Page.captureScreenshot", **opts)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                self.call("Browser.close", timeout=5)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            ws.close()
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if getattr(self, "profile", None):
            shutil.rmtree(self.profile, ignore_errors=True)
