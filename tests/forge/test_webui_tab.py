"""The CPSample tab in a real browser: train a guard from the tab, see the report, check a copy.

Drives Forge's own page in headless Chromium (tools/cdp.py): types into the tab's fields as a user
would (input events), clicks the buttons and reads what the page shows; the hover help is there too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cpsample_nodes.core import load_guard

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import cdp  # noqa: E402

pytestmark = pytest.mark.forge
ROOT = "(typeof gradioApp === 'function' ? gradioApp() : document)"


def _type(page, elem_id: str, text: str) -> None:
    assert page.evaluate(f"""(() => {{
        const el = {ROOT}.querySelector('#{elem_id} textarea, #{elem_id} input');
        if (!el) return false;
        el.value = {json.dumps(text)};
        el.dispatchEvent(new Event('input', {{bubbles: true}}));
        el.dispatchEvent(new Event('change', {{bubbles: true}}));
        return true; }})()"""), f"no field #{elem_id}"


def _click(page, elem_id: str) -> None:
    assert page.evaluate(f"(() => {{ const b = {ROOT}.querySelector('#{elem_id}'); "
                         "if (!b) return false; b.click(); return true; })()"), f"no button #{elem_id}"


def _text(elem_id: str) -> str:
    return f"(() => {{ const el = {ROOT}.querySelector('#{elem_id} textarea'); return el ? el.value : ''; }})()"


def _load_page(page, forge_ui, button: str, tip_of: str) -> str:
    """Forge's page with the tab's ``button`` there; → the hover help javascript/cpsample.js gave ``tip_of``
    once the UI loaded."""
    page.navigate(forge_ui.url + "/")
    page.wait_for(f"!!{ROOT}.querySelector('#{button}')", timeout=180)
    return page.wait_for(f"{ROOT}.querySelector('#{tip_of}')?.title", timeout=60)


def _open_tab(page) -> None:
    page.evaluate(f"(() => {{ const b = Array.from({ROOT}.querySelectorAll('#tabs > .tab-nav button, "
                  "#tabs > div > button')).find(b => b.textContent.trim() === 'CPSample'); "
                  "if (b) b.click(); })()")


def _report(page, section: str, done: str, timeout: float) -> str:
    """The text of a tab section's report once the JavaScript condition ``done`` on it (``t``) holds."""
    return page.wait_for(f"(() => {{ const t = {_text(f'cpsample_{section}_report')}; "
                         f"return {done} ? t : null; }})()", timeout=timeout)


def _run_section(page, forge_ui, section: str, **fields: str) -> None:
    """Run a tab section (train / calibrate) on a folder that does not exist first: its report names the
    folder; then type ``fields`` (``folder`` the demo folder) and press its button."""
    _type(page, f"cpsample_{section}_folder", str(forge_ui.input_dir / "no such folder"))
    _click(page, f"cpsample_{section}_button")
    bad = _report(page, section, "t.startsWith('Error')", timeout=120)
    assert "no such folder" in bad and "does not exist" in bad, bad
    for name, text in {"folder": str(forge_ui.input_dir / "demo"), **fields}.items():
        _type(page, f"cpsample_{section}_{name}", text)
    page.pump(0.5)
    _click(page, f"cpsample_{section}_button")


def test_tab_trains_a_guard_and_reports(forge_ui):
    with cdp.Chromium(width=1400, height=1100) as page:
        tip = _load_page(page, forge_ui, "cpsample_train_button", "script_txt2img_cpsample_scale")
        assert "Guidance strength" in tip
        assert "Stop training" in page.evaluate(f"{ROOT}.querySelector('#cpsample_train_interrupt').title")
        assert "random labellings" in page.evaluate(f"{ROOT}.querySelector('#cpsample_train_heads').title")
        _open_tab(page)
        # a bad folder first (the report names it, nothing is written), then the demo folder
        _run_section(page, forge_ui, "train", name="from tab", max_steps="10", batch_size="8", heads="2")
        report = _report(page, "train", "t.includes('Saved to')", timeout=400)
    assert "8 images at 64x64 px" in report and "SD15" in report, report
    path = forge_ui.models_dir / "cpsample" / "from tab.safetensors"
    assert path.is_file(), report
    guard = load_guard(path)
    assert guard.info["steps"] <= 10 and guard.info["host"].startswith("Forge")
    assert guard.heads == 2 and "2 heads" in report, report


def _value(elem_id: str, kind: str = "input") -> str:
    return f"{ROOT}.querySelector('#{elem_id} {kind}')?.value"


def test_paste_restores_the_accordion_and_a_refusal_shows(forge_ui, small_txt2img, train_demo_guard):
    """An infotext pasted into the prompt (the ↙ button) sets the accordion as the image was made;
    one without CPSample keys turns it off; a guard for another model family is refused on screen."""
    train_demo_guard("paste", max_steps=5)
    args = [True, "paste.safetensors", 2500.0, 0.25, 0.1, 0.9, "opposite", "noisy", False]
    info = json.loads(forge_ui.txt2img({**small_txt2img(), "alwayson_scripts": {"CPSample": {"args": args}}})["info"])
    protected_infotext = info["infotexts"][0]
    plain_infotext = json.loads(forge_ui.txt2img(small_txt2img())["info"])["infotexts"][0]
    acc = "script_txt2img_cpsample"
    with cdp.Chromium(width=1400, height=1100) as page:
        page.navigate(forge_ui.url + "/")
        page.wait_for(f"!!{ROOT}.querySelector('#{acc}_enabled-visible-checkbox')", timeout=180)
        _type(page, "txt2img_prompt", protected_infotext)
        assert page.evaluate(f"(() => {{ const b = {ROOT}.querySelector('#txt2img_tools #paste'); "
                             "if (!b) return false; b.click(); return true; })()"), "no paste button"
        page.wait_for(f"{ROOT}.querySelector('#{acc}_enabled-visible-checkbox').checked", timeout=60)
        page.wait_for(f"{_value(acc + '_scale', 'input[type=number]')} === '2500'", timeout=30)
        restored = page.evaluate(f"""({{
            guard: {_value(acc + '_guard')},
            alpha: {_value(acc + '_alpha', 'input[type=number]')},
            start: {_value(acc + '_start_percent', 'input[type=number]')},
            end: {_value(acc + '_end_percent', 'input[type=number]')},
            objective: {_value(acc + '_objective')},
            guard_input: {_value(acc + '_guard_input')},
            calibration: {ROOT}.querySelector('#{acc}_use_calibration input').checked,
        }})""")
        assert restored == {"guard": "paste.safetensors", "alpha": "0.25", "start": "0.1", "end": "0.9",
                            "objective": "opposite", "guard_input": "noisy", "calibration": False}, restored
        # an infotext without CPSample keys turns the accordion off
        _type(page, "txt2img_prompt", plain_infotext)
        page.evaluate(f"{ROOT}.querySelector('#txt2img_tools #paste').click()")
        page.wait_for(f"!{ROOT}.querySelector('#{acc}_enabled-visible-checkbox').checked", timeout=60)
        # Generate with an SDXL guard on this SD1.5 model: the reason shows under the image
        _foreign_sdxl_guard(forge_ui.models_dir / "cpsample" / "xl.safetensors")
        _type(page, "txt2img_prompt", protected_infotext.replace("paste.safetensors", "xl.safetensors"))
        page.evaluate(f"{ROOT}.querySelector('#txt2img_tools #paste').click()")
        page.wait_for(f"{_value(acc + '_guard')} === 'xl.safetensors'", timeout=60)
        page.evaluate(f"{ROOT}.querySelector('#txt2img_generate').click()")
        # Forge puts a generation's error in an .error box of the txt2img results
        shown = page.wait_for(f"Array.from({ROOT}.querySelectorAll('.error')).map(e => e.textContent)"
                              ".find(t => t.includes('CPSample'))", timeout=180)
    assert "CPSample guard 'xl.safetensors' does not fit this model: this guard was trained on SDXL latents" \
        in shown, shown
    assert forge_ui.txt2img(small_txt2img())["images"], "the server stopped serving"


def _foreign_sdxl_guard(path) -> None:
    import torch

    from cpsample_nodes.core import Guard, GuardNet, NoiseSpace, save_guard
    from cpsample_nodes.core.network import GuardConfig

    with torch.inference_mode(False):
        net = GuardNet(GuardConfig.for_latents((2, 4, 8, 8)))
    save_guard(Guard(net, NoiseSpace.vp(), {"latent_format": "SDXL"}), path)


def test_tab_calibrates_a_guard_and_shows_the_evidence(forge_ui, train_demo_guard):
    train_demo_guard("tabcal", max_steps=5)
    with cdp.Chromium(width=1400, height=1100) as page:
        tip = _load_page(page, forge_ui, "cpsample_calibrate_button", "cpsample_calibrate_probes")
        assert "at least 8" in tip, tip
        _open_tab(page)
        # the guard typed into the dropdown (a custom value is taken on Enter), then the rest of the fields
        assert page.evaluate(f"""(() => {{
            const el = {ROOT}.querySelector('#cpsample_calibrate_guard input');
            if (!el) return false;
            el.focus();
            el.value = 'tabcal.safetensors';
            el.dispatchEvent(new Event('input', {{bubbles: true}}));
            el.dispatchEvent(new KeyboardEvent('keydown', {{key: 'Enter', bubbles: true}}));
            el.blur();
            return true; }})()"""), "no guard dropdown"
        # a folder that does not exist first: the report names it (and the guard got through)
        _run_section(page, forge_ui, "calibrate", prompt="a red house", steps="3", probes="8")
        report = _report(page, "calibrate", "(t.includes('Saved to') || (t.startsWith('Error') && "
                         "!t.includes('no such folder')))", timeout=400)
        assert "calibration on 8 probe seeds (Euler a/Automatic, 3 steps, cfg 7" in report, report
        picture = page.wait_for(f"{ROOT}.querySelector('#cpsample_calibrate_picture img')?.src", timeout=60)
    assert picture, "no evidence picture shown"
    guard = load_guard(forge_ui.models_dir / "cpsample" / "tabcal.safetensors")
    assert guard.info["calibration"]["probes"] == 8
