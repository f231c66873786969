"""Fine-tune memorisation benchmark, end to end.

    python -m benchmarks.finetune.run                    # full size: 500 samples per setting, (α, s) sweep
    python -m benchmarks.finetune.run --preset demo      # reduced size, hand-set rows (the demo before issue 37)
    python -m benchmarks.finetune.run --preset prior     # DreamBooth-style fine-tune (prior preservation)

Trains (or loads from benchmarks/finetune/cache/) the digit classifier, the pretrained and the fine-tuned
diffusion model and the guard, samples with and without the guard from the same seeds, and prints / writes
the metrics table (JSON + text) and compare.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from cpsample_nodes.core import NoiseSpace, load_guard, save_guard, train_guard
from cpsample_nodes.core.network import DEFAULT_HEADS

from . import pipeline as P
from ..machine import info as machine_info
from .classifier import classify
from .diffusion import SIGMA_MAX, SIGMA_MIN, Progress
from .evaluate import L2_K, generate, mia, rejection_metrics, replica_flags, sample_metrics, summarize_real
from .figure import compare_png

ROOT = Path(__file__).resolve().parents[2]

N, D = {"guard_input": "noisy"}, {"guard_input": "denoised"}
W2 = {"sigma_range": (0.0, 2.0)}  # guard only on the steps with sigma <= 2 (ComfyUI: start_percent)
# (alpha, scale[, guide() options]) per (preset, training negatives); (None, None) = the core's guide()
# defaults. The first entry is the one shown in compare.png. EARLIER = the guide() defaults when the
# committed tables were measured (docs/finetune.md's "α 0.01" rows).
EARLIER = (0.01, 1000.0)
SWEEPS = {
    ("demo", "class"): [(0.2, 1000.0, W2), EARLIER],
    ("full", "default"): [EARLIER, (0.001, 1.0, N), (0.5, 10.0, N), (0.5, 30.0, N), (0.5, 100.0, N),
                           (0.01, 100.0, D), (0.001, 1000.0, D), (0.5, 100.0, D), (0.2, 1000.0, W2)],
    ("full", "class"): [(0.2, 1000.0, W2), EARLIER, (0.05, 1000.0), (0.2, 1000.0), (0.01, 1000.0, W2),
                        (0.1, 1000.0, W2), (0.3, 1000.0, W2), (0.5, 30.0, N), (0.5, 100.0, N)],
    ("prior", "class"): [(0.3, 1000.0, W2), (0.1, 1000.0, W2), (0.2, 1000.0, W2), EARLIER],
}
# The guard's training negatives, as a user trains it: "default" = train_guard's own (Train Guard),
# "class" = the pretraining digits (neither fine-tune nor held-out images), the role DreamBooth class
# images play for a real fine-tune (Train Guard (with class images)).
NEGATIVES = ("default", "class")
DEFAULT_NEGATIVES = {"demo": "class", "full": "default", "prior": "class", "smoke": "class"}
COMMAND = ["python -m benchmarks.finetune.run " + " ".join(sys.argv[1:])]  # main() records its own arguments
RESULT_STEMS = {"full": "benchmarks/results/finetune/finetune", "prior": "benchmarks/results/finetune/finetune_prior"}


def threads() -> int:
    n = int(os.environ.get("CPSAMPLE_THREADS", "1"))
    torch.set_num_threads(max(1, n))
    return n


def get_guard(cfg: P.Config, split, guard_opts: dict):
    space = NoiseSpace.vp(SIGMA_MIN, SIGMA_MAX)
    import cpsample_nodes.core.network as _n
    import cpsample_nodes.core.training as _t
    core = P._key({"src": [Path(m.__file__).read_text() for m in (_n, _t)]})  # retrain when the core changes
    # the thread count too: a guard that stops at its step cap differs between thread counts, so a run
    # with another count trains its own rather than reuse one it would not have made
    key = P._key({"data": P.pretrain_key(cfg), "steps": cfg.guard_steps, "opts": guard_opts, "seed": 0,
                  "core": core, "threads": torch.get_num_threads()})
    path = P.CACHE / f"guard-{key}.safetensors"
    if path.exists():
        print(f"[cache] guard: {path.name}", flush=True)
        return load_guard(str(path)), True
    bar = Progress(cfg.guard_steps, "train guard (core train_guard)")
    last = [0]

    def progress(step, total, stats):
        bar.update(step - last[0], loss=f"{stats['loss']:.3f}")
        last[0] = step

    t0 = time.time()
    opts = dict(guard_opts)
    if opts.pop("negatives") == "class":
        opts["negatives"] = split.pretrain
    guard = train_guard(split.finetune, space=space, seed=0, max_steps=cfg.guard_steps, progress=progress,
                        info={"benchmark": "finetune digits", **guard_opts}, **opts)
    bar.close()
    print(f"[done] guard in {time.time() - t0:.0f}s, steps {guard.info.get('steps')}, "
          f"accuracy {guard.info.get('accuracy')}, memorised {guard.info.get('memorised')}", flush=True)
    P.CACHE.mkdir(parents=True, exist_ok=True)
    save_guard(guard, str(path))
    return guard, False


def goal(base: dict, row: dict, rejection: dict | None = None) -> dict:
    b, r = base["replication_l2"], row["replication_l2"]
    cut = (b / r) if r > 0 else (float("inf") if b > 0 else float("nan"))
    return {
        "replication_cut": cut,
        "cut_ge_10x": bool(cut >= 10.0),
        "quality_drop_points": 100.0 * (base["quality_share"] - row["quality_share"]),
        "quality_within_5": bool(100.0 * (base["quality_share"] - row["quality_share"]) <= 5.0),
        "mia_not_significant": bool(row["mia"]["p"] > 0.05),
        # against what a perfect rejection sampler keeps: the unguarded samples that are not replicas
        "quality_drop_vs_rejection": (100.0 * (rejection["quality_share"] - row["quality_share"])
                                      if rejection else None),
    }


def fmt_table(rows: list[tuple[str, dict]]) -> str:
    head = (f"{'setting':<30}{'repl l2':>8}{'blurred':>8}{'repl ssim':>10}{'quality':>8}{'FD clf':>8}{'NN used':>8}"
            f"{'spread':>7}{'MIA t':>8}{'MIA p':>8}  goal")
    lines = [head, "-" * len(head)]
    for name, m in rows:
        mi = m.get("mia")
        g = m.get("goal")
        gs = ""
        if g is not None:
            gs = (f"cut {'inf' if g['replication_cut'] == float('inf') else format(g['replication_cut'], '.1f')}x"
                  f" {'Y' if g['cut_ge_10x'] else 'n'}/{'Y' if g['quality_within_5'] else 'n'}/"
                  f"{'Y' if g['mia_not_significant'] else 'n'}")
            if g.get("quality_drop_vs_rejection") is not None:
                gs += f", quality {-g['quality_drop_vs_rejection']:+.1f} pts vs rejection"
        lines.append(
            f"{name:<30}{100 * m['replication_l2']:>7.1f}%{100 * m.get('replication_l2_blur', float('nan')):>7.1f}%"
            f"{100 * m['replication_ssim']:>9.1f}%"
            f"{100 * m['quality_share']:>7.1f}%{m['frechet_clf']:>8.1f}{m['distinct_nn']:>5d}/16"
            f"{m['spread']:>7.2f}{(mi['t'] if mi else float('nan')):>8.2f}{(mi['p'] if mi else float('nan')):>8.3f}  {gs}")
    return "\n".join(lines)


def run(cfg: P.Config, sweep: list[tuple[float, float]], out_json: Path, out_txt: Path, out_png: Path,
        guide_opts: dict | None = None, guard_opts: dict | None = None, ancestral: bool = False,
        with_pretrained: bool = True) -> dict:
    t_start = time.time()
    nthreads = threads()
    guide_opts = dict(guide_opts or {})
    guard_opts = dict(guard_opts or {})
    timings: dict[str, float] = {}

    def tick(name, t0):
        timings[name] = round(time.time() - t0, 1)

    t0 = time.time()
    split = P.get_split(cfg)
    clf = P.get_classifier(cfg, split)
    tick("classifier", t0)
    t0 = time.time()
    pre = P.get_pretrained(cfg, split)
    tick("pretrain", t0)
    t0 = time.time()
    model = P.get_finetuned(cfg, split)
    tick("finetune", t0)
    t0 = time.time()
    guard, _ = get_guard(cfg, split, guard_opts)
    tick("guard", t0)

    ref = summarize_real(split, clf)
    _, _, ref_feats = classify(clf, split.heldout)
    mia_kw = dict(sigmas=cfg.mia_sigmas, draws=cfg.mia_draws)
    rows: list[tuple[str, dict]] = []
    results: dict = {"reference_real_heldout": ref}

    t0 = time.time()
    if with_pretrained:
        s = generate(pre, cfg.n_samples, cfg.sample_seed, cfg.sample_steps, ancestral=ancestral)
        m = sample_metrics(s, split, clf, ref_feats)
        m["mia"] = mia(pre, split, **mia_kw)
        rows.append(("pretrained (before fine-tune)", m))
    s_base = generate(model, cfg.n_samples, cfg.sample_seed, cfg.sample_steps, ancestral=ancestral)
    base = sample_metrics(s_base, split, clf, ref_feats)
    base["mia"] = mia(model, split, **mia_kw)
    rows.append(("fine-tuned, unguarded", base))
    rejection = rejection_metrics(s_base, split, clf, ref_feats)
    if rejection is not None:
        rows.append(("ideal rejection (no replicas)", rejection))
    tick("sample_unguarded", t0)

    guarded = []
    bar = Progress(len(sweep), "guarded sampling sweep")
    t0 = time.time()
    defaults = guide_defaults()
    for entry in sweep:
        alpha, scale = entry[0], entry[1]
        opts = {**guide_opts, **(entry[2] if len(entry) > 2 else {})}
        if alpha == "auto":  # Guard.auto_alpha: the gate from the guard's own training margin
            alpha = guard.auto_alpha()
            label = f"auto a={alpha:.3g} s={scale:g}"
        else:
            label = "core defaults" if alpha is None else f"a={alpha:g} s={scale:g}"
        if alpha is None:
            alpha, scale = defaults["alpha"], defaults["scale"]
        if "guard_input" in opts:
            label += f" {opts['guard_input']}"
        if "sigma_range" in opts:
            label += f" sig<={opts['sigma_range'][1]:g}"
        s = generate(model, cfg.n_samples, cfg.sample_seed, cfg.sample_steps, guard=guard, scale=scale,
                     alpha=alpha, ancestral=ancestral, **opts)
        m = sample_metrics(s, split, clf, ref_feats)
        m["mia"] = mia(model, split, guard=guard, scale=scale, alpha=alpha, **mia_kw, **opts)
        m["goal"] = goal(base, m, rejection)
        m["alpha"], m["scale"], m["guide_options"] = alpha, scale, opts
        guarded.append((s, m))
        rows.append((f"guarded {label}", m))
        bar.update(1)
    bar.close()
    tick("sample_guarded_sweep", t0)

    table = fmt_table(rows)
    # headline: the first sweep entry
    s_head, m_head = guarded[0]
    compare_png(out_png, split.finetune, s_base, base["nn_index"], replica_flags(s_base, split.finetune),
                s_head, m_head["nn_index"], replica_flags(s_head, split.finetune),
                guarded_title=f"guarded {rows[len(rows) - len(guarded)][0][8:]}")
    timings["total"] = round(time.time() - t_start, 1)

    def clean(m):
        return {k: v for k, v in m.items() if k != "nn_index"}

    results.update({
        "command": COMMAND[0],
        "config": asdict(cfg),
        "sampler": f"{'Euler ancestral' if ancestral else 'Euler'}, Karras rho=7, {cfg.sample_steps} steps, "
                   f"sigma {SIGMA_MIN}..{SIGMA_MAX}",
        "guide_options": guide_opts, "guard_options": guard_opts, "guide_defaults": defaults,
        "core": core_version(),
        "guard_info": {k: v for k, v in guard.info.items() if k not in ("created", "dataset_digest")},
        "metric_notes": {
            "replication_l2": f"share with calibrated l2 ratio (nearest / mean of next {L2_K}) < 1/3 vs the 16 fine-tune images",
            "replication_l2_blur": "the same ratio after a Gaussian blur (std 1 px) of samples and fine-tune images",
            "replication_ssim": "share with max SSIM (kornia, 7-tap Gaussian window, data range 2) > 0.9",
            "quality_share": "share the digit CNN (trained on the pretrain split) reads with confidence >= 0.9",
            "frechet_clf": "Frechet distance in the digit CNN's 64-d features vs 300 held-out real digits",
            "mia": "Matsumoto et al. loss test, members = 16 fine-tune images, non-members = 16 held-out; "
                   f"loss = mean ||eps - eps_hat||^2 over sigma {list(cfg.mia_sigmas)} x {cfg.mia_draws} draws; "
                   "Welch t, one-sided p (members lower)",
        },
        "rows": [{"setting": n, **clean(m)} for n, m in rows],
        "timings_s": timings, "threads": nthreads, "machine": machine_info(),
        "torch": torch.__version__,
    })
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1, default=float))
    out_txt.write_text(table + "\n")
    print()
    print(table)
    print(f"\nreference (real held-out digits): {json.dumps({k: round(v, 3) for k, v in ref.items()})}")
    print(f"timings (s): {timings}")
    print(f"wrote {out_json}, {out_txt}, {out_png}")
    return results


def guide_defaults() -> dict:
    """The keyword defaults of the core's Guard.guide (they are the core owner's to tune)."""
    import inspect

    from cpsample_nodes.core import Guard

    return {k: v.default for k, v in inspect.signature(Guard.guide).parameters.items()
            if v.default is not inspect.Parameter.empty}


def core_version() -> dict:
    """Git commit and the core files that differ from it, so a result names the guard code it ran."""
    import subprocess

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "core_files_modified": git("status", "--porcelain", "cpsample_nodes/core").splitlines()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["full", "prior", "demo", "smoke"], default="full",
                    help="full: fine-tune on the 16 alone (total collapse); prior: DreamBooth-style, a better base "
                         "model and 15%% pretraining digits in each fine-tune batch; demo: reduced size")
    ap.add_argument("--sweep", default=None, help="alpha:scale pairs, comma separated, e.g. 0.001:1,0.01:3; "
                    "\"defaults\" = the core defaults, alpha \"auto\" = Guard.auto_alpha()")
    ap.add_argument("--objective", default=None, help="guide() objective (core default if omitted)")
    ap.add_argument("--max-step", default=None, help="guide() max_step (float or 'none'; core default if omitted)")
    ap.add_argument("--guard-input", default=None, help="guide() guard_input ('noisy' = paper form, 'denoised')")
    ap.add_argument("--negatives", choices=NEGATIVES, default=None,
                    help="guard training negatives: 'class' (pretraining digits, like DreamBooth class images) or "
                         "'default' (train_guard's own); default: default for full, class for the others")
    ap.add_argument("--heads", type=int, default=DEFAULT_HEADS,
                    help=f"random labellings the guard fits at once (train_guard(heads=...)); default: the "
                         f"product's, {DEFAULT_HEADS}")
    ap.add_argument("--ancestral", action="store_true", help="Euler ancestral instead of Euler")
    ap.add_argument("--n-samples", type=int, default=None)
    ap.add_argument("--guard-steps", type=int, default=None, help="the guard's training step cap")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="the base model's pretraining steps")
    ap.add_argument("--sigma-max", type=float, default=None,
                    help="guard only on the steps with sigma <= this (applies to every --sweep entry)")
    ap.add_argument("--sample-seed", type=int, default=None, help="seed of the sampling noise (another set of "
                    "samples from the same models and guard)")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/finetune/finetune[_prior], "
                                                 "demo/out/demo for the demo)")
    ap.add_argument("--png", default=None)
    a = ap.parse_args(argv)
    if argv is not None:
        COMMAND[0] = "python -m benchmarks.finetune.run " + " ".join(argv)
    cfg = {"full": P.FULL, "prior": P.PRIOR, "demo": P.DEMO, "smoke": P.SMOKE}[a.preset]
    overrides = {"n_samples": a.n_samples or None, "sample_seed": a.sample_seed, "guard_steps": a.guard_steps,
                 "pretrain_steps": a.pretrain_steps}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    negatives = a.negatives or DEFAULT_NEGATIVES[a.preset]
    sweep = SWEEPS.get((a.preset, negatives), [(0.001, 1.0), (0.2, 1000.0, W2)])
    if a.sweep:
        sweep = [(None, None) if p == "defaults" else
                 tuple(v if v == "auto" else float(v) for v in p.split(":"))
                 for p in a.sweep.split(",")]
    guide_opts = {}
    if a.objective:
        guide_opts["objective"] = a.objective
    if a.max_step is not None:
        guide_opts["max_step"] = None if a.max_step.lower() == "none" else float(a.max_step)
    if a.guard_input:
        guide_opts["guard_input"] = a.guard_input
    if a.sigma_max is not None:
        guide_opts["sigma_range"] = (0.0, a.sigma_max)
    guard_opts = {"negatives": negatives, "heads": a.heads}
    stem = Path(a.out) if a.out else ROOT / RESULT_STEMS.get(a.preset, "demo/out/demo")
    png = Path(a.png) if a.png else (ROOT / "demo/out/compare.png" if a.preset == "demo" else stem.with_suffix(".png"))
    run(cfg, sweep, stem.with_suffix(".json"), stem.with_suffix(".txt"), png, guide_opts, guard_opts, a.ancestral)


if __name__ == "__main__":
    main()
