"""The demo (bash tools/demo.sh) on a tiny configuration: its pieces run together on the shipped model,
and its goal and table say what they should."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.finetune import demo, demo_model
from benchmarks.finetune.demo_report import Row, goal, goal_text, table


def test_the_demo_runs_the_recommended_path_on_a_tiny_configuration(tmp_path):
    out = demo.main(["--guard-steps", "3", "--probes", "8", "--samples", "24", "--steps", "4",
                     "--out", str(tmp_path / "demo"), "--png", str(tmp_path / "compare.png")])
    rows = {r["name"].split(" (")[0]: r for r in out["rows"]}
    base, ideal = rows["fine-tune, no protection"], rows["ideal filter"]
    calibrated = next(r for name, r in rows.items() if name.startswith("calibrated guard"))
    assert base["n"] == calibrated["n"] == 24
    assert ideal["n"] == base["n"] - base["copies"] and ideal["copies"] == 0  # the filter drops every copy
    assert out["guard"]["steps"] == 3                                        # trained by train_guard to its cap
    assert out["calibration"]["probes"] == 8 and out["calibration"]["model_calls"] > 0
    assert calibrated["name"].endswith(f"({out['calibration']['chosen']})")  # the row names the chosen setting
    text = (tmp_path / "demo.txt").read_text()
    for words in ("copies", "well-formed digits", "ideal filter", "Goal"):
        assert words in text
    assert json.loads((tmp_path / "demo.json").read_text())["rows"] == out["rows"]
    for png in ("compare.png", "demo_calibration.png"):
        assert (tmp_path / png).stat().st_size > 5_000


def test_the_shipped_model_loads_as_float32_in_eval_mode():
    model, clf, split = demo_model.load()
    assert not model.training and not clf.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert split.finetune.shape == (16, 1, 16, 16)
    assert demo_model.MODEL_FILE.stat().st_size < 3_000_000  # the size the repository allows it


def test_a_missing_model_names_the_command_that_rebuilds_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks.finetune.demo_model"):
        demo_model.load(tmp_path / "none.safetensors")


def _row(copies: int, well_formed: int, n: int = 256, name: str = "r") -> Row:
    return Row(name, n, copies, well_formed)


def test_the_goal_is_a_tenth_of_the_copies_and_five_points_of_the_ideal_filter():
    base, ideal = _row(170, 240), _row(0, 80, n=86)                   # ideal: 93.0 % well-formed
    assert goal(base, _row(17, 226), ideal).met                        # exactly 10x, 88.3 %: 4.7 points under
    assert not goal(base, _row(18, 226), ideal).copies_ok              # 9.4x
    assert not goal(base, _row(0, 224), ideal).quality_ok              # 87.5 %: 5.5 points under
    assert goal(base, _row(0, 250), ideal).quality_gap < 0              # better than the filter counts as met
    assert goal(base, _row(0, 250), ideal).cut == float("inf")
    assert "MET" in goal_text(goal(base, _row(17, 226), ideal), base, _row(17, 226), ideal)
    assert "NOT MET" in goal_text(goal(base, _row(18, 226), ideal), base, _row(18, 226), ideal)
    assert "nothing to cut" in goal_text(goal(_row(0, 1), _row(0, 1), ideal), _row(0, 1), _row(0, 1), ideal)


def test_the_table_counts_in_plain_columns():
    text = table([_row(170, 240, name="fine-tune, no protection")])
    assert text.splitlines()[0].split() == ["setting", "copies", "well-formed", "digits"]
    assert "66.4 % (170/256)" in text and "93.8 % (240/256)" in text
