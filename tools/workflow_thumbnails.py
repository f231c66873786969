#!/usr/bin/env python3
"""Screenshot each example workflow as the ComfyUI frontend shows it → example_workflows/<name>.png.

Starts the offline test ComfyUI (tools/comfyui_env.py), runs the train example once so the guard file
exists, opens the frontend in headless Chromium (Debian package `chromium`), loads each workflow with
`app.loadGraphData` over the DevTools protocol and saves a screenshot. Needs aiohttp, so run it with
the ComfyUI venv:

    .cache/comfyui/venv/bin/python tools/workflow_thumbnails.py [--out DIR] [--width 1600 --height 900]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfyui_env  # noqa: E402
import comfyui_harness as H  # noqa: E402

EXAMPLES = H.REPO / "example_workflows"


async def _cdp(ws_url: str):
    import aiohttp

    session = aiohttp.ClientSession()
    ws = await session.ws_connect(ws_url, max_msg_size=0)
    counter = {"id": 0}

    async def call(method: str, **params):
        counter["id"] += 1
        mid = counter["id"]
        await ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads((await ws.receive()).data)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    return session, ws, call


async def _evaluate(call, expr: str):
    res = await call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
    if "exceptionDetails" in res:
        raise RuntimeError(f"JS error in {expr[:80]}: {res['exceptionDetails']}")
    return res.get("result", {}).get("value")


async def shoot(url: str, workflows: list[Path], out_dir: Path, width: int, height: int,
                queue: tuple = (), server=None) -> list[Path]:
    import aiohttp

    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chrome:
        raise RuntimeError("no chromium found (apt-get install chromium)")
    port = H.free_port()
    profile = tempfile.mkdtemp(prefix="cpsample_chrome_")
    proc = subprocess.Popen([chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                             f"--window-size={width},{height}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = []
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.get(f"http://127.0.0.1:{port}/json") as r:
                        targets = await r.json()
                    page = next(t for t in targets if t.get("type") == "page")
                    break
                except Exception:  # noqa: BLE001
                    await asyncio.sleep(0.2)
            else:
                raise RuntimeError("chromium did not open its DevTools port")
        session, ws, call = await _cdp(page["webSocketDebuggerUrl"])
        try:
            await call("Page.enable")
            await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                       mobile=False)
            await call("Page.navigate", url=url)
            t0 = time.time()
            while not await _evaluate(call, "!!(window.app && window.app.graph && window.app.canvas)"):
                if time.time() - t0 > 90:
                    raise RuntimeError("the ComfyUI frontend did not start in 90 s")
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)
            for wf_path in workflows:
                wf = json.loads(wf_path.read_text())
                xs = [n["pos"][0] for n in wf["nodes"]] + [n["pos"][0] + n["size"][0] for n in wf["nodes"]]
                ys = [n["pos"][1] for n in wf["nodes"]] + [n["pos"][1] + n["size"][1] for n in wf["nodes"]]
                top, left = 120, 80  # banner, tabs and menu; side bar
                scale = min(1.0, (width - left - 40) / (max(xs) - min(xs)),
                            (height - top - 40) / (max(ys) - min(ys) + 30))
                off = [-min(xs) + left / scale, -min(ys) + (top + 30) / scale]
                await _evaluate(call, f"(async () => {{ await window.app.loadGraphData({json.dumps(wf)}); }})()")
                await asyncio.sleep(1.0)
                await _evaluate(call, "(() => { const ds = window.app.canvas.ds; "
                                      f"ds.scale = {scale}; ds.offset[0] = {off[0]}; ds.offset[1] = {off[1]}; "
                                      "window.app.canvas.setDirty(true, true); window.app.canvas.draw(true, true);"
                                      " document.querySelectorAll('.p-dialog-mask, .p-toast').forEach(e => e.remove());"
                                      " return true; })()")
                await asyncio.sleep(1.0)
                shot = await call("Page.captureScreenshot", format="png")
                out = out_dir / (wf_path.stem + ".png")
                out.write_bytes(base64.b64decode(shot["data"]))
                written.append(out)
                print(out, flush=True)
                if wf_path.stem in queue:
                    # Queue it the way the Run button does: the frontend converts its own graph.
                    before = set((server.get("/history") or {}).keys())
                    await _evaluate(call, "(async () => { await window.app.queuePrompt(0, 1); return true; })()")
                    t1 = time.time()
                    while True:
                        new = set((server.get("/history") or {}).keys()) - before
                        if new:
                            entry = server.wait(new.pop(), timeout=600)
                            status = entry["status"]["status_str"]
                            print(f"  queued from the frontend: {status}", flush=True)
                            if status != "success":
                                raise RuntimeError(f"{wf_path.name} failed when queued from the frontend: "
                                                   f"{H.history_error(entry)}")
                            await asyncio.sleep(2.0)  # let the previews arrive, then shoot again with results
                            shot = await call("Page.captureScreenshot", format="png")
                            out.write_bytes(base64.b64decode(shot["data"]))
                            break
                        if time.time() - t1 > 60:
                            raise RuntimeError(f"{wf_path.name}: nothing was queued from the frontend")
                        await asyncio.sleep(0.5)
        finally:
            await ws.close()
            await session.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=EXAMPLES)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--queue", action="store_true",
                    help="also press Run (app.queuePrompt) on the sampling examples and check they succeed")
    a = ap.parse_args()
    env = comfyui_env.ensure()
    root = Path(tempfile.mkdtemp(prefix="cpsample_thumbs_"))
    layout = H.make_layout(root, Path(env["checkpoint"]), demo_only=True)
    server = H.ComfyServer(layout, env["python"], env["comfyui"], threads=1).start()
    try:
        # Skip the first-run template browser.
        for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.Minimap.Visible", False)):
            try:
                server.post(f"/settings/{key}", value)
            except Exception:  # noqa: BLE001
                pass
        info = server.object_info()
        train = H.ui_to_api(json.loads((EXAMPLES / "cpsample_train_guard.json").read_text()), info)
        for node in train.values():
            if node["class_type"] == "CPSampleTrainGuard":
                node["inputs"]["max_steps"] = 2
        server.run(train)
        workflows = sorted(EXAMPLES.glob("*.json"))
        a.out.mkdir(parents=True, exist_ok=True)
        queue = ("cpsample_protected_txt2img", "cpsample_replication_check") if a.queue else ()
        asyncio.run(shoot(server.url, workflows, a.out, a.width, a.height, queue=queue, server=server))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
