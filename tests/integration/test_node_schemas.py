"""Saved workflows and API prompts keep loading: every CPSample node's id, inputs (names, types, defaults,
limits, order) and outputs as ComfyUI serves them in /object_info equal the recorded schemas
(node_schemas.json, taken from the pack as released before its nodes were split into modules), and every
example workflow's CPSample widget values line up with the live node definitions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import comfyui_harness as H

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Combo options listed at run time (input sub-folders, guard files): their presence is checked, not their values.
LISTED = {"folder", "class_folder", "guard_name"}
KEPT = ("name", "category", "display_name", "output", "output_name", "output_is_list", "output_node", "input_order")

pytestmark = pytest.mark.integration


def contract(info: dict) -> dict:
    """What a saved workflow or API prompt depends on: ids, input names, types, defaults, limits, order, outputs
    (tooltips and descriptions may be reworded)."""
    inputs = {}
    for section, specs in info["input"].items():
        for name, spec in specs.items():
            opts = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
            opts.pop("tooltip", None)
            if name in LISTED:
                opts["options"] = "<listed at run time>"
            inputs[f"{section}.{name}"] = [spec[0], opts]
    return {**{k: info.get(k) for k in KEPT}, "input": inputs}


def test_node_schemas_are_unchanged(object_info):
    recorded = json.loads((HERE / "node_schemas.json").read_text())
    # the pack's own nodes (the test-only pack beside it has a CPSample* node too)
    live = {nid: contract(info) for nid, info in object_info.items()
            if info.get("python_module") == "custom_nodes.CPSample"}
    assert sorted(live) == sorted(recorded)
    for nid in recorded:
        assert live[nid] == recorded[nid], nid


@pytest.mark.parametrize("path", sorted((REPO / "example_workflows").glob("*.json")), ids=lambda p: p.stem)
def test_example_widget_values_fit_the_node_definitions(path, object_info):
    wf = json.loads(path.read_text())
    nodes = [n for n in wf["nodes"] if n["type"].startswith("CPSample")]
    assert nodes, path.name
    for node in nodes:
        info = object_info[node["type"]]
        specs = {**info["input"]["required"], **info["input"].get("optional", {})}
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        order = info["input_order"]["required"] + info["input_order"].get("optional", [])
        widgets = [n for n in order if H._is_widget(specs[n]) and n not in linked]
        expected = sum(1 + H._extra_widget_values(n, specs[n]) for n in widgets)
        values = node.get("widgets_values") or []
        # optional widgets added later (settings, heads) may be missing from older workflows: a prefix fits
        assert len(values) <= expected, (path.name, node["type"], values, widgets)
        required = [n for n in widgets if n in info["input"]["required"]]
        assert len(values) >= sum(1 + H._extra_widget_values(n, specs[n]) for n in required), (path.name, node["type"])
        api = H.ui_to_api(wf, object_info)[str(node["id"])]["inputs"]
        for name, value in api.items():
            spec = specs[name]
            if isinstance(value, list) or name in LISTED:
                continue
            if isinstance(spec[0], list) or spec[0] == "COMBO":
                options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
                assert value in options, (path.name, node["type"], name, value)
            elif spec[0] in ("INT", "FLOAT"):
                assert spec[1].get("min", value) <= value <= spec[1].get("max", value), (path.name, name, value)
