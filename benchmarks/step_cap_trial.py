"""One-off trial (design log, "A stronger step cap"): on the prompted LoRA benchmark at CFG 5,

    --mode grid       copies and readability on 64 probes at α 0.5 for step caps 1, 2 and 4 in each σ
                      window (scale 1000 × the cap), per guard and sampler;
    --mode calibrate  calibrate() on 32 probes per guard and sampler, printing every row it tried.

    PYTHONPATH=. CPSAMPLE_THREADS=1 .cache/comfyui/venv/bin/python benchmarks/step_cap_trial.py --mode grid \
        --settings euler_a:5,dpmpp_2m:5
"""
import argparse
import time

from benchmarks.lora import pipeline as P
from benchmarks.lora import run as R
from benchmarks.lora.comfy_sampling import Counter, make_sampler
from benchmarks.lora.metrics import sample_metrics
from benchmarks.lora.model import NULL, TRIGGER
from cpsample_nodes.core import calibrate

ap = argparse.ArgumentParser()
ap.add_argument("--mode", choices=["grid", "calibrate"], required=True)
ap.add_argument("--settings", default="euler_a:5,dpmpp_2m:5")
a = ap.parse_args()
R.threads()
cfg = P.FULL
sp = P.get_split(cfg)
clf = P.get_classifier(cfg, sp)
model = P.get_lora(cfg, sp)
guards = list(R.Guards(cfg, sp))
for sampler, scale in [(p.split(":")[0], float(p.split(":")[1])) for p in a.settings.split(",")]:
    smp = make_sampler(model, TRIGGER, NULL, sampler, scale, cfg.sample_steps, Counter(), None, None)
    for gseed, (g, _) in zip(cfg.guard_seeds, guards):
        if a.mode == "grid":
            for cap in (1.0, 2.0, 4.0):
                for window in (1.0, 2.0, 4.0, None):
                    st = dict(scale=1000.0 * cap, alpha=0.5, max_step=cap, sigma_max=window)
                    out = smp(lambda d, x, sg, st=st: g.guide(d, x, sg, **st), list(range(64)))
                    m = sample_metrics(out, sp.finetune, clf, sp.digit)
                    print(f"{sampler} cfg{scale:g} g{gseed} max_step {cap:g} sigma_max {window}: copies "
                          f"{int(m['copy_flags'].sum())}/64 quality {m['quality']:.3f} adherence {m['adherence']:.3f}",
                          flush=True)
        else:
            t0 = time.time()
            cal = calibrate(g, smp, sp.finetune, seeds=list(range(cfg.probes)))
            secs = time.time() - t0
            st = dict(cal.settings)
            seeds = list(range(cfg.eval_seed0, cfg.eval_seed0 + cfg.n_eval))  # the benchmark's evaluation seeds
            m = sample_metrics(R.evaluate(smp, seeds, lambda d, x, sg, st=st: g.guide(d, x, sg, **st)),
                               sp.finetune, clf, sp.digit)
            ung = cal.rows[0]["model_calls"] if cal.rows else cal.model_calls
            print(f"{sampler} cfg{scale:g} g{gseed}: {st} reached={bool(cal.reached)} "
                  f"mult={cal.model_calls / max(ung, 1):.1f} copies={m['copies']:.3f} q={m['quality']:.3f} "
                  f"({secs:.0f}s)", flush=True)
            for r in cal.rows:
                print("    ", {k: r[k] for k in ("label", "copies", "evaluated", "spoiled", "cost", "confirm",
                                                 "model_calls", "reused", "outcome")}, flush=True)
