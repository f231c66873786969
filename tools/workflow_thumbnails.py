#!/usr/bin/env python3
"""Screenshot each example workflow as the ComfyUI frontend shows it → example_workflows/<name>.png (full
size, for the docs) and <name>.jpg (half size: the thumbnail ComfyUI's template browser asks for; frontend
1.32.9 requests `/api/workflow_templates/<pack>/<name>.jpg` for every custom-node template).

Starts the offline test ComfyUI (tools/comfyui_env.py), opens the frontend in headless Chromium (Debian's
`chromium`, over the DevTools protocol: tools/cdp.py) with the first-run template browser and banner
dismissed and the workflow tabs in the side bar, loads each example from ComfyUI's templates under its own
name, presses Run (app.queuePrompt: the frontend's own graph → prompt conversion), checks it succeeds,
and shoots the page with the results drawn in the nodes (training chart, guard facts, gate report). The
train and the recommended examples go first: the others load the guards they save. Standard library only:

    .venv/bin/python tools/workflow_thumbnails.py [--out DIR] [--width 1600 --height 900] [--no-run]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_page as P  # noqa: E402
import comfyui_env  # noqa: E402
import comfyui_harness as H  # noqa: E402
from cdp import Chromium  # noqa: E402

EXAMPLES = H.REPO / "example_workflows"
# The examples that save a guard, before the ones that load it (tools/make_example_workflows.py's chain).
SAVERS = ("cpsample_train_guard", "cpsample_calibrated_txt2img")


def run_order(names) -> list[str]:
    return sorted(names, key=lambda n: (n not in SAVERS, n))


def shoot(server: H.ComfyServer, names: list[str], out_dir: Path, width: int, height: int,
          run: bool = True) -> list[Path]:
    written = []
    with Chromium(width=width, height=height) as page:
        P.open_app(page, server.url)
        for name in names:
            P.load_template(page, H.PACK_NAME, name)
            P.fit_view(page)
            if run:
                entry = P.run_and_wait(page, server)
                status = entry["status"]["status_str"]
                print(f"{name}: run from the frontend: {status}", flush=True)
                if status != "success":
                    raise RuntimeError(f"{name} failed when run from the frontend: {H.history_error(entry)}")
                page.pump(1.5)  # previews and panels arrive
                P.fit_view(page)
            out = page.screenshot(out_dir / f"{name}.png")
            thumb = page.screenshot(out_dir / f"{name}.jpg", jpeg_quality=80, scale=0.5)
            written += [out, thumb]
            print(out, thumb, flush=True)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=EXAMPLES)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--no-run", action="store_true", help="only load the workflows, do not press Run")
    a = ap.parse_args()
    env = comfyui_env.ensure()
    root = Path(tempfile.mkdtemp(prefix="cpsample_thumbs_"))
    layout = H.make_layout(root, Path(env["checkpoint"]), demo_only=True)
    server = H.ComfyServer(layout, env["python"], env["comfyui"], threads=1).start()
    try:
        P.prepare_server(server, {"Comfy.Workflow.WorkflowTabsPosition": "Sidebar"})
        names = run_order(p.stem for p in EXAMPLES.glob("*.json"))
        a.out.mkdir(parents=True, exist_ok=True)
        shoot(server, names, a.out, a.width, a.height, run=not a.no_run)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
