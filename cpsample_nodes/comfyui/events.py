"""What the nodes tell the frontend (web/cpsample.js) while and after they run.

* ``cpsample.train`` {node, step, total, loss, accuracy, done}: Train Guard's live chart.
* ``cpsample.gate`` {node, summary, text}: after each sampling run with a protected model, what the gate
  did (``core.gate_log``); also one server log line.

Events go to the browser tab that queued the prompt (PromptServer's current client id), as ComfyUI's
own progress messages do. Nothing here carries image data.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

from ..core.gate_log import GateLog, describe

log = logging.getLogger("CPSample")

TRAIN_EVENT = "cpsample.train"
GATE_EVENT = "cpsample.gate"


def send(event: str, data: dict[str, Any]) -> None:
    try:
        from server import PromptServer

        server = PromptServer.instance
        server.send_sync(event, data, getattr(server, "client_id", None))
    except Exception:  # noqa: BLE001 - the UI is optional (a headless run has no PromptServer)
        pass


def _finite(v: Any) -> float | None:
    return round(float(v), 5) if isinstance(v, (int, float)) and math.isfinite(v) else None


class TrainChart:
    """Collects Train Guard's progress into a small series and streams it (at most ~8 messages a second,
    plus every new accuracy measurement, so a long run does not flood the socket)."""

    MAX_POINTS = 400

    def __init__(self, node_id: str | None) -> None:
        self.node_id = node_id
        self.points: list[dict[str, Any]] = []
        self._last_sent = 0.0
        self._last_acc: dict[str, float] = {}
        self._last_point: dict[str, Any] | None = None

    def update(self, step: int, total: int, stats: dict[str, Any]) -> None:
        acc = {k: round(float(v), 4) for k, v in (stats.get("accuracy") or {}).items()}
        point = {"step": int(step), "loss": _finite(stats.get("loss")), "accuracy": acc}
        self._last_point = point
        new_acc = acc != self._last_acc
        self._last_acc = acc
        now = time.monotonic()
        if new_acc or now - self._last_sent > 0.125 or step == total:
            self._keep(point)
            if self.node_id is not None:
                send(TRAIN_EVENT, {"node": str(self.node_id), "total": int(total), "done": False, **point})
            self._last_sent = now

    def _keep(self, point: dict[str, Any]) -> None:
        self.points.append(point)
        if len(self.points) > self.MAX_POINTS:  # thin the older half, keep the recent detail
            half = len(self.points) // 2
            self.points = self.points[:half:2] + self.points[half:]

    def finish(self, info: dict[str, Any]) -> dict[str, Any]:
        """The whole series plus the trained guard's final per-band accuracy (``info``: the guard's
        metadata), for the node's ui output and a last event. ``required_bands`` are the bands where
        memorising is possible, the ones "memorised" is judged on."""
        acc = info.get("accuracy") or {}
        if self._last_point is not None and (not self.points or self.points[-1]["step"] != self._last_point["step"]):
            self._keep(self._last_point)  # the step training stopped at ends the series
        final = {"node": str(self.node_id), "points": self.points, "steps": int(info.get("steps") or 0),
                 "done": True, "final_accuracy": {k: round(float(v), 4) for k, v in acc.items()},
                 "required_bands": [str(b) for b in info.get("required_bands") or []],
                 "memorised": bool(info.get("memorised"))}
        if self.node_id is not None:
            send(TRAIN_EVENT, final)
        return final


class GateReport:
    """OUTER_SAMPLE wrapper on the protected model: one GateLog per sampling run, reported at its end.

    ComfyUI calls it as ``fn(executor, noise, latent_image, sampler, sigmas, ...)`` for every sampler node
    that uses the model; the post-CFG function records into ``gate`` in between."""

    def __init__(self, gate: GateLog, node_id: str | None) -> None:
        self.gate = gate
        self.node_id = node_id

    def __call__(self, executor, *args, **kwargs):
        sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
        self.gate.reset(sigmas)
        out = executor(*args, **kwargs)
        summary = self.gate.summary()
        text = describe(summary)
        log.info(f"CPSample Protect Model{f' (node {self.node_id})' if self.node_id else ''}: {text}")
        if self.node_id is not None:
            send(GATE_EVENT, {"node": str(self.node_id), "summary": summary, "text": text})
        return out
