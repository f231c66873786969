"""One markdown table from the benchmark's result files (the runs split by --settings / --part):

    python -m benchmarks.lora.table benchmarks/results/lora/lora_cfg1.json benchmarks/results/lora/lora_cfg5.json \\
        benchmarks/results/lora/lora_combined.json > benchmarks/results/lora/table.md

Rows: every (sampler, CFG, fix) in the files, in sampler order; a fix measured in two files (the baseline
each file repeats) appears once, from the first file. Guard-seed rows show the mean and the range.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["euler", "euler_a", "dpmpp_2m"]
NAMES = {"euler": "Euler", "euler_a": "Euler a", "dpmpp_2m": "DPM++ 2M"}


def _pct(a: dict, f: str) -> str:
    if f not in a:
        return "–"
    s = f"{100 * a[f]:.1f}"
    if a.get("seeds", 1) > 1:
        lo, hi = a[f + "_range"]
        s += f" ({100 * lo:.1f}–{100 * hi:.1f})"
    return s


def _one_off(a: dict, rows: list[dict]) -> str:
    if "cal_model_calls" not in a:
        return "needs the training images at inference" if a["fix"].startswith("ideal") else "none"
    lo, hi = a["cal_multiple_of_probes_range"]
    g = [r for r in rows if r["fix"] == a["fix"] and r["sampler"] == a["sampler"] and r["cfg"] == a["cfg"]]
    reached = sum(bool(r.get("reached")) for r in g)
    return (f"guard {a['guard_train_seconds']:.0f} s; calibration {a['cal_model_calls']:.0f} calls "
            f"({lo:.1f}–{hi:.1f}× the probes' run), {a['cal_seconds']:.0f} s; target reached {reached}/{len(g)}")


def table(files: list[Path]) -> str:
    seen, summ, rows = set(), [], []
    for f in files:
        d = json.loads(f.read_text())
        rows += d["rows"]
        for a in d["summary"]:
            k = (a["sampler"], a["cfg"], a["fix"])
            if k not in seen:
                seen.add(k)
                summ.append(a)
    summ.sort(key=lambda a: (a["cfg"], ORDER.index(a["sampler"])))
    out = ["| sampler | CFG | fix | copies % | quality % | adherence % | diversity | model calls / image | one-off cost |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for a in summ:
        calls = a["calls_per_image"]
        calls_s = "∞" if calls == float("inf") else f"{calls:.1f}"
        out.append(f"| {NAMES[a['sampler']]} | {a['cfg']:g} | {a['fix']} | {_pct(a, 'copies')} | {_pct(a, 'quality')} | "
                   f"{_pct(a, 'adherence')} | {a['diversity']:.2f} | {calls_s} | {_one_off(a, rows)} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table([Path(p) for p in sys.argv[1:]]))
