"""What the test harnesses' server processes share (tools/comfyui_harness.py, tools/forge_harness.py):
the child's environment, waiting for it to answer, and reading its log."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable


def child_env(threads: int | None, drop: tuple[str, ...] = ()) -> dict:
    """The environment for a host server: none of this process's Python paths, unbuffered output and,
    with ``threads``, that many OpenMP/MKL threads (on a small shared CPU, spinning OpenMP threads make
    the tiny test models several times slower)."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "VIRTUAL_ENV", *drop):
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


class HostProcess:
    """Mixin for a server class with ``proc`` (its Popen), ``log_path`` and ``stop()``."""
    name = "the host"
    proc: subprocess.Popen | None
    log_path: Path

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:  # the server class's own
        raise NotImplementedError

    def _wait_until_up(self, probe: Callable[[], object], what: str, timeout: float, poll_s: float,
                       errors: tuple[type[BaseException], ...]) -> None:
        """Call ``probe`` until it answers; sets ``startup_s`` and ``startup_log`` (what start-up printed,
        before any test's deliberate errors join the log). A process that exits, or no answer within
        ``timeout``, raises with the log's tail."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} during startup:\n"
                                   f"{self.log()[-6000:]}")
            try:
                probe()
                self.startup_s = time.time() - t0
                self.startup_log = self.log()
                return
            except errors:
                time.sleep(poll_s)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer {what} in {timeout:.0f} s:\n{self.log()[-6000:]}")
