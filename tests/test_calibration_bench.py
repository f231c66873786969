"""benchmarks/calibration.py: it measures the product (three heads, calibrate's own rules), and its
summaries give the docs' tables."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.calibration import MixtureBench, parser, run, summarize  # noqa: E402
from cpsample_nodes.core import train_guard  # noqa: E402
from cpsample_nodes.core.network import DEFAULT_HEADS  # noqa: E402


def test_the_benchmark_measures_the_product_by_default():
    args = parser().parse_args([])
    assert args.heads == DEFAULT_HEADS == MixtureBench("vp", samples=16, steps=8).heads
    assert not args.only_calibrated and args.probes == 64
    for gone in ("--no-reuse", "--copies-spoiled", "--spoil-only", "--confirm-each", "--settle"):
        with pytest.raises(SystemExit):
            parser().parse_args([gone])


def test_run_gives_the_unguarded_and_calibrated_rows_of_each_guard(tmp_path):
    bench = MixtureBench("vp", samples=16, steps=8)
    guards = []

    def guard(seed: int):
        guards.append(seed)
        return train_guard(bench.train, bench.space, seed=seed, max_steps=30, heads=bench.heads)

    bench.guard = guard
    rows = run(bench, [0], ["euler"], probes=8, samples=16, hand=False)
    assert guards == [0]
    assert [r["setting"].split(":")[0] for r in rows] == ["none", "calibrated"]
    cal = rows[1]
    assert cal["calibration_model_calls"] > 0 and 0 <= cal["probe_unguarded_rate"] <= 1
    assert "calibration_model_calls" not in rows[0]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": rows, "quality": bench.quality_key}))
    assert "calibrated" in summarize([path])
    assert torch.isfinite(torch.tensor([r["fd_ratio"] for r in rows])).all()


def test_paired_candidates_count_the_same_guards_in_both_sets_only(tmp_path):
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
    from benchmarks.calibration import candidates

    for name, text in (("cut.json", '{"rows": ['), ("other.json", '{"steps": 3}'), ("list.json", "[1]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit, match=name):
            candidates([tmp_path / name])
    with pytest.raises(SystemExit, match="missing.json"):
        candidates([tmp_path / "missing.json"])
