"""The ComfyUI frontend in headless Chromium: open it clean, load a workflow, press Run, wait.

Shared by the browser test (tests/integration/test_browser.py) and tools/workflow_thumbnails.py, so both
see the page a user sees. Standard library only (tools/cdp.py).
"""
from __future__ import annotations

import json
import time
from typing import Any

import comfyui_harness as H
from cdp import Chromium

# First-run UI that would cover the graph: the template browser (a server setting) and the
# "Nodes 2.0" banner (the frontend's localStorage flag).
SERVER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
LOCAL_STORAGE = {"vueNodesBannerDismissed": "true"}


def prepare_server(server: H.ComfyServer, extra: dict[str, Any] | None = None) -> None:
    for key, value in {**SERVER_SETTINGS, **(extra or {})}.items():
        server.post(f"/settings/{key}", value)


def open_app(page: Chromium, url: str, timeout: float = 120.0) -> None:
    """Navigate and wait until the app has its graph, canvas and extensions."""
    page.call("Page.addScriptToEvaluateOnNewDocument", source="".join(
        f"try {{ localStorage.setItem({json.dumps(k)}, {json.dumps(v)}); }} catch (e) {{}}\n"
        for k, v in LOCAL_STORAGE.items()))
    page.navigate(url)
    page.wait_for("!!(window.app && window.app.graph && window.app.canvas && window.app.extensions?.length)",
                  timeout=timeout)
    page.pump(1.0)


def load_template(page: Chromium, pack: str, name: str) -> dict:
    """Fetch example_workflows/<name>.json through ComfyUI's templates route and load it as `name`."""
    return page.evaluate(f"""(async () => {{
        const res = await fetch("/api/workflow_templates/{pack}/{name}.json");
        if (!res.ok) throw new Error("template {name}: HTTP " + res.status);
        const wf = await res.json();
        await window.app.loadGraphData(wf, true, true, {json.dumps(name)});
        return {{nodes: window.app.graph._nodes.length}};
    }})()""")


def run_and_wait(page: Chromium, server: H.ComfyServer, timeout: float = 600.0) -> dict:
    """Press Run the way the button does (app.queuePrompt: the frontend's own graph → prompt) and wait
    for the new /history entry; returns it. Raises if nothing was queued."""
    before = set((server.get("/history") or {}).keys())
    page.evaluate("(async () => { await window.app.queuePrompt(0, 1); return true; })()")
    t0 = time.time()
    while True:
        new = set((server.get("/history") or {}).keys()) - before
        if new:
            entry = server.wait(new.pop(), timeout=timeout)
            page.pump(1.5)  # let the last websocket messages reach the page
            return entry
        queue = server.get("/queue") or {}
        if time.time() - t0 > 60 and not (queue.get("queue_running") or queue.get("queue_pending")):
            raise RuntimeError(f"nothing was queued from the frontend; console: {page.console[-5:]}")
        if time.time() - t0 > timeout:
            raise TimeoutError("the queued prompt did not finish")
        page.pump(0.5)


def fit_view(page: Chromium, top: int = 115, left: int = 70, margin: int = 30) -> None:
    """Scale and move the canvas so the whole graph is visible below the menu bar and the run summary."""
    page.evaluate(f"""(() => {{
        const c = window.app.canvas, nodes = window.app.graph._nodes;
        const xs = nodes.flatMap(n => [n.pos[0], n.pos[0] + n.size[0]]);
        const ys = nodes.flatMap(n => [n.pos[1] - 30, n.pos[1] + n.size[1]]);
        const W = c.canvas.clientWidth - {left} - {margin}, Hh = c.canvas.clientHeight - {top} - {margin};
        const s = Math.min(1, W / (Math.max(...xs) - Math.min(...xs)), Hh / (Math.max(...ys) - Math.min(...ys)));
        c.ds.scale = s;
        c.ds.offset[0] = -Math.min(...xs) + {left} / s;
        c.ds.offset[1] = -Math.min(...ys) + {top} / s;
        c.setDirty(true, true);
        c.draw(true, true);
        document.querySelectorAll('.p-toast').forEach(e => e.remove());
        return s;
    }})()""")
    page.pump(0.8)
