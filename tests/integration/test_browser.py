"""The pack in a real browser: headless Chromium (Debian's `chromium`) on the real ComfyUI of these tests.

Driven over the DevTools protocol (tools/cdp.py, standard library). Checks what a user sees: the page
loads with no console error from the pack, the pack's frontend is registered exactly once, every example
workflow loads from ComfyUI's templates and runs through the frontend's own Run, and the nodes then show
the training chart, the guard's facts and the gate's report with real numbers.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import comfy_page as P  # noqa: E402
from cdp import Chromium, find_chromium  # noqa: E402

pytestmark = pytest.mark.integration

PACK = "CPSample"  # the folder the test layout links the pack as (the project name is "cpsample")
# The train example first: the others load the guard it saves.
EXAMPLES = sorted((p.stem for p in (REPO / "example_workflows").glob("*.json")),
                  key=lambda n: (n != "cpsample_train_guard", n))


@pytest.fixture(scope="module")
def page(comfy):
    if not find_chromium():
        if os.environ.get("CPSAMPLE_REQUIRE_COMFYUI"):
            pytest.fail("no Chromium: install Debian's chromium (tools/ensure_chromium.sh)")
        pytest.skip("no Chromium installed (tools/ensure_chromium.sh)")
    P.prepare_server(comfy)
    with Chromium(width=1600, height=900) as pg:
        P.open_app(pg, comfy.url)
        yield pg


def pack_errors(page) -> list[dict]:
    """Console errors and uncaught exceptions that come from the pack (its scripts, routes or messages).
    The frontend's own look-ups of node ids on the internet (api.comfy.org) fail offline and are not
    the pack's."""
    origin = page.evaluate("location.origin")
    return [m for m in page.console
            if m["level"] in ("error", "assert") and re.search(r"cpsample", m["text"] + " " + m["url"], re.I)
            and not (m["url"].startswith(("http:", "https:")) and not m["url"].startswith(origin))]


def panel(page, node_type: str) -> dict:
    """What the pack's panel on the first node of this type shows: its text, the node's data, and how
    many pixels its chart canvas has drawn."""
    return page.evaluate(f"""(() => {{
        const n = window.app.graph._nodes.find(n => n.comfyClass === {json.dumps(node_type)});
        if (!n) return null;
        const root = n.cpsample?.panel;
        const c = root?.querySelector("canvas");
        let inked = 0;
        if (c && c.width > 1) {{
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 0) inked++;
        }}
        return {{id: n.id, text: root?.textContent ?? null, inked, inDom: !!root?.isConnected,
                 train: n.cpsample?.train ?? null, gate: n.cpsample?.gate ?? null, live: n.cpsample?.live ?? 0}};
    }})()""")


def test_frontend_listed_once_registered_once_no_errors(comfy, page):
    scripts = [u for u in comfy.get("/extensions") if u.lower().endswith("/cpsample.js")]
    assert scripts == [f"/extensions/{PACK}/cpsample.js"], scripts
    names = page.evaluate("window.app.extensions.map(e => e.name).filter(n => /cpsample/i.test(n))")
    assert names == ["CPSample"], names
    # Loading the script again under another URL (as a second install folder would) registers nothing new.
    page.evaluate(f"import('/extensions/{PACK}/cpsample.js?second-url').then(() => true)")
    page.pump(0.5)
    names = page.evaluate("window.app.extensions.map(e => e.name).filter(n => /cpsample/i.test(n))")
    assert names == ["CPSample"], names
    assert not pack_errors(page), pack_errors(page)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_from_the_frontend(name, comfy, page):
    templates = comfy.get("/workflow_templates")
    assert name in templates.get(PACK, []), templates
    loaded = P.load_template(page, PACK, name)
    assert loaded["nodes"] > 2
    P.fit_view(page)
    entry = P.run_and_wait(page, comfy, timeout=900)
    status = entry["status"]["status_str"]
    assert status == "success", f"{name} run from the frontend: {status}: {comfy.log()[-3000:]}"
    page.pump(1.0)
    types = page.evaluate("window.app.graph._nodes.map(n => n.comfyClass)")

    if "CPSampleTrainGuard" in types:
        p = panel(page, "CPSampleTrainGuard")
        train = p["train"]
        assert p["inDom"] and train and train["done"], p
        assert p["live"] >= 5, f"only {p['live']} live chart messages arrived while training"
        steps = [pt["step"] for pt in train["points"]]
        assert len(steps) >= 5 and steps == sorted(steps) and steps[-1] == train["steps"], steps[:20]
        losses = [pt["loss"] for pt in train["points"] if pt["loss"] is not None]
        assert losses and all(0 < v < 5 for v in losses), losses[:10]
        acc = train["final_accuracy"]
        assert len(acc) >= 3 and all(0 <= v <= 1 for v in acc.values()), acc
        # The demo guard memorises its folder (the report and the chart say so).
        assert train["memorised"] and "memorised" in p["text"], p["text"]
        assert p["inked"] > 500, f"the training chart drew only {p['inked']} pixels"
    if "CPSampleLoadGuard" in types:
        p = panel(page, "CPSampleLoadGuard")
        assert p["inDom"], p
        for fact in ("8 at 64x64 px", "SD15", "ModelSamplingDiscrete+EPS", "vp", "steps", "memorised"):
            assert fact in p["text"], (fact, p["text"])
        assert "{" not in p["text"], f"raw JSON in the panel: {p['text']}"
    if "CPSampleProtectModel" in types:
        p = panel(page, "CPSampleProtectModel")
        gate = p["gate"]
        assert gate and gate["text"] in p["text"], p
        s = gate["summary"]
        ks = next(n for n in _api_nodes(entry, comfy) if n["class_type"] in ("KSampler", "KSamplerAdvanced"))
        assert s["samples"] >= 1 and s["total_steps"] == ks["inputs"]["steps"], s
        assert s["evaluated_steps"] >= 1 and all(st["sigma"] > 0 for st in s["per_step"]), s
        assert 0 <= s["opened_samples"] <= s["samples"]
        assert re.match(r"gate (opened on \d+ of \d+ samples|never evaluated)", gate["text"]), gate["text"]
        if name == "cpsample_protected_img2img":  # starts from a training picture: the gate must open
            assert s["opened_samples"] >= 1 and s["opened_steps"], s
            assert 0 < s["mean_push_over_sigma"] <= 1.0 + 1e-6, s  # each push capped at σ RMS
        assert p["inked"] > 200, f"the gate chart drew only {p['inked']} pixels"
        assert f"CPSample Protect Model (node {p['id']}): {gate['text']}" in comfy.log()
    assert not pack_errors(page), pack_errors(page)


def _api_nodes(entry: dict, comfy) -> list[dict]:
    """The API-format nodes the frontend queued for this /history entry."""
    prompt = entry.get("prompt") or []
    graph = prompt[2] if len(prompt) > 2 else {}
    return list(graph.values())
