"""Prompted LoRA benchmark (issue 36), end to end. Run it with ComfyUI's test venv (comfy_sampling.py says why):

    CPSAMPLE_THREADS=1 .cache/comfyui/venv/bin/python -m benchmarks.lora.run                 # the table
    CPSAMPLE_THREADS=1 .cache/comfyui/venv/bin/python -m benchmarks.lora.run --preset smoke  # seconds, for tests

Trains (or loads from benchmarks/finetune/cache/lora/) the digit classifier, the class-conditional base
model and the LoRA; trains the product's guard (``train_guard``, product defaults) once per guard seed;
then for every sampler setting (ComfyUI's Euler, Euler ancestral, DPM++ 2M at CFG 1 and 5) samples the
trigger prompt on the same evaluation seeds with each fix, calibrating CPSample with the product's own
``calibrate`` on that setting's sampler, and writes the table (text) and every number (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch

from benchmarks.finetune.diffusion import SIGMA_MAX, SIGMA_MIN, Progress
from benchmarks.machine import info as machine_info
from cpsample_nodes.core import NoiseSpace, calibrate, load_guard, save_guard, train_guard

from . import fixes
from . import pipeline as P
from .comfy_sampling import Counter, make_sampler
from .metrics import class_accuracy, sample_metrics
from .model import NULL, TRIGGER

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [("euler", 1.0), ("euler", 5.0), ("euler_a", 1.0), ("euler_a", 5.0), ("dpmpp_2m", 1.0), ("dpmpp_2m", 5.0)]
STATIC_SIGMAS = (3.0, 1.0)   # Jain static transitions tried (not tuned): ~the first 6 and ~10 of 20 Karras steps
# The fix CPSample is combined with: Wen et al. It tied Jain dynamic on copies and kept more quality on
# seeds 20000-20099 of Euler CFG 5 (not the evaluation seeds; benchmarks/results/lora/README.md), and it
# composes with a guard at every CFG (it changes the prompt, the guard the CFG result).
COMBINE = "wen"
BATCH = 100                  # evaluation seeds per sampler call


def threads() -> int:
    n = int(os.environ.get("CPSAMPLE_THREADS", "1"))
    torch.set_num_threads(max(1, n))
    return n


def guard_path(cfg: P.Config, seed: int) -> Path:
    import cpsample_nodes.core.network as _n
    import cpsample_nodes.core.training as _t

    core = P.key({"src": [Path(m.__file__).read_text() for m in (_n, _t)]})  # retrain when the core changes
    k = P.key({**P._split_key(cfg), "steps": cfg.guard_steps, "seed": seed, "core": core,
               "threads": torch.get_num_threads()})
    return P.CACHE / f"guard-{k}.safetensors"


def get_guard(cfg: P.Config, sp, seed: int):
    """The product's guard with its defaults (negatives, heads), one per seed, cached. A run that finds
    another process training the same guard (its ``.training`` marker) waits for it instead of
    training it twice (guards take minutes; runs of the two --part halves share them)."""
    path = guard_path(cfg, seed)
    marker = path.with_suffix(".training")
    while marker.exists() and not path.exists() and time.time() - marker.stat().st_mtime < 3600:
        time.sleep(5)
    if path.exists():
        print(f"[cache] guard seed {seed}: {path.name}", flush=True)
        g = load_guard(str(path))
        return g, float(g.info.get("bench_train_seconds", float("nan")))
    P.CACHE.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        t0 = time.time()
        guard = train_guard(sp.finetune, NoiseSpace.vp(SIGMA_MIN, SIGMA_MAX), seed=seed,
                            max_steps=cfg.guard_steps, info={"benchmark": "lora digits"})
        secs = time.time() - t0
        guard.info = {**guard.info, "bench_train_seconds": round(secs, 1)}
        save_guard(guard, str(path))
    finally:
        marker.unlink(missing_ok=True)
    print(f"[done] guard seed {seed} in {secs:.0f}s, steps {guard.info.get('steps')}", flush=True)
    return guard, secs


class Guards:
    """Guards loaded (or trained) when first needed, so sampling starts while they train elsewhere."""

    def __init__(self, cfg: P.Config, sp):
        self.cfg, self.sp, self.loaded = cfg, sp, {}

    def __iter__(self):
        for s in self.cfg.guard_seeds:
            if s not in self.loaded:
                self.loaded[s] = get_guard(self.cfg, self.sp, s)
            yield self.loaded[s]


def evaluate(sample, seeds: list[int], guide=None) -> torch.Tensor:
    return torch.cat([sample(guide, seeds[i:i + BATCH]) for i in range(0, len(seeds), BATCH)])


def row(name: str, samples: torch.Tensor, sp, clf, calls: float, **extra) -> dict:
    m = sample_metrics(samples, sp.finetune, clf, sp.digit)
    m.pop("copy_flags", None)
    return {"fix": name, **m, "calls_per_image": calls, **extra}


def run_setting(cfg: P.Config, sampler: str, scale: float, model, sp, clf, guards: list, log,
                part: str = "all") -> list[dict]:
    """Every fix on one sampler setting; ``part`` "main" leaves out the combination, "combined" runs only
    it (after "none", so each file has its baseline): the two halves can run side by side."""
    seeds = list(range(cfg.eval_seed0, cfg.eval_seed0 + cfg.n_eval))
    probes = list(range(cfg.probes))
    rows: list[dict] = []

    def plain(policy=None, prompt_for=None):
        c = Counter()
        return make_sampler(model, TRIGGER, NULL, sampler, scale, cfg.sample_steps, c, policy, prompt_for), c

    # nothing, and the ideal rejection filter on the same samples
    s, c = plain()
    t0 = time.time()
    base = evaluate(s, seeds)
    base_calls = c.forward / len(seeds)
    r_none = row("none", base, sp, clf, base_calls, seconds=round(time.time() - t0, 1))
    rows.append(r_none)
    flags = sample_metrics(base, sp.finetune, clf, sp.digit)["copy_flags"]
    keep = base[~flags]
    rate = float(flags.double().mean())
    rej_calls = base_calls / (1 - rate) if rate < 1 else float("inf")
    rows.append(row("ideal rejection (resample copies)", keep, sp, clf, rej_calls,
                    note="needs a copy detector and the training images at inference"))
    log(f"  none: copies {r_none['copies']:.3f} quality {r_none['quality']:.3f} adherence {r_none['adherence']:.3f}")

    # the others
    others: dict[str, Callable] = {}
    if scale != 1.0 and part != "combined":
        for st in STATIC_SIGMAS:
            others[f"Jain static (no CFG above sigma {st:g})"] = lambda st=st: plain(fixes.StaticTransition(scale, st))
        others["Jain dynamic (no CFG until the gap drops)"] = lambda: plain(fixes.DynamicTransition(scale))
    wen = fixes.wen_prompts(model, TRIGGER, NULL, float(s.sigmas[0]))
    if part != "combined":
        others["Wen (first-step prompt-embedding minimisation)"] = lambda: plain(prompt_for=wen)
    for name, make in others.items():
        smp, c = make()
        wen.calls = wen.backward = 0
        t0 = time.time()
        out = evaluate(smp, seeds)
        extra = {}
        if "Wen" in name:
            c.forward += wen.calls
            extra["backward_per_image"] = wen.backward / len(seeds)
        rows.append(row(name, out, sp, clf, c.forward / len(seeds), seconds=round(time.time() - t0, 1), **extra))
        log(f"  {name}: copies {rows[-1]['copies']:.3f} quality {rows[-1]['quality']:.3f}")

    # CPSample, calibrated on this sampler by the product, per guard seed; and combined with COMBINE
    variants: list[tuple[str, dict]] = [("CPSample (calibrated)", {})] if part != "combined" else []
    if part != "main":
        if COMBINE == "wen":
            variants.append(("CPSample + Wen", {"prompt_for": wen}))
        elif scale != 1.0:
            variants.append(("CPSample + Jain dynamic", {"policy": fixes.DynamicTransition(scale)}))
    for label, kw in variants:
        for gseed, (guard, train_s) in zip(cfg.guard_seeds, guards):
            smp, c = plain(**kw)
            wen.calls = wen.backward = 0
            t0 = time.time()
            cal = calibrate(guard, smp, sp.finetune, seeds=probes,
                            sampler_description=f"{sampler} {cfg.sample_steps} steps cfg {scale:g}"
                            + (f" + {COMBINE}" if kw else ""))
            cal_s, cal_unet = time.time() - t0, c.forward + wen.calls
            settings = dict(cal.settings)
            c.forward = wen.calls = wen.backward = 0
            out = evaluate(smp, seeds, lambda d, x, sg, st=settings, g=guard: g.guide(d, x, sg, **st))
            c.forward += wen.calls
            unguarded_calls = cal.rows[0]["model_calls"] if cal.rows else cal.model_calls
            rows.append(row(label, out, sp, clf, c.forward / len(seeds), guard_seed=gseed,
                            settings=settings, reached=bool(cal.reached), weak_guard=bool(cal.weak_guard),
                            cal_unguarded_rate=cal.unguarded_rate, cal_calibrated_rate=cal.calibrated_rate,
                            cal_model_calls=cal.model_calls, cal_unet_calls=cal_unet,
                            cal_multiple_of_probes=cal.model_calls / max(unguarded_calls, 1),
                            cal_seconds=round(cal_s, 1), guard_train_seconds=train_s))
            log(f"  {label} seed {gseed}: {settings} copies {rows[-1]['copies']:.3f} "
                f"quality {rows[-1]['quality']:.3f} cal {cal.model_calls} calls {cal_s:.0f}s")
    for r in rows:
        r["sampler"], r["cfg"] = sampler, scale
    return rows


def class_check(cfg: P.Config, model, clf, scale: float) -> float:
    """Do class prompts still work? 20 seeds per digit, Euler, the given CFG."""
    seeds = list(range(cfg.eval_seed0, cfg.eval_seed0 + 20))
    outs, labels = [], []
    for d in range(10):
        smp = make_sampler(model, d, NULL, "euler", scale, cfg.sample_steps)
        outs.append(smp(None, seeds))
        labels.append(torch.full((len(seeds),), d))
    return class_accuracy(torch.cat(outs), torch.cat(labels), clf)


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (setting, fix): guard-seed rows become mean, min and max."""
    out: list[dict] = []
    keys = []
    for r in rows:
        k = (r["sampler"], r["cfg"], r["fix"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        group = [r for r in rows if (r["sampler"], r["cfg"], r["fix"]) == k]
        agg = {"sampler": k[0], "cfg": k[1], "fix": k[2], "seeds": len(group)}
        for f in ("copies", "quality", "adherence", "on_concept", "diversity", "calls_per_image",
                  "cal_model_calls", "cal_multiple_of_probes", "cal_seconds", "guard_train_seconds"):
            vals = [r[f] for r in group if r.get(f) is not None]
            if vals:
                agg[f] = sum(vals) / len(vals)
                agg[f + "_range"] = (min(vals), max(vals))
        out.append(agg)
    return out


def fmt(summary: list[dict]) -> str:
    def pct(a, f):
        if f not in a:
            return "   -"
        lo, hi = a[f + "_range"]
        s = f"{100 * a[f]:5.1f}"
        return s + (f" ({100 * lo:.1f}-{100 * hi:.1f})" if a["seeds"] > 1 else "")

    head = f"{'sampler':<9}{'cfg':>4}  {'fix':<48}{'copies %':>22}{'quality %':>22}{'adherence %':>22}{'diversity':>10}{'calls/img':>10}{'one-off':>18}"
    lines = [head, "-" * len(head)]
    for a in summary:
        one_off = ""
        if "cal_model_calls" in a:
            one_off = f"cal {a['cal_multiple_of_probes']:.1f}x probes"
        lines.append(f"{a['sampler']:<9}{a['cfg']:>4g}  {a['fix']:<48}{pct(a, 'copies'):>22}{pct(a, 'quality'):>22}"
                     f"{pct(a, 'adherence'):>22}{a.get('diversity', float('nan')):>10.2f}"
                     f"{a.get('calls_per_image', float('nan')):>10.1f}{one_off:>18}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["full", "smoke"], default="full")
    ap.add_argument("--settings", default=None, help="sampler:cfg pairs, e.g. euler:5,dpmpp_2m:1 (default: all six)")
    ap.add_argument("--guard-seeds", default=None, help="comma separated (default 0,1,2)")
    ap.add_argument("--n-eval", type=int, default=None)
    ap.add_argument("--part", choices=["all", "main", "combined"], default="all",
                    help="main: every fix but CPSample + Jain; combined: only that (with its baseline)")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/lora/lora)")
    a = ap.parse_args(argv)
    command = "python -m benchmarks.lora.run " + " ".join(sys.argv[1:] if argv is None else argv)
    nthreads = threads()
    cfg = P.FULL if a.preset == "full" else P.SMOKE
    if a.guard_seeds:
        cfg = replace(cfg, guard_seeds=tuple(int(s) for s in a.guard_seeds.split(",")))
    if a.n_eval:
        cfg = replace(cfg, n_eval=a.n_eval)
    settings = SETTINGS if not a.settings else [(p.split(":")[0], float(p.split(":")[1])) for p in a.settings.split(",")]
    stem = Path(a.out) if a.out else ROOT / "benchmarks/results/lora/lora"
    log_lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    t_start = time.time()
    timings: dict[str, float] = {}
    t0 = time.time()
    sp = P.get_split(cfg)
    clf = P.get_classifier(cfg, sp)
    base = P.get_base(cfg, sp)
    model = P.get_lora(cfg, sp)
    timings["models"] = round(time.time() - t0, 1)
    t0 = time.time()
    guards = Guards(cfg, sp)
    t0 = time.time()
    checks = {} if a.part == "combined" else {
        "class_accuracy_base_cfg5": class_check(cfg, base, clf, 5.0),
        "class_accuracy_lora_cfg5": class_check(cfg, model, clf, 5.0),
        "class_accuracy_lora_cfg1": class_check(cfg, model, clf, 1.0)}
    log(f"class prompts: {checks}")
    rows: list[dict] = []

    def write(done: bool) -> dict:
        """The files so far: rewritten after every setting, so a stopped run keeps what it measured."""
        timings["total"] = round(time.time() - t_start, 1)
        summary = summarize(rows)
        table = fmt(summary)
        result = {"command": f"CPSAMPLE_THREADS={nthreads} .cache/comfyui/venv/bin/{command}", "complete": done,
                  "config": P.config_dict(cfg), "combine": COMBINE, "checks": checks, "summary": summary,
                  "rows": rows, "timings_s": timings, "threads": nthreads, "machine": machine_info(),
                  "torch": torch.__version__, "log": log_lines}
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
        stem.with_suffix(".txt").write_text(table + f"\n\nclass prompts (classifier accuracy): {checks}\n"
                                            + ("" if done else "\n(incomplete run)\n"))
        return result

    bar = Progress(len(settings), "sampler settings")
    for sampler, scale in settings:
        log(f"{sampler} cfg {scale:g}")
        rows += run_setting(cfg, sampler, scale, model, sp, clf, guards, log, a.part)
        timings[f"{sampler}_cfg{scale:g}"] = round(time.time() - t0, 1)
        write(False)
        bar.update(1)
    bar.close()
    result = write(True)
    print("\n" + fmt(result["summary"]))
    print(f"timings (s): {timings}\nwrote {stem.with_suffix('.json')}, {stem.with_suffix('.txt')}")
    return result


if __name__ == "__main__":
    main()
