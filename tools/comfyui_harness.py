"""Run a real ComfyUI with this pack: directory layout, server process, HTTP helpers, UI→API converter.

Standard library only, so the project venv (pytest) and any python can import it. The server itself runs
with the ComfyUI venv that `tools/comfyui_env.py` builds. Used by `tests/integration/conftest.py` and
`tools/serve_comfyui.py`.
"""
from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

from host_process import HostProcess, child_env

REPO = Path(__file__).resolve().parent.parent
PACK_NAME = "CPSample"
# The demo's fine-tune that copies cpsample_demo: a demo-only pack and the checkpoint name it acts on.
DEMO_MODEL_PACK = REPO / "tools" / "comfyui_demo_model"
DEMO_CHECKPOINT = "cpsample-demo-finetune.safetensors"


# --------------------------------------------------------------------------------------------- images

def _png_bytes(w: int, h: int, rgb_rows) -> bytes:
    """Encode an RGB image (list of rows of bytes) as PNG with zlib only (no Pillow needed)."""
    raw = b"".join(b"\x00" + bytes(row) for row in rgb_rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def synthetic_png(path: Path, w: int, h: int, seed: int) -> None:
    """A deterministic picture: two-colour gradient with a few rectangles (distinct per seed)."""
    rng = random.Random(seed)
    c0 = [rng.randrange(256) for _ in range(3)]
    c1 = [rng.randrange(256) for _ in range(3)]
    rects = []
    for _ in range(3):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        rects.append((x0, y0, x0 + rng.randrange(4, max(5, w // 2)), y0 + rng.randrange(4, max(5, h // 2)),
                      [rng.randrange(256) for _ in range(3)]))
    rows = []
    for y in range(h):
        row = bytearray()
        for x in range(w):
            t = (x + y) / max(1, w + h - 2)
            px = [int(a * (1 - t) + b * t) for a, b in zip(c0, c1)]
            for (x0, y0, x1, y1, col) in rects:
                if x0 <= x < x1 and y0 <= y < y1:
                    px = col
            row += bytes(px)
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(w, h, rows))


def make_image_folders(input_dir: Path, demo_only: bool = False) -> dict:
    """Image folders for the nodes' folder dropdown. Returns {name: path}."""
    folders = {}
    demo = input_dir / "cpsample_demo"
    for i in range(8):
        synthetic_png(demo / f"train_{i:02d}.png", 64, 64, seed=i)
    folders["demo"] = demo
    if demo_only:
        return folders
    mixed = input_dir / "cpsample_mixed"  # mixed sizes and aspect ratios: the resolution policy must cope
    for i, (w, h) in enumerate([(64, 64), (80, 64), (64, 96), (72, 72)]):
        synthetic_png(mixed / f"img_{i}.png", w, h, seed=100 + i)
    folders["mixed"] = mixed
    empty = input_dir / "cpsample_empty"
    empty.mkdir(parents=True, exist_ok=True)
    folders["empty"] = empty
    noimg = input_dir / "cpsample_noimages"
    noimg.mkdir(parents=True, exist_ok=True)
    (noimg / "readme.txt").write_text("not an image\n")
    (noimg / "captions.json").write_text("{}\n")
    folders["noimages"] = noimg
    corrupt = input_dir / "cpsample_corrupt"
    for i in range(3):
        synthetic_png(corrupt / f"good_{i}.png", 64, 64, seed=200 + i)
    good = (corrupt / "good_0.png").read_bytes()
    (corrupt / "broken.png").write_bytes(good[:60])  # valid signature, truncated stream
    folders["corrupt"] = corrupt
    return folders


# --------------------------------------------------------------------------------------------- layout

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_layout(root: Path, checkpoint: Path, demo_only: bool = False) -> dict:
    """Base directory for one ComfyUI run under `root`.

    base/custom_nodes/CPSample -> this repo; models come in through an extra_model_paths.yaml
    (checkpoint + LoRA from the cache, plus an extra `cpsample:` folder, like a user's yaml would add).
    The demo model: base/custom_nodes/CPSampleDemoModel -> tools/comfyui_demo_model and the checkpoint
    name `cpsample-demo-finetune.safetensors` -> the tiny checkpoint, which that pack makes copy cpsample_demo.
    """
    root = Path(root)
    base = root / "base"
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    shared = root / "shared_models"
    (shared / "checkpoints").mkdir(parents=True, exist_ok=True)
    (shared / "loras").mkdir(parents=True, exist_ok=True)
    (shared / "cpsample_extra").mkdir(parents=True, exist_ok=True)
    ckpt_link = shared / "checkpoints" / checkpoint.name
    if not ckpt_link.exists():
        ckpt_link.symlink_to(checkpoint)
    demo_link = base / "custom_nodes" / "CPSampleDemoModel"
    if not demo_link.exists():
        demo_link.symlink_to(DEMO_MODEL_PACK, target_is_directory=True)
    demo_ckpt = shared / "checkpoints" / DEMO_CHECKPOINT
    if not demo_ckpt.exists():
        demo_ckpt.symlink_to(checkpoint)
    lora = checkpoint.with_name(checkpoint.stem + "-lora.safetensors")
    lora_link = shared / "loras" / lora.name
    if lora.exists() and not lora_link.exists():
        lora_link.symlink_to(lora)
    for kind in ("clip_vision", "diffusion_models", "vae"):  # the latter two: the family tests' model files
        (shared / kind).mkdir(parents=True, exist_ok=True)
    clip_vision = checkpoint.with_name("tiny-clip-vision-vitl.safetensors")
    cv_link = shared / "clip_vision" / clip_vision.name
    if clip_vision.exists() and not cv_link.exists():
        cv_link.symlink_to(clip_vision)
    yaml = root / "extra_model_paths.yaml"
    yaml.write_text(
        "cpsample_tests:\n"
        f"  base_path: {shared}\n"
        "  checkpoints: checkpoints\n"
        "  loras: loras\n"
        "  clip_vision: clip_vision\n"
        "  diffusion_models: diffusion_models\n"
        "  vae: vae\n"
        "  cpsample: cpsample_extra\n")
    dirs = {name: root / name for name in ("input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    folders = make_image_folders(dirs["input"], demo_only=demo_only)
    return {"root": root, "base": base, "yaml": yaml, "models": base / "models",
            "guards": base / "models" / "cpsample", "extra_guards": shared / "cpsample_extra",
            "checkpoint": checkpoint.name, "demo_checkpoint": DEMO_CHECKPOINT, "lora": lora.name, "clip_vision": clip_vision.name, "folders": folders, **dirs}


# --------------------------------------------------------------------------------------------- server

class PromptError(RuntimeError):
    """POST /prompt was rejected (HTTP 400 with node_errors)."""

    def __init__(self, status: int, body):
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {json.dumps(body)[:2000]}")


class ComfyServer(HostProcess):
    name = "ComfyUI"

    def __init__(self, layout: dict, python: Path, comfy_dir: Path, port: int | None = None,
                 listen: str = "127.0.0.1", extra_args: tuple = (), threads: int | None = None, cpu: bool = True):
        self.layout, self.python, self.comfy_dir = layout, Path(python), Path(comfy_dir)
        self.cpu = cpu  # False: let ComfyUI use a GPU
        self.threads = threads
        self.port = port or free_port()
        self.listen = listen
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(layout["root"]) / "comfyui.log"
        self.client_id = uuid.uuid4().hex

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.listen in ("0.0.0.0", "::") else self.listen
        return f"http://{host}:{self.port}"

    def command(self) -> list:
        L = self.layout
        return [str(self.python), "main.py", *(["--cpu"] if self.cpu else []), "--listen", self.listen, "--port", str(self.port),
                "--base-directory", str(L["base"]), "--extra-model-paths-config", str(L["yaml"]),
                "--input-directory", str(L["input"]), "--output-directory", str(L["output"]),
                "--temp-directory", str(L["temp"]), "--user-directory", str(L["user"]),
                "--database-url", "sqlite:///:memory:", "--preview-method", "none",
                "--disable-auto-launch", *self.extra_args]

    def start(self, timeout: float = 180.0, stream_log: bool = False) -> "ComfyServer":
        env = child_env(self.threads)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        stdout = None if stream_log else open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), cwd=self.comfy_dir, env=env, stdout=stdout,
                                     stderr=subprocess.STDOUT if stdout else None, start_new_session=True)
        self._wait_until_up(lambda: self.get("/system_stats", timeout=2), "/system_stats", timeout, 0.3,
                            (urllib.error.URLError, ConnectionError, OSError))
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    # ---- HTTP
    def _request(self, method: str, path: str, data=None, timeout: float = 60):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, timeout: float = 60):
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, data, timeout: float = 60):
        return self._request("POST", path, data, timeout=timeout)

    def object_info(self, node: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{node}" if node else ""))

    def queue(self, prompt: dict) -> str:
        try:
            res = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            raise PromptError(e.code, body) from None
        return res["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id) if hist else None
            if entry and entry.get("status", {}).get("completed") is not None and \
                    entry["status"].get("status_str") in ("success", "error"):
                return entry
            if not self.alive():
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-6000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format prompt and return its /history entry (status_str success or error)."""
        return self.wait(self.queue(prompt), timeout=timeout)

    def interrupt(self) -> None:
        self.post("/interrupt", {})


def history_error(entry: dict) -> dict | None:
    """The execution_error message of a finished /history entry, or None."""
    for kind, msg in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return msg
    return None


def output_images(entry: dict, layout: dict, node_id: str | None = None) -> list:
    """Paths of the images that output nodes saved, from a /history entry."""
    out = []
    for nid, o in entry.get("outputs", {}).items():
        if node_id is not None and nid != node_id:
            continue
        for im in o.get("images", []):
            # ComfyUI puts its temp files in <--temp-directory>/temp
            base = layout["output"] if im.get("type") == "output" else Path(layout["temp"]) / "temp"
            out.append(Path(base) / im.get("subfolder", "") / im["filename"])
    return out


# --------------------------------------------------------------------------------------------- UI → API

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
SEED_NAMES = {"seed", "noise_seed"}


def _is_widget(spec) -> bool:
    typ = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in WIDGET_TYPES


def _extra_widget_values(name: str, spec) -> int:
    """How many frontend-only values follow this widget's value in widgets_values."""
    typ = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    combo = isinstance(typ, list) or typ == "COMBO"
    n = 0
    if typ == "INT" and (opts.get("control_after_generate")
                         or (name in SEED_NAMES and opts.get("control_after_generate") is not False)):
        n += 1
    elif combo and opts.get("control_after_generate"):
        n += 1
    if combo and any(opts.get(k) for k in ("image_upload", "video_upload", "audio_upload", "animated_image_upload")):
        n += 1
    return n


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a frontend (UI-format) workflow to the API format POST /prompt takes.

    Widget values are mapped to input names through /object_info (input_order, required then optional);
    seed-like INT widgets carry an extra 'control_after_generate' value, which is dropped; links become
    [node_id, slot]; Reroute nodes are followed; muted (mode 2) nodes are dropped and bypassed (mode 4)
    nodes pass their first input of the same type through.
    """
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {}
    for l in workflow.get("links", []):
        if isinstance(l, dict):
            links[l["id"]] = (l["origin_id"], l["origin_slot"], l["target_id"], l["target_slot"], l["type"])
        else:
            links[l[0]] = (l[1], l[2], l[3], l[4], l[5])

    def resolve(link_id):
        """Follow a link back through Reroutes and bypassed nodes to a real output: (node_id, slot) or None."""
        seen = 0
        while link_id is not None and seen < 1000:
            seen += 1
            src, slot, _, _, typ = links[link_id]
            n = nodes[src]
            if n["type"] == "Reroute":
                link_id = n["inputs"][0].get("link")
                continue
            if n.get("mode", 0) == 4:
                out_type = n["outputs"][slot]["type"]
                cand = [i.get("link") for i in n.get("inputs", []) if i.get("type") == out_type and i.get("link") is not None]
                link_id = cand[0] if cand else None
                continue
            if n.get("mode", 0) == 2:
                return None
            return [str(src), slot]
        return None

    prompt = {}
    for nid, n in nodes.items():
        ctype = n["type"]
        if ctype in FRONTEND_ONLY or n.get("mode", 0) in (2, 4):
            continue
        if ctype not in object_info:
            raise KeyError(f"node {nid}: type {ctype!r} is not in /object_info (pack not loaded?)")
        info = object_info[ctype]
        specs = {}
        for section in ("required", "optional"):
            specs.update(info["input"].get(section, {}) or {})
        order = []
        io = info.get("input_order") or {}
        for section in ("required", "optional"):
            order += io.get(section, list((info["input"].get(section) or {}).keys()))
        inputs = {}
        wv = n.get("widgets_values", [])
        if isinstance(wv, dict):
            for name in order:
                if name in wv and _is_widget(specs[name]):
                    inputs[name] = wv[name]
        else:
            i = 0
            for name in order:
                spec = specs[name]
                if not _is_widget(spec):
                    continue
                if i >= len(wv):
                    break
                inputs[name] = wv[i]
                i += 1 + _extra_widget_values(name, spec)
        for inp in n.get("inputs", []) or []:
            if inp.get("link") is None:
                continue
            src = resolve(inp["link"])
            if src is not None:
                inputs[inp["name"]] = src
            elif inp["name"] in inputs and not _is_widget(specs.get(inp["name"], ["?"])):
                del inputs[inp["name"]]
        prompt[str(nid)] = {"class_type": ctype, "inputs": inputs,
                            "_meta": {"title": n.get("title", info.get("display_name", ctype))}}
    return prompt
