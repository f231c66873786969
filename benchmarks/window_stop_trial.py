"""One-off trial (design log, "Stop a window at its cheapest gate"): calibration that measures a window's
gates gentlest first and stops at the first gate, past a passing one, that does not beat the cheapest
passing gate so far (its cost has turned upward), instead of measuring every gate of the window; on the
prompted LoRA benchmark or through benchmarks/calibration.py.

    PYTHONPATH=. CPSAMPLE_THREADS=1 .cache/comfyui/venv/bin/python benchmarks/window_stop_trial.py lora \
        euler:1,euler_a:1,dpmpp_2m:1
    PYTHONPATH=. CPSAMPLE_THREADS=1 .venv/bin/python benchmarks/window_stop_trial.py calibration \
        --bench digits-full --guard-seeds 0,1,2 --samplers euler,euler_a --samples 500 --only-calibrated --json OUT
"""
import os
import runpy
import sys
import time

import cpsample_nodes.core.calibration_search as S
from cpsample_nodes.core.calibration_search import Row


def try_window(self, window, first):
    strongest = Row(window[-1], order=first + len(window) - 1)
    self.rows.append(strongest)
    self.evaluate(strongest)
    if strongest.n_copies() > self.allowed:
        return
    lead = None  # the cheapest passing gate of this window so far
    for i, settings in enumerate(window[:-1]):
        row = Row(settings, order=first + i)
        self.rows.append(row)
        self.evaluate(row)
        passes = len(row.copies) == len(self.seeds) and row.n_copies() <= self.allowed
        if passes and (lead is None or row.beats(lead)):
            lead = row
            self.consider(row)
        elif lead is not None:
            break  # a stronger gate that does not beat the gentler one: the cost has turned upward
    self.consider(strongest)
    self.settle()


S.Search.try_window = try_window
print("trial: window stops at its cheapest gate", flush=True)

if sys.argv[1] == "calibration":
    sys.path.insert(0, os.path.abspath("benchmarks"))
    sys.argv = ["benchmarks/calibration.py"] + sys.argv[2:]
    runpy.run_path("benchmarks/calibration.py", run_name="__main__")
    raise SystemExit

from benchmarks.lora import pipeline as P  # noqa: E402
from benchmarks.lora import run as R  # noqa: E402
from benchmarks.lora.comfy_sampling import Counter, make_sampler  # noqa: E402
from benchmarks.lora.metrics import sample_metrics  # noqa: E402
from benchmarks.lora.model import NULL, TRIGGER  # noqa: E402
from cpsample_nodes.core import calibrate  # noqa: E402

R.threads()
cfg = P.FULL
sp = P.get_split(cfg)
clf = P.get_classifier(cfg, sp)
model = P.get_lora(cfg, sp)
guards = list(R.Guards(cfg, sp))
seeds = list(range(cfg.eval_seed0, cfg.eval_seed0 + cfg.n_eval))
for sampler, scale in [(p.split(":")[0], float(p.split(":")[1])) for p in sys.argv[2].split(",")]:
    for gseed, (guard, _) in zip(cfg.guard_seeds, guards):
        smp = make_sampler(model, TRIGGER, NULL, sampler, scale, cfg.sample_steps, Counter(), None, None)
        t0 = time.time()
        cal = calibrate(guard, smp, sp.finetune, seeds=list(range(cfg.probes)))
        cs = time.time() - t0
        st = dict(cal.settings)
        m = sample_metrics(R.evaluate(smp, seeds, lambda d, x, sg, st=st, g=guard: g.guide(d, x, sg, **st)),
                           sp.finetune, clf, sp.digit)
        ung = cal.rows[0]["model_calls"] if cal.rows else cal.model_calls
        print(f"{sampler} cfg{scale:g} g{gseed}: {st} reached={bool(cal.reached)} "
              f"mult={cal.model_calls / max(ung, 1):.1f} copies={m['copies']:.3f} q={m['quality']:.3f} "
              f"spoiled={cal.spoiled_rate:.3f} ({cs:.0f}s)", flush=True)
        for r in cal.rows:
            print("    ", {k: r[k] for k in ("label", "copies", "evaluated", "spoiled", "cost", "confirm",
                                             "model_calls", "reused", "outcome")}, flush=True)
