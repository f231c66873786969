"""The extension inside a real Forge: it loads cleanly, the host generates, and the browser UI shows it.

Runs against the session's Forge server (tests/forge/conftest.py). The browser test opens Forge's UI in
headless Chromium and screenshots the CPSample accordion and tab: into docs/images/ when
CPSAMPLE_WRITE_SCREENSHOTS=1, into the test's temporary folder otherwise.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import cdp  # noqa: E402

pytestmark = pytest.mark.forge

SCRIPT_NAME = "cpsample"  # Forge lists scripts by title().lower()


# Forge reads each extension's git remote for its Extensions tab; a checkout without an `origin`
# (CI, a fresh clone renamed) makes it log a traceback naming the extension. Not the extension's error.
HOST_NOISE = ("*** Failed reading extension data from Git repository",)


def _tracebacks(log: str) -> list[str]:
    """Error blocks in a Forge log: Forge's `*** Error ...` reports and plain Python tracebacks."""
    blocks, current = [], None
    for line in log.splitlines():
        if line.startswith("***") or line.startswith("Traceback (most recent call last)"):
            if current:
                blocks.append("\n".join(current))
            current = [line]
        elif current is not None:
            if line and not line[0].isspace() and not line.startswith(("***", "---")) and len(current) > 1 \
                    and not current[-1].startswith(" "):
                blocks.append("\n".join(current))
                current = None
            else:
                current.append(line)
    if current:
        blocks.append("\n".join(current))
    return [b for b in blocks if not b.startswith(HOST_NOISE)]


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1])))


def test_extension_loads_without_errors(forge):
    # start-up only: later tests make the extension refuse bad guards on purpose
    mine = [b for b in _tracebacks(forge.startup_log) if re.search(r"cpsample", b, re.IGNORECASE)]
    assert not mine, "Forge reported errors from the extension:\n\n" + "\n\n".join(mine)
    scripts = forge.get("/sdapi/v1/scripts")
    assert SCRIPT_NAME in scripts["txt2img"], f"txt2img scripts: {scripts['txt2img']}"
    assert SCRIPT_NAME in scripts["img2img"], f"img2img scripts: {scripts['img2img']}"
    info = {(s["name"], s["is_img2img"]): s for s in forge.get("/sdapi/v1/script-info")}
    assert info[(SCRIPT_NAME, False)]["is_alwayson"] and info[(SCRIPT_NAME, True)]["is_alwayson"]


def test_checkpoint_is_the_random_sd15(forge, forge_env):
    models = forge.get("/sdapi/v1/sd-models")
    names = [Path(m["filename"]).name for m in models]
    assert Path(forge_env["checkpoint"]).name in names, models
    # The random SD1.5 sits in the session's own models folder, next to the guards' folder.
    assert (forge.models_dir / "cpsample").is_dir()
    assert len(list((forge.input_dir / "demo").glob("*.png"))) == 8


def test_plain_txt2img_is_deterministic(forge, small_txt2img):
    """The baseline the protection tests compare against: same seed, same bytes, a real picture."""
    log_before = len(forge.log())
    t0 = time.time()
    first = forge.txt2img(small_txt2img())
    first_s = time.time() - t0
    t0 = time.time()
    second = forge.txt2img(small_txt2img())
    second_s = time.time() - t0
    print(f"\ntxt2img 64x64, 3 steps (model loaded): {first_s:.1f} s, again {second_s:.1f} s")
    assert len(first["images"]) == 1
    img = _decode(first["images"][0])
    assert img.size == (64, 64)
    assert len(img.convert("RGB").getcolors(1 << 16)) > 16, "a flat image: the random checkpoint did not generate"
    assert first["images"][0] == second["images"][0], "the same seed gave different pixels"
    errors = _tracebacks(forge.log()[log_before:])
    assert not errors, "Forge reported errors during a plain generation:\n\n" + "\n\n".join(errors)
    info = json.loads(first["info"])
    assert info["seed"] == 1234 and info["width"] == 64


# --------------------------------------------------------------------------------------------- browser

# Gradio 4 renders without a shadow root here, but Forge's own scripts go through gradioApp().
_ROOT = "(typeof gradioApp === 'function' ? gradioApp() : document)"

_FIND_ACCORDION = _ROOT + """.querySelectorAll('#%s_script_container .gradio-accordion, #%s_script_container .input-accordion')"""


def _accordion_js(tab: str, then: str) -> str:
    """JS that finds the CPSample accordion in a tab's script area and runs `then` on it (as `acc`)."""
    return f"""(() => {{
        const acc = Array.from({_FIND_ACCORDION % (tab, tab)}).find(el => {{
            const label = el.querySelector('.label-wrap');
            return label && label.textContent.trim().startsWith('CPSample');
        }});
        if (!acc) return null;
        {then}
    }})()"""


def _tab_button_js(then: str) -> str:
    return f"""(() => {{
        const btn = Array.from({_ROOT}.querySelectorAll('#tabs > .tab-nav button, #tabs > div > button'))
            .find(b => b.textContent.trim() === 'CPSample');
        if (!btn) return null;
        {then}
    }})()"""


def _rect(js_element: str) -> str:
    return (f"(() => {{ const r = {js_element}.getBoundingClientRect(); "
            "return {x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height}; })()")


def _screenshot_dir(tmp_path: Path) -> Path:
    return REPO / "docs" / "images" if os.environ.get("CPSAMPLE_WRITE_SCREENSHOTS") else tmp_path


def _clip(rect: dict, pad: int = 8, width: int = 1400) -> dict:
    x, y = max(0, rect["x"] - pad), max(0, rect["y"] - pad)
    return {"x": x, "y": y, "width": min(width - x, rect["width"] + 2 * pad), "height": rect["height"] + 2 * pad,
            "scale": 1}


def _shoot(page: "cdp.Chromium", path: Path, clip: dict) -> Path:
    """A screenshot of one region of the page, also below the fold."""
    shot = page.call("Page.captureScreenshot", timeout=120, format="png", clip=clip, captureBeyondViewport=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def test_browser_shows_accordion_and_tab(forge_ui, tmp_path):
    out = _screenshot_dir(tmp_path)
    width = 1400
    t0 = time.time()
    with cdp.Chromium(width=width, height=1100) as page:
        page.navigate(forge_ui.url + "/")
        # Forge builds the page in the browser: wait until the script areas of both tabs are there.
        page.wait_for(f"!!{_ROOT}.querySelector('#txt2img_script_container .gradio-accordion')", timeout=180)
        load_s = time.time() - t0
        assert page.wait_for(_accordion_js("txt2img", "return true;"), timeout=30), "no CPSample accordion in txt2img"
        assert page.evaluate(_accordion_js("img2img", "return true;")), "no CPSample accordion in img2img"

        # Open the accordion (the screenshot should show its settings) and bring it into view.
        page.evaluate(_accordion_js("txt2img", """
            const label = acc.querySelector('.label-wrap');
            if (!label.classList.contains('open')) label.click();
            acc.scrollIntoView({block: 'start'});
            return true;"""))
        page.wait_for(_accordion_js("txt2img", "return acc.querySelector('.label-wrap').classList.contains('open');"),
                      timeout=20)
        page.pump(1.5)  # let the opened accordion lay out
        rect = page.evaluate(_accordion_js("txt2img", "return " + _rect("acc") + ";"))
        assert rect["height"] > 60, f"the accordion did not open: {rect}"
        acc_png = _shoot(page, out / "webui_accordion.png", _clip(rect, width=width))

        # The tab button names its panel (aria-controls, Forge's `tab_<id>`): click it, wait until shown.
        panel_id = page.evaluate(_tab_button_js("btn.click(); return btn.getAttribute('aria-controls') || 'none';"))
        assert panel_id, "no CPSample tab"
        panel_js = f"{_ROOT}.querySelector('#{panel_id}')"
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for(f"(() => {{ const p = {panel_js}; return !!p && p.offsetParent !== null "
                      "&& p.getBoundingClientRect().height > 50; })()", timeout=30)
        page.pump(1.5)
        panel = page.evaluate(_rect(f"({panel_js})"))
        tab_png = _shoot(page, out / "webui_tab.png",
                         {"x": 0, "y": 0, "width": width, "height": panel["y"] + panel["height"] + 8, "scale": 1})
        errors = [c for c in page.console if c["level"] == "error" and "cpsample" in (c["text"] + c["url"]).lower()]
    print(f"\nForge UI loaded in Chromium in {load_s:.1f} s; screenshots: {acc_png}, {tab_png}")
    assert not errors, f"the page logged errors from the extension: {errors}"
    for png in (acc_png, tab_png):
        with Image.open(png) as im:
            assert im.width > 200 and im.height > 60, (png, im.size)
            assert len(im.convert("L").getcolors(256)) > 8, f"{png} is blank"
