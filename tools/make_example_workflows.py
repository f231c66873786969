#!/usr/bin/env python3
"""Write the UI-format example workflows in example_workflows/ from compact graph specs.

Widget order and output slots come from a running ComfyUI's /object_info, so the files match what the
frontend saves. Run with the project venv (starts the offline test ComfyUI itself):

    .venv/bin/python tools/make_example_workflows.py            # writes example_workflows/*.json
    .venv/bin/python tools/make_example_workflows.py --url http://127.0.0.1:8188   # use a running server

Thumbnails (example_workflows/*.png) come from tools/workflow_thumbnails.py.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfyui_harness as H  # noqa: E402

OUT = H.REPO / "example_workflows"
CKPT = "tiny-sd15.safetensors"  # the tiny random checkpoint: never copies
DEMO_CKPT = H.DEMO_CHECKPOINT  # the demo's fine-tune: copies cpsample_demo about half the time
LORA = "tiny-sd15-lora.safetensors"
FOLDER = "cpsample_demo"
# The chain: the train example saves GUARD_FILE, which the img2img example loads; the recommended example
# saves CALIBRATED_FILE, which the protected txt2img example loads.
GUARD_FILE = "cpsample_demo_guard.safetensors"
CALIBRATED_FILE = "cpsample_demo_calibrated.safetensors"

# Each workflow: "title" and a one-sentence "description" for its card in the template browser (written to
# the file's extra.cpsample_title / extra.cpsample_description; web/cpsample/templates.js puts them on the
# card, as the frontend itself shows only the file name for a custom node's template), and its nodes.
# Each node: id, type, pos, widgets {name: value}, links {input_name: (src_id, src_slot)}, optional title;
# the builders below write the nodes the examples share (a checkpoint loader's CLIP is slot 1, its VAE slot 2).


def _node(id: int, type: str, pos: list, size: list | None = None, widgets: dict | None = None,
          links: dict | None = None, title: str | None = None) -> dict:
    node = dict(id=id, type=type, pos=pos, size=size, widgets=widgets, links=links, title=title)
    return {k: v for k, v in node.items() if v is not None}


def _note(id: int, pos: list, size: list, text: str) -> dict:
    """A MarkdownNote showing ``text``, a paragraph: its line breaks and indent become single spaces."""
    return _node(id, "MarkdownNote", pos, size, widgets={"text": " ".join(text.split())})


def _prompts(ids: tuple[int, int], pos: list, clip: tuple, positive: str, negative: str, gap: int = 200) -> list[dict]:
    """The Positive and Negative CLIPTextEncode nodes, the negative ``gap`` below the positive."""
    return [_node(ids[0], "CLIPTextEncode", pos, widgets={"text": positive}, links={"clip": clip}, title="Positive"),
            _node(ids[1], "CLIPTextEncode", [pos[0], pos[1] + gap], widgets={"text": negative},
                  links={"clip": clip}, title="Negative")]


def _lora(id: int, pos: list, title: str | None = None) -> dict:
    return _node(id, "LoraLoader", pos, widgets={"lora_name": LORA, "strength_model": 0.8, "strength_clip": 0.8},
                 links={"model": (1, 0), "clip": (1, 1)}, title=title)


def _train_guard(id: int, pos: list, model: int) -> dict:
    return _node(id, "CPSampleTrainGuard", pos,
                 widgets={"folder": FOLDER, "seed": 0, "max_steps": 1000, "batch_size": 32,
                          "resolution_policy": "resize", "resolution": 0},
                 links={"model": (model, 0), "vae": (1, 2)})


def _protect(id: int, pos: list, model: int, guard: int, guard_input: str, calibration: bool = True) -> dict:
    widgets = {"scale": 1000.0, "alpha": 0.01, "start_percent": 0.0, "end_percent": 1.0,
               "objective": "uncertainty", "guard_input": guard_input}
    if calibration:
        widgets["settings"] = "calibration (if the guard has one)"
    return _node(id, "CPSampleProtectModel", pos, widgets=widgets, links={"model": (model, 0), "guard": (guard, 0)})


def _sample(ids: tuple[int, int], pos: list, decode_pos: list, model: int, prompts: tuple[int, int], latent: int,
            seed: int, steps: int, sampler: str, denoise: float = 1.0) -> list[dict]:
    """KSampler (cfg 5, scheduler normal) and the VAEDecode of its latent."""
    return [_node(ids[0], "KSampler", pos,
                  widgets={"seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": sampler, "scheduler": "normal",
                           "denoise": denoise},
                  links={"model": (model, 0), "positive": (prompts[0], 0), "negative": (prompts[1], 0),
                         "latent_image": (latent, 0)}),
            _node(ids[1], "VAEDecode", decode_pos, links={"samples": (ids[0], 0), "vae": (1, 2)})]


def _save(id: int, pos: list, size: list, images: int, prefix: str) -> dict:
    return _node(id, "SaveImage", pos, size, widgets={"filename_prefix": prefix}, links={"images": (images, 0)})


TRAIN = {
    "title": "Train and save a guard",
    "description": "Trains a guard on your fine-tuning images and saves it.",
    "nodes": [
        _node(1, "CheckpointLoaderSimple", [40, 160], widgets={"ckpt_name": DEMO_CKPT}),
        _train_guard(2, [420, 120], model=1),
        _node(3, "CPSampleSaveGuard", [840, 120],
              widgets={"filename": GUARD_FILE[:-len(".safetensors")], "overwrite": True}, links={"guard": (2, 0)}),
        _node(4, "PreviewAny", [840, 320], links={"source": (2, 1)}, title="Training report"),
        _note(5, [40, 400], [340, 200], """
            Put the images your model was fine-tuned on in a sub-folder of ComfyUI's **input** folder and pick it in
            *folder*. The guard learns random labels on them; training stops early once it is confident on every
            image. Then use **CPSample Protect Model** with the saved guard."""),
    ],
}

PROTECTED = {
    "title": "Protected txt2img, saved guard",
    "description": "Generates with the calibrated guard that the recommended example saved.",
    "nodes": [
        _node(1, "CheckpointLoaderSimple", [20, 340], widgets={"ckpt_name": DEMO_CKPT}),
        _lora(2, [380, 340]),
        _node(3, "CPSampleLoadGuard", [380, 20], widgets={"guard_name": CALIBRATED_FILE}),
        _protect(4, [740, 20], model=2, guard=3, guard_input="denoised"),
        *_prompts((5, 6), [740, 520], (2, 1), "a photo of a red house by a lake", "blurry"),
        _node(7, "EmptyLatentImage", [740, 920], widgets={"width": 64, "height": 64, "batch_size": 2}),
        *_sample((8, 9), [1100, 200], [1460, 200], model=4, prompts=(5, 6), latent=7, seed=42, steps=8,
                 sampler="euler_ancestral"),
        _save(10, [1820, 200], [340, 340], images=9, prefix="cpsample_protected"),
        _note(11, [20, 500], [340, 220], """
            **Protected sampling, next time.** Load Guard brings back the guard the *recommended* example calibrated
            and saved (cpsample_demo_calibrated; or your own, in models/cpsample). Protect Model goes after the
            LoRA, on the model that was fine-tuned; with *settings: calibration* it runs the guard's calibrated
            scale, alpha and window and its panel says so (the widgets then only apply with *manual*). *scale* is
            the guidance strength (0 = off, bit-identical); *alpha* the confidence band: only samples the guard is
            sure about (near a training image) are steered. Use an ancestral or SDE sampler and 50+ steps with a
            real model: steered samples then spread like new images (8 steps here only because the demo model is
            tiny)."""),
    ],
}

REPLICATION = {
    "title": "Check images for training copies",
    "description": "Flags generated images that copy a picture in the training folder.",
    "nodes": [
        _node(1, "CheckpointLoaderSimple", [20, 200], widgets={"ckpt_name": DEMO_CKPT}),
        *_prompts((2, 3), [380, 120], (1, 1), "a photo of a red house by a lake", "", gap=220),
        _node(4, "EmptyLatentImage", [380, 540], widgets={"width": 64, "height": 64, "batch_size": 4}),
        *_sample((5, 6), [740, 200], [1100, 200], model=1, prompts=(2, 3), latent=4, seed=7, steps=6,
                 sampler="euler"),
        _node(7, "CPSampleReplicationCheck", [1460, 200],
              widgets={"folder": FOLDER, "k": 5, "ratio_threshold": 0.333, "ssim_threshold": 0.9},
              links={"images": (6, 0)}),
        _node(8, "PreviewImage", [1820, 0], [340, 400], links={"images": (7, 1)}, title="Generated | nearest"),
        _node(9, "PreviewAny", [1820, 440], [440, 300], links={"source": (7, 0)}, title="Replication report"),
        _note(10, [20, 420], [340, 220], """
            **Replication check.** Compares each generated image with the training images in *folder*: the
            calibrated l2 ratio (Carlini et al. 2023) is near 0 for a copy and about 1 otherwise; SSIM is 1 for
            identical images. The demo fine-tune copies about half the time, so some of these are flagged. Connect a
            CLIP vision model to add embedding cosine similarity. Swap the sampler's model for a protected one to
            compare."""),
    ],
}

CALIBRATED = {
    "title": "Recommended: calibrate a guard",
    "description": "Trains a guard, calibrates it on your model, saves it and generates.",
    "nodes": [
        _node(1, "CheckpointLoaderSimple", [20, 380], widgets={"ckpt_name": DEMO_CKPT}),
        _lora(2, [20, 560], title="Your fine-tune (LoRA)"),
        *_prompts((3, 4), [380, 620], (2, 1), "a photo of a red house by a lake", "blurry"),
        _train_guard(5, [380, 20], model=2),
        _node(6, "CPSampleCalibrateGuard", [740, 20], [380, 720],
              widgets={"folder": FOLDER, "seed": 0, "probes": 32, "steps": 8, "cfg": 5.0,
                       "sampler_name": "euler_ancestral", "scheduler": "normal", "width": 0, "height": 0},
              links={"model": (2, 0), "guard": (5, 0), "positive": (3, 0), "negative": (4, 0), "vae": (1, 2)}),
        _node(7, "CPSampleSaveGuard", [1160, 20],
              widgets={"filename": CALIBRATED_FILE[:-len(".safetensors")], "overwrite": True}, links={"guard": (6, 0)}),
        _node(8, "PreviewAny", [1160, 170], [400, 300], links={"source": (6, 1)}, title="Calibration report"),
        _protect(9, [1160, 510], model=2, guard=6, guard_input="denoised"),
        _node(10, "EmptyLatentImage", [380, 1020], widgets={"width": 64, "height": 64, "batch_size": 2}),
        *_sample((11, 12), [1520, 510], [1520, 840], model=9, prompts=(3, 4), latent=10, seed=42, steps=8,
                 sampler="euler_ancestral"),
        _save(13, [1880, 510], [300, 340], images=12, prefix="cpsample_calibrated"),
        _note(14, [20, 20], [340, 330], """
            **The recommended path.** 1. *Train Guard* learns the images in *folder* (the ones your model was
            fine-tuned on). 2. *Calibrate Guard* samples your fine-tune with your prompt and sampler on *probes*
            seeds, counts how many copy a training image, and finds the gentlest guard setting that cuts those
            copies to a tenth; its picture shows the copy rate per setting and the seeds that copied, before and
            after. 3. *Save Guard* keeps the calibrated guard (Load Guard brings it back next time, no retraining).
            4. *Protect Model* (settings: calibration) applies the measured setting; scale 0 turns it off. Give
            Calibrate the sampler, steps and CFG you generate with. Real fine-tunes: 50+ steps and 64 probes."""),
    ],
}

# The gate at work on the tiny random checkpoint, which never copies: starting from a training picture,
# as a model that copies would, the gate opens.
GATE = {
    "title": "Protected img2img: the gate opens",
    "description": "Starts from a training picture, so the gate opens and steers it away.",
    "nodes": [
        _node(1, "CheckpointLoaderSimple", [20, 340], widgets={"ckpt_name": CKPT}),
        _node(2, "CPSampleLoadGuard", [380, 20], widgets={"guard_name": GUARD_FILE}),
        _protect(3, [740, 20], model=1, guard=2, guard_input="noisy", calibration=False),
        _node(4, "LoadImage", [20, 520], [320, 360], widgets={"image": f"{FOLDER}/train_03.png"},
              title="A training picture"),
        _node(5, "VAEEncode", [380, 520], links={"pixels": (4, 0), "vae": (1, 2)}),
        *_prompts((6, 7), [740, 520], (1, 1), "a photo", ""),
        *_sample((8, 9), [1100, 200], [1460, 200], model=3, prompts=(6, 7), latent=5, seed=42, steps=8,
                 sampler="euler", denoise=0.5),
        _save(10, [1820, 200], [340, 340], images=9, prefix="cpsample_protected_img2img"),
        _note(11, [380, 700], [340, 240], """
            **Watch the gate open.** Sampling starts from one of the guard's training pictures (denoise 0.5), where
            a model that copies would end up. Protect Model reports after the run how many samples the gate opened
            on, in which steps, and how far it pushed them (at most σ per step). The checkpoint here is the tiny
            random one, which never copies by itself. *guard_input* is *noisy* here (the paper's form) because the
            random model's x0 prediction is meaningless; keep *denoised* with a real model. Needs the guard from the
            *train a guard* example."""),
    ],
}

WORKFLOWS = {"cpsample_train_guard": TRAIN, "cpsample_protected_txt2img": PROTECTED,
             "cpsample_replication_check": REPLICATION, "cpsample_calibrated_txt2img": CALIBRATED,
             "cpsample_protected_img2img": GATE}

FRONTEND_WIDGET_NODES = {"MarkdownNote": ["text"], "Note": ["text"]}
# Height of the panel web/cpsample.js draws in these nodes (chart, facts, gate report), so saved sizes fit it.
PANEL_HEIGHT = {"CPSampleTrainGuard": 190, "CPSampleLoadGuard": 210, "CPSampleProtectModel": 190}


def _inputs_in_order(info: dict) -> list[tuple[str, list]]:
    specs = {}
    for sec in ("required", "optional"):
        specs.update(info["input"].get(sec) or {})
    order = []
    io = info.get("input_order") or {}
    for sec in ("required", "optional"):
        order += io.get(sec, list((info["input"].get(sec) or {}).keys()))
    return [(n, specs[n]) for n in order]


def build_ui(spec: dict, object_info: dict) -> dict:
    nodes_out, links_out = [], []
    link_id = 0
    by_id = {n["id"]: n for n in spec["nodes"]}
    out_links: dict[tuple, list] = {}
    # links first (ids in node order)
    pending = []
    for n in spec["nodes"]:
        for name, (src, slot) in (n.get("links") or {}).items():
            link_id += 1
            pending.append((link_id, src, slot, n["id"], name))
            out_links.setdefault((src, slot), []).append(link_id)
    # execution order: a simple topological order
    order, seen = [], set()

    def visit(nid):
        if nid in seen:
            return
        seen.add(nid)
        for (src, _s) in (by_id[nid].get("links") or {}).values():
            visit(src)
        order.append(nid)

    for n in spec["nodes"]:
        visit(n["id"])
    for n in spec["nodes"]:
        ntype = n["type"]
        node = {"id": n["id"], "type": ntype, "pos": n["pos"], "flags": {}, "order": order.index(n["id"]),
                "mode": 0, "inputs": [], "outputs": [], "properties": {"Node name for S&R": ntype}}
        if n.get("title"):
            node["title"] = n["title"]
        if ntype in FRONTEND_WIDGET_NODES:
            node["widgets_values"] = [n["widgets"][k] for k in FRONTEND_WIDGET_NODES[ntype]]
            node["size"] = n.get("size", [320, 160])
            node["color"], node["bgcolor"] = "#432", "#653"
            nodes_out.append(node)
            continue
        info = object_info[ntype]
        wv = []
        n_widgets = 0
        for name, ispec in _inputs_in_order(info):
            if H._is_widget(ispec):
                n_widgets += 1
                if name in (n.get("widgets") or {}):
                    val = n["widgets"][name]
                else:
                    opts = ispec[1] if len(ispec) > 1 and isinstance(ispec[1], dict) else {}
                    val = opts.get("default", ispec[0][0] if isinstance(ispec[0], list) and ispec[0] else None)
                wv.append(val)
                if H._extra_widget_values(name, ispec):
                    upload = isinstance(ispec[1], dict) and ispec[1].get("image_upload") if len(ispec) > 1 else False
                    wv.append("image" if upload else "fixed")  # the upload button's value, as the frontend saves it
                if name in (n.get("links") or {}):
                    link = next(l for l in pending if l[3] == n["id"] and l[4] == name)
                    node["inputs"].append({"name": name, "type": ispec[0] if isinstance(ispec[0], str) else "COMBO",
                                           "widget": {"name": name}, "link": link[0]})
            else:
                link = next((l for l in pending if l[3] == n["id"] and l[4] == name), None)
                entry = {"name": name, "type": ispec[0] if isinstance(ispec[0], str) else "COMBO",
                         "link": link[0] if link else None}
                if link is None and name in (info["input"].get("optional") or {}):
                    entry["shape"] = 7  # the frontend draws optional inputs hollow
                node["inputs"].append(entry)
        for slot, (otype, oname) in enumerate(zip(info["output"], info["output_name"])):
            node["outputs"].append({"name": oname, "type": otype if isinstance(otype, str) else "COMBO",
                                    "links": out_links.get((n["id"], slot), []), "slot_index": slot})
        if wv:
            node["widgets_values"] = wv
        rows = max(len([i for i in node["inputs"] if "widget" not in i]), len(node["outputs"]))
        panel = PANEL_HEIGHT.get(ntype, 0)
        node["size"] = n.get("size", [340 if panel else 320, 46 + 22 * rows + 26 * n_widgets + panel])
        nodes_out.append(node)
    for lid, src, slot, dst, name in pending:
        dst_node = next(x for x in nodes_out if x["id"] == dst)
        dst_slot = next(i for i, inp in enumerate(dst_node["inputs"]) if inp["name"] == name)
        src_node = next(x for x in nodes_out if x["id"] == src)
        links_out.append([lid, src, slot, dst, dst_slot, src_node["outputs"][slot]["type"]])
    return {"last_node_id": max(n["id"] for n in nodes_out), "last_link_id": link_id, "nodes": nodes_out,
            "links": links_out, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "cpsample_title": spec["title"],
                      "cpsample_description": spec["description"]},
            "version": 0.4}


def write_all(object_info: dict, out_dir: Path = OUT) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, spec in WORKFLOWS.items():
        p = out_dir / f"{name}.json"
        p.write_text(json.dumps(build_ui(spec, object_info), indent=1) + "\n")
        paths.append(p)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="use this running ComfyUI instead of starting one")
    a = ap.parse_args()
    if a.url:
        import urllib.request
        with urllib.request.urlopen(a.url.rstrip("/") + "/object_info") as r:
            info = json.loads(r.read())
    else:
        import comfyui_env
        env = comfyui_env.ensure()
        root = Path(tempfile.mkdtemp(prefix="cpsample_wf_"))
        layout = H.make_layout(root, Path(env["checkpoint"]), demo_only=True)
        server = H.ComfyServer(layout, env["python"], env["comfyui"]).start()
        try:
            info = server.object_info()
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
    for p in write_all(info):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
