"""benchmarks/calibration.py run(): the calibrated row uses the default ranking, and
``also_spoil_only`` adds the spoiled-alone choice of the same guard, which the summaries leave out."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.calibration import MixtureBench, run, summarize  # noqa: E402
from cpsample_nodes.core import train_guard  # noqa: E402


def test_run_adds_the_spoil_only_choice_of_the_same_guard(tmp_path):
    bench = MixtureBench("vp", samples=16, steps=8)
    guards = []

    def guard(seed: int):
        guards.append(seed)
        return train_guard(bench.train, bench.space, seed=seed, max_steps=30)

    bench.guard = guard
    rows = run(bench, [0], ["euler"], probes=8, samples=16, hand=False, also_spoil_only=True)
    assert guards == [0]  # both rankings calibrate the one guard
    labels = [r["setting"] for r in rows]
    assert labels[0] == "none" and labels[1].startswith("calibrated: ") and labels[2].startswith("spoil only: ")
    cal, spoil = rows[1], rows[2]
    for r in (cal, spoil):
        assert r["calibration_model_calls"] > 0 and 0 <= r["probe_unguarded_rate"] <= 1
    if cal["settings"] == spoil["settings"]:
        assert cal["replicas"] == spoil["replicas"] and cal["fd_ratio"] == spoil["fd_ratio"]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": rows, "quality": bench.quality_key}))
    table = summarize([path])
    assert "calibrated" in table and "spoil only" not in table
    assert torch.isfinite(torch.tensor([r["fd_ratio"] for r in rows])).all()


def test_rows_of_your_own_replace_the_hand_rows():
    from benchmarks.calibration import custom_row, window_sigma

    rows_in = [custom_row({"alpha": 0.5, "scale": 300}), custom_row({"alpha": 0.2, "window": 2, "max_step": 0.5})]
    assert [r[0] for r in rows_in] == ["α 0.5, all steps, scale 300", "α 0.2, σ ≤ 2, max_step 0.5"]
    with pytest.raises(SystemExit, match="alpah"):
        custom_row({"alpah": 0.2})
    with pytest.raises(SystemExit, match="window"):
        custom_row({"alpha": 0.2, "sigma_max": 1.0})
    bench = MixtureBench("vp", samples=16, steps=8)
    guard = train_guard(bench.train, bench.space, seed=0, max_steps=30)
    bench.guard = lambda seed: guard
    rows = run(bench, [0], ["euler"], probes=8, samples=16, hand=rows_in)
    hand = [r for r in rows if r["setting"].startswith("hand: ")]
    assert [r["setting"] for r in hand] == ["hand: α 0.5, all steps, scale 300", "hand: α 0.2, σ ≤ 2, max_step 0.5"]
    assert hand[0]["settings"] == {"alpha": 0.5, "scale": 300, "sigma_max": None}
    assert hand[1]["settings"] == {"alpha": 0.2, "max_step": 0.5, "sigma_max": window_sigma(guard, 2)}


def test_the_older_rule_flags_map_onto_calibrate_and_absent_flags_keep_its_defaults():
    import argparse
    import inspect

    from benchmarks.calibration import calibrate_rules
    from cpsample_nodes.core import calibrate

    defaults = {k: p.default for k, p in inspect.signature(calibrate).parameters.items()}
    none = calibrate_rules(argparse.Namespace())
    assert none == {k: defaults[k] for k in none}
    older = calibrate_rules(argparse.Namespace(spoil_only=True, widen_on_cost=True, confirm_each=True,
                                               copies_spoiled=True, no_reuse=True))
    assert older == {k: not v for k, v in none.items()}


def test_compare_puts_each_calibration_against_the_same_guard_under_another_rule(tmp_path):
    import json

    from benchmarks.calibration import compare

    def row(seed, setting, replicas, calls, saved=None):
        r = {"bench": "mixture-vp", "sampler": "euler", "guard_seed": seed, "setting": "calibrated: " + setting,
             "replicas": replicas, "fd_ratio": 1.05, "calibration_model_calls": calls}
        return r if saved is None else {**r, "calibration_calls_saved": saved}

    unguarded = {"bench": "mixture-vp", "sampler": "euler", "guard_seed": 0, "setting": "none", "replicas": 0.4,
                 "fd_ratio": 2.4}
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps({"quality": "fd_ratio", "rows": [unguarded, row(0, "α 0.4, all steps", 0.0, 1000),
                                                                  row(1, "α 0.2, all steps", 0.0, 800)]}))
    after.write_text(json.dumps({"quality": "fd_ratio", "rows": [unguarded, row(0, "α 0.4, all steps", 0.0, 700, 300),
                                                                 row(1, "α 0.3, all steps", 0.0, 600, 100),
                                                                 row(2, "α 0.5, all steps", 0.0, 900, 0)]}))
    table = compare([before], [after])
    lines = table.splitlines()
    assert lines[2] == "| mixture-vp, euler, 0 | α 0.4, all steps: 0.0%, fd 1.050 | the same | 1,000 → 700 (300) |"
    assert lines[3].startswith("| mixture-vp, euler, 1 | α 0.2, all steps") and "| α 0.3, all steps: 0.0%" in lines[3]
    assert lines[4] == "| mixture-vp, euler, 2 | — | α 0.5, all steps: 0.0%, fd 1.050 | — |"
    # the guard seed with nothing to compare against counts in neither the share nor the calls
    assert lines[-1] == "1 of 2 the same choice, copies and quality; model calls 1,800 → 1,300 (-27.8%)"


def test_paired_candidates_count_the_same_guards_in_both_sets_only(tmp_path):
    import json

    from benchmarks.calibration import paired_candidates

    def rows(seed, replicas_by_setting, bench="digits-full"):
        out = [{"bench": bench, "sampler": "euler", "guard_seed": seed, "setting": "none", "replicas": 0.5,
                "quality_share": 0.9}]
        return out + [{"bench": bench, "sampler": "euler", "guard_seed": seed, "setting": "hand: " + label,
                       "replicas": r, "quality_share": 0.8} for label, r in replicas_by_setting.items()]

    a02, a05 = "α 0.2, all steps", "α 0.5, all steps"
    # three heads: seed 0 cuts 10x at α 0.2, seed 1 does not; seed 2 exists only here, so it is not paired
    three = rows(0, {a02: 0.04, a05: 0.0}) + rows(1, {a02: 0.2, a05: 0.0}) + rows(2, {a02: 0.0, a05: 0.0})
    one = rows(0, {a02: 0.06, a05: 0.0}) + rows(1, {a02: 0.01, a05: 0.3})
    (tmp_path / "three.json").write_text(json.dumps({"quality": "quality_share", "rows": three}))
    (tmp_path / "one.json").write_text(json.dumps({"quality": "quality_share", "rows": one}))
    lines = paired_candidates([tmp_path / "one.json"], [tmp_path / "three.json"]).splitlines()
    assert "| α 0.2, all steps | 2 | 1 | 1 | 1 | 1 | 1.00 |" in lines  # each meets it on a guard the other misses
    assert "| α 0.5, all steps | 2 | 2 | 1 | 1 | 0 | 1.00 |" in lines
    assert "| α 0.01, all steps | 0 | 0 | 0 | 0 | 0 | 1.00 |" in lines  # a setting nobody measured pairs nothing


def test_quality_within_two_points_counts_two_points_exactly():
    from benchmarks.calibration import goal_met

    row = {"replicas": 0.01, "quality_share": 0.90}  # 450 of 500 against the best row's 460: 2.0 points
    assert goal_met(row, 0.5, 0.92, "quality_share")
    assert not goal_met({**row, "quality_share": 0.898}, 0.5, 0.92, "quality_share")  # 2.2 points
    assert not goal_met({**row, "replicas": 0.06}, 0.5, 0.92, "quality_share")  # copies not cut 10x


def test_sign_test_is_two_sided_and_exact():
    from benchmarks.calibration import sign_test

    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == sign_test(0, 5) == 2 / 32  # all five discordant pairs one way
    assert abs(sign_test(15, 7) - 0.1338) < 1e-4


def test_summaries_name_a_file_that_is_not_a_result_file(tmp_path):
    import pytest

    from benchmarks.calibration import candidates

    for name, text in (("cut.json", '{"rows": ['), ("other.json", '{"steps": 3}'), ("list.json", "[1]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit, match=name):
            candidates([tmp_path / name])
    with pytest.raises(SystemExit, match="missing.json"):
        candidates([tmp_path / "missing.json"])
