"""The pack in a real browser: headless Chromium (Debian's `chromium`) on the real ComfyUI of these tests.

Driven over the DevTools protocol (tools/cdp.py, standard library). Checks what a user sees: the page
loads with no console error from the pack, the pack's frontend is registered exactly once, the template
browser's cards show each example's thumbnail, title and one-sentence description, every example workflow
loads from ComfyUI's templates and runs through the frontend's own Run, and the nodes then show the
training chart, the guard's facts and the gate's report with real numbers. The recommended example runs
on the demo's fine-tune that copies (tools/comfyui_demo_model): its calibration must find copies and
remove them, and the protected txt2img example must load the guard it saved.
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
import comfyui_harness as H  # noqa: E402
from cdp import Chromium, find_chromium  # noqa: E402
from workflow_thumbnails import run_order  # noqa: E402

pytestmark = pytest.mark.integration

PACK = "CPSample"  # the folder the test layout links the pack as (the project name is "cpsample")
# The examples that save a guard first: the others load the guards they save.
EXAMPLES = run_order(p.stem for p in (REPO / "example_workflows").glob("*.json"))
RECOMMENDED = "cpsample_calibrated_txt2img"
CALIBRATED_GUARD = "cpsample_demo_calibrated.safetensors"  # what the recommended example saves
PROBES = 8  # the recommended example's 32 probe seeds cut to the minimum: the CPU test budget

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


def template_cards(page, names) -> dict:
    """What each of these templates' cards in the open template browser shows: its title (<h3>), its
    description (the <p> beside it), whether either is cut short (the card clamps the title to one line,
    the description to two), and its picture's size."""
    return page.evaluate(f"""(() => Object.fromEntries({json.dumps(list(names))}.map(name => {{
        const card = document.querySelector(`[role=dialog] [data-testid="template-workflow-${{name}}"]`);
        const h = card?.querySelector('h3'), p = h?.parentElement?.querySelector('p'), img = card?.querySelector('img');
        const clipped = (e) => !!e && (e.scrollHeight > e.clientHeight + 1 || e.scrollWidth > e.clientWidth + 1);
        return [name, card ? {{title: h?.textContent.trim() ?? null, description: p?.textContent.trim() ?? null,
                               tooltip: p?.getAttribute('title') ?? null, alt: img?.alt ?? null,
                               clipped: [clipped(h), clipped(p)],
                               image: img && img.complete ? [img.naturalWidth, img.naturalHeight] : null}} : null];
    }})))()""")


def test_template_browser_cards(comfy, page):
    """The template browser (Workflow → Browse Templates → CPSample) shows every example with its picture,
    its title and a one-sentence description of what it does. Frontend 1.32.9 fetches
    /api/workflow_templates/<pack>/<name>.jpg for each and must get an image; it titles and describes a
    custom node's template only by its file name, so the pack's script (web/cpsample/templates.js) puts the
    workflow file's extra.cpsample_title and extra.cpsample_description on the card, and they must stay
    when the frontend re-renders the cards (hovering one re-renders the grid). In this test's 1600x900
    window each fits its card whole (no ellipsis)."""
    names = comfy.get("/workflow_templates").get(PACK, [])
    assert sorted(names) == sorted(EXAMPLES), names
    want = {}
    for name in names:
        extra = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())["extra"]
        want[name] = {"title": extra["cpsample_title"], "description": extra["cpsample_description"]}
    page.evaluate("(async () => { await window.app.extensionManager.command.execute('Comfy.BrowseTemplates'); "
                  "return true; })()")
    category = f"""[...document.querySelectorAll('[role=dialog] span')].find(e => e.textContent.trim() === '{PACK}')"""
    page.wait_for(f"!!{category}", timeout=30)
    page.evaluate(f"{category}.click()")
    loaded = "[...document.querySelectorAll('[role=dialog] img')].filter(i => i.complete && i.naturalWidth > 0)"
    page.wait_for(f"{loaded}.length >= {len(names)}", timeout=60)
    described = " && ".join(
        f"document.querySelector('[role=dialog] [data-testid=\"template-workflow-{n}\"] h3')?.textContent.trim() === "
        f"{json.dumps(w['title'])}" for n, w in want.items())
    page.wait_for(described, timeout=30)
    cards = template_cards(page, names)
    images = page.evaluate("[...document.querySelectorAll('[role=dialog] img')].map(i => [i.naturalWidth, i.naturalHeight])")
    assert len(images) == len(names) and all(w >= 400 and h >= 200 for w, h in images), images
    for name, w in want.items():
        card = cards[name]
        assert card, f"no card for {name}"
        assert card["title"] == w["title"] and card["alt"] == w["title"], (name, card)
        assert card["description"] == w["description"] == card["tooltip"], (name, card)
        assert card["image"] and card["image"][0] >= 400, (name, card)
        assert card["clipped"] == [False, False], f"{name}: the card cuts its title or description short: {card}"
    # Hover each card (the frontend re-renders the grid on hover) and look again.
    for name in names:
        page.evaluate(f"""(() => {{
            const c = document.querySelector('[role=dialog] [data-testid="template-workflow-{name}"]');
            c.dispatchEvent(new MouseEvent('mouseenter')); c.dispatchEvent(new MouseEvent('mouseleave'));
            return true; }})()""")
        page.pump(0.2)
    assert template_cards(page, names) == cards
    missing = [m for m in page.console if f"/workflow_templates/{PACK}/" in m["url"]]
    assert not missing, missing  # no 404 for a thumbnail
    # close it with its × (the button nearest the dialog's top right corner)
    page.evaluate("""(() => {
        const d = document.querySelector('[role=dialog]'), r = d.getBoundingClientRect();
        const far = (b) => { const q = b.getBoundingClientRect(); return Math.hypot(r.right - q.right, q.top - r.top); };
        [...d.querySelectorAll('button')].sort((a, b) => far(a) - far(b))[0].click();
        return true;
    })()""")
    page.wait_for("!document.querySelector('[role=dialog]')", timeout=10)


def widget(page, node_type: str, name: str, value=None):
    """The value of a widget on the first node of this type; with ``value``, set it first."""
    return page.evaluate(f"""(() => {{
        const n = window.app.graph._nodes.find(n => n.comfyClass === {json.dumps(node_type)});
        const w = n?.widgets?.find(w => w.name === {json.dumps(name)});
        if (!w) return null;
        if ({json.dumps(value is not None)}) w.value = {json.dumps(value)};
        return {{value: w.value, options: w.options?.values ?? null}};
    }})()""")


def copies_flagged(comfy, guard: str | None) -> int:
    """How many of 8 demo-model samples (the recommended example's sampler, seeds 100...) Replication
    Check flags as copies of cpsample_demo, unprotected or through Protect Model with ``guard``."""
    p = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": H.DEMO_CHECKPOINT}},
         "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a red house by a lake", "clip": ["1", 1]}},
         "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
         "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 8}},
         "5": {"class_type": "KSampler",
               "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                          "seed": 100, "steps": 8, "cfg": 5.0, "sampler_name": "euler_ancestral",
                          "scheduler": "normal", "denoise": 1.0}},
         "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
         "7": {"class_type": "CPSampleReplicationCheck",
               "inputs": {"images": ["6", 0], "folder": "cpsample_demo", "k": 5, "ratio_threshold": 0.333,
                          "ssim_threshold": 1.0}},
         "8": {"class_type": "PreviewAny", "inputs": {"source": ["7", 0]}}}
    if guard:
        p["9"] = {"class_type": "CPSampleLoadGuard", "inputs": {"guard_name": guard}}
        p["10"] = {"class_type": "CPSampleProtectModel",
                   "inputs": {"model": ["1", 0], "guard": ["9", 0], "scale": 1000.0, "alpha": 0.01,
                              "start_percent": 0.0, "end_percent": 1.0, "objective": "uncertainty",
                              "guard_input": "denoised", "settings": "calibration (if the guard has one)"}}
        p["5"]["inputs"]["model"] = ["10", 0]
    text = comfy.run(p)["outputs"]["8"]["text"][0]
    m = re.search(r"(\d+) of 8 flagged", text)
    assert m, text
    return int(m.group(1))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_from_the_frontend(name, comfy, page):
    templates = comfy.get("/workflow_templates")
    assert name in templates.get(PACK, []), templates
    loaded = P.load_template(page, PACK, name)
    assert loaded["nodes"] > 2
    if name == RECOMMENDED:
        assert widget(page, "CPSampleCalibrateGuard", "probes", PROBES)["value"] == PROBES
        assert widget(page, "CPSampleSaveGuard", "filename")["value"] + ".safetensors" == CALIBRATED_GUARD
    if name == "cpsample_protected_txt2img":  # the chain: it loads what the recommended example saved,
        guard = widget(page, "CPSampleLoadGuard", "guard_name")  # listed without a manual refresh
        assert guard["value"] == CALIBRATED_GUARD and CALIBRATED_GUARD in guard["options"], guard
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
        if name == "cpsample_protected_txt2img":  # the calibration in words, not a dump of its fields
            assert re.search(rf"copies\s*\d+ of {PROBES} \(\d+%\) probe seeds unguarded → \d+ of {PROBES}", p["text"]), p["text"]
            assert "measured on" in p["text"] and "euler_ancestral/normal, 8 steps, cfg 5" in p["text"], p["text"]
            assert "unguarded_rate" not in p["text"] and "ranking" not in p["text"], p["text"]
    if name == RECOMMENDED:  # the demo model copies: calibration finds copies and removes them
        report = next(t for t in _texts(entry) if "probes copy a training image" in t)
        before = int(re.search(rf"unguarded: (\d+) of {PROBES} probes copy", report).group(1))
        chosen = re.search(r"^(.*?\S)\s+(\d+)/(\d+)\s.*\bchosen\b", report, re.M)
        assert before >= 1 and chosen and int(chosen.group(2)) < before, report
        unguarded, protected = copies_flagged(comfy, None), copies_flagged(comfy, CALIBRATED_GUARD)
        assert protected < unguarded, (unguarded, protected)
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
        if name in (RECOMMENDED, "cpsample_protected_txt2img"):  # the calibration overrides the widgets: said so
            assert re.search(r"ran with calibrated settings scale \S+, α \S+.*instead of the scale 1000 and alpha "
                             r"0.01 widgets", p["text"]), p["text"]
        if name == "cpsample_protected_img2img":  # starts from a training picture: the gate must open
            assert s["opened_samples"] >= 1 and s["opened_steps"], s
            assert 0 < s["mean_push_over_sigma"] <= 1.0 + 1e-6, s  # each push capped at σ RMS
        assert p["inked"] > 200, f"the gate chart drew only {p['inked']} pixels"
        assert f"CPSample Protect Model (node {p['id']}): {gate['text']}" in comfy.log()
    assert not pack_errors(page), pack_errors(page)


def _texts(entry: dict) -> list[str]:
    """Every text the run's nodes output (PreviewAny, reports)."""
    return [t for out in entry.get("outputs", {}).values() for t in out.get("text", []) if isinstance(t, str)]


def _api_nodes(entry: dict, comfy) -> list[dict]:
    """The API-format nodes the frontend queued for this /history entry."""
    prompt = entry.get("prompt") or []
    graph = prompt[2] if len(prompt) > 2 else {}
    return list(graph.values())
