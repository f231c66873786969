"""The example workflows' template-browser texts, without a browser: each example file carries the title and
the one-sentence description its card shows (extra.cpsample_title / extra.cpsample_description, put on the
card by web/cpsample/templates.js; the real template browser is checked in
tests/integration/test_browser.py), and they are the ones tools/make_example_workflows.py writes."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import make_example_workflows as M  # noqa: E402


def test_every_example_has_a_title_and_a_one_sentence_description():
    files = sorted((REPO / "example_workflows").glob("*.json"))
    assert sorted(p.stem for p in files) == sorted(M.WORKFLOWS)
    titles = set()
    for p in files:
        extra = json.loads(p.read_text())["extra"]
        title, description = extra["cpsample_title"], extra["cpsample_description"]
        spec = M.WORKFLOWS[p.stem]
        assert (title, description) == (spec["title"], spec["description"]), f"{p.name}: rerun make_example_workflows.py"
        # The card shows the title on one line and the description on two: about 33 and 72 characters, with
        # room for a wider font than the tests' Arial (the browser test checks neither is cut short).
        assert 8 <= len(title) <= 33 and title not in titles, title
        titles.add(title)
        assert re.fullmatch(r"[A-Z][^.!?]*\.", description) and len(description) <= 72, description
        assert (REPO / "example_workflows" / f"{p.stem}.jpg").is_file()  # the card's picture, same name
