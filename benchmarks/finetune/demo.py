"""The demo: the product's recommended path on a small fine-tune that copies its training digits.

    python -m benchmarks.finetune.demo [--guard-seed N]

A digits diffusion model fine-tuned on 16 images (shipped: benchmarks/finetune/demo_model.py) stands in
for the user's fine-tune. The demo trains a guard on the 16 images as Train Guard (with class images)
does (``train_guard``), calibrates it on the model and its sampler as Calibrate Guard does
(``calibrate``), then samples fresh seeds without the guard and with the calibrated setting, and
prints how many samples copy a training image and how many are well-formed digits, beside the ideal
filter (the unguarded samples with every copy thrown away). Writes demo/out/compare.png (the picture),
demo/out/demo_calibration.png (what Calibrate Guard shows), demo/out/demo.{txt,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cpsample_nodes.core import NoiseSpace, calibrate, train_guard
from cpsample_nodes.core.calibration import describe
from cpsample_nodes.core.evidence import calibration_summary
from cpsample_nodes.core.training import progress_text as training_progress

from ..calibration_samplers import seeded_sampler
from ..machine import info as machine_info
from . import demo_model
from .classifier import classify
from .demo_figure import compare_png, evidence_png
from .demo_report import LEGEND, Row, goal, goal_text, table
from .diffusion import SIGMA_MAX, SIGMA_MIN, karras_sigmas
from .evaluate import replica_flags

ROOT = Path(__file__).resolve().parents[2]
PROBE_SEEDS = 10_000  # calibration's probes (and its confirmation seeds after them)
EVAL_SEEDS = 20_000   # the fresh seeds the table is measured on: calibration never saw them


@dataclass(frozen=True)
class DemoConfig:
    guard_seed: int = 0
    guard_steps: int = 3000  # train_guard's own step cap; the demo's guards memorise long before it
    probes: int = 32         # Calibrate Guard's default
    samples: int = 256       # fresh seeds per row of the table
    steps: int = 20          # sampling steps (Euler, Karras schedule)
    sampler: str = "euler"


def threads() -> int:
    n = max(1, int(os.environ.get("CPSAMPLE_THREADS", "1")))
    torch.set_num_threads(n)
    return n


def make_sampler(model, cfg: DemoConfig):
    """``sample(guide, seeds)``: each seed its own noise, the guard's ``guide`` after every model call."""
    sigmas = karras_sigmas(cfg.steps, SIGMA_MIN, SIGMA_MAX).tolist()

    @torch.no_grad()
    def den(x, s):
        return model(x, torch.full((x.shape[0],), s))

    inner = seeded_sampler(den, "vp", sigmas, (1, 16, 16), cfg.sampler, (1.0 + sigmas[0] ** 2) ** 0.5)
    return lambda guide, seeds: inner(guide, seeds).clamp(-1, 1)


def measure(name: str, samples: torch.Tensor, finetune: torch.Tensor, clf) -> tuple[Row, torch.Tensor]:
    """The row's counts, and which samples are copies."""
    if samples.shape[0] == 0:  # the ideal filter of a model that only copies keeps nothing
        return Row(name, 0, 0, 0), torch.zeros(0, dtype=torch.bool)
    copies = replica_flags(samples, finetune)
    _, conf, _ = classify(clf, samples)
    return Row(name, samples.shape[0], int(copies.sum()), int((conf >= 0.9).sum())), copies


def run(cfg: DemoConfig, out: Path, png: Path, log=print) -> dict:
    t_all = time.time()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)

    t0 = time.time()
    model, clf, split = demo_model.load()
    lap("load model", t0)
    log(f"the fine-tune: a digits diffusion model fine-tuned on {split.finetune.shape[0]} images "
        f"({demo_model.MODEL_FILE.name})")

    t0 = time.time()
    space = NoiseSpace.vp(SIGMA_MIN, SIGMA_MAX)
    guard = train_guard(split.finetune, space, seed=cfg.guard_seed, max_steps=cfg.guard_steps,
                        negatives=split.pretrain,  # class images: the fine-tune's own prior digits
                        progress=lambda step, total, stats: step % 100 == 0 and log(
                            f"  training the guard: {training_progress(step, total, stats)}"))
    lap("train guard", t0)
    info = guard.info
    log(f"guard: {info['steps']} steps, {info['heads']} heads, memorised {info['memorised']} "
        f"({time.time() - t0:.0f} s)")

    t0 = time.time()
    sample = make_sampler(model, cfg)
    shown = [0]

    def calibration_progress(done: int, total: int, stats: dict) -> None:
        if done - shown[0] >= 100 and stats.get("setting") != "done":  # a line per hundred probe images
            shown[0] = done
            log(f"  calibrating: {done} probe images sampled, trying {stats.get('setting')}")

    cal = calibrate(guard, sample, split.finetune, seeds=range(PROBE_SEEDS, PROBE_SEEDS + cfg.probes),
                    sampler_description=f"{cfg.sampler}, {cfg.steps} steps", progress=calibration_progress)
    lap("calibrate", t0)
    chosen = describe(cal.settings)
    log(f"{calibration_summary(cal)} ({time.time() - t0:.0f} s, {cal.model_calls} model calls)")

    t0 = time.time()
    seeds = list(range(EVAL_SEEDS, EVAL_SEEDS + cfg.samples))
    plain = sample(None, seeds)
    guarded = sample(lambda d, x, s: guard.guide(d, x, s, **cal.settings), seeds)
    base, base_copy = measure("fine-tune, no protection", plain, split.finetune, clf)
    ideal, _ = measure("ideal filter (copies thrown away)", plain[~base_copy], split.finetune, clf)
    calib, calib_copy = measure(f"calibrated guard ({chosen})", guarded, split.finetune, clf)
    lap("sample and measure", t0)
    g = goal(base, calib, ideal)

    from cpsample_nodes.core.metrics import nearest_neighbors
    nearest = nearest_neighbors(plain, split.finetune, 1)[1][:, 0]
    probes = (f"Calibration: {cal.probes} probe seeds copied {round(cal.unguarded_rate * cal.probes)} times "
              f"unguarded; it chose {chosen} ({round(cal.calibrated_rate * cal.probes)} copies), "
              f"confirmed on {len(cal.confirm_seeds)} new seeds.")
    summary = [f"{cfg.samples} fresh seeds: copies {100 * base.copy_rate:.1f} % -> {100 * calib.copy_rate:.1f} %, "
               f"well-formed digits {100 * base.quality:.1f} % -> {100 * calib.quality:.1f} % "
               f"(ideal filter {100 * ideal.quality:.1f} %). Goal {'met' if g.met else 'NOT met'}.", probes]
    compare_png(png, unguarded=plain, unguarded_copy=base_copy, calibrated=guarded, calibrated_copy=calib_copy,
                nearest=nearest, finetune=split.finetune, chosen=chosen, summary=summary, cal=cal)
    evidence = out.with_name(out.name + "_calibration.png")
    evidence_png(evidence, cal, split.finetune, f"{cfg.sampler}, {cfg.steps} steps")
    timings["total"] = round(time.time() - t_all, 1)

    text = "\n".join([table([base, ideal, calib]), "", LEGEND, goal_text(g, base, calib, ideal)])
    result = {
        "command": "python -m benchmarks.finetune.demo " + " ".join(sys.argv[1:]),
        "config": asdict(cfg), "threads": torch.get_num_threads(), "machine": machine_info(),
        "torch": torch.__version__, "model": demo_model.MODEL_FILE.name,
        "guard": {k: info[k] for k in ("steps", "heads", "memorised", "accuracy", "confident", "train_seconds")},
        "calibration": {"settings": cal.settings, "chosen": chosen, "probes": cal.probes,
                        "probe_copies_unguarded": round(cal.unguarded_rate * cal.probes),
                        "probe_copies_calibrated": round(cal.calibrated_rate * cal.probes),
                        "reached": cal.reached, "weak_guard": cal.weak_guard, "model_calls": cal.model_calls,
                        "seconds": round(cal.seconds, 1)},
        "rows": [asdict(r) for r in (base, ideal, calib)],
        "goal": {**asdict(g), "met": g.met}, "timings_s": timings,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".txt").write_text(text + "\n")
    log("")
    log(text)
    log(f"\ntimings (s): {timings}")
    log(f"wrote {png}, {evidence}, {out.with_suffix('.txt')}, {out.with_suffix('.json')}")
    return result


def parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guard-seed", type=int, default=d.guard_seed, help="seed of the guard's random labels")
    ap.add_argument("--guard-steps", type=int, default=d.guard_steps, help="the guard's training step cap")
    ap.add_argument("--probes", type=int, default=d.probes, help="calibration's probe seeds (at least 8)")
    ap.add_argument("--samples", type=int, default=d.samples, help="fresh seeds per row of the table")
    ap.add_argument("--steps", type=int, default=d.steps, help="sampling steps")
    ap.add_argument("--out", type=Path, default=ROOT / "demo/out/demo", help="stem of the .txt and .json")
    ap.add_argument("--png", type=Path, default=ROOT / "demo/out/compare.png")
    return ap


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    for name in ("guard_steps", "probes", "samples", "steps"):
        if getattr(a, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    threads()
    cfg = DemoConfig(a.guard_seed, a.guard_steps, a.probes, a.samples, a.steps)
    return run(cfg, a.out, a.png)


if __name__ == "__main__":
    main()
