"""What calibration's natural-range checks see on Euler at CFG 5 that the benchmark's classifier does not
(it reads clamped samples): which checks the calibrated probes fail.

    CPSAMPLE_THREADS=1 .cache/comfyui/venv/bin/python -m benchmarks.lora.spoil > benchmarks/results/lora/spoil_euler.txt

For guard seed 0, Euler at CFG 5 and at CFG 1: calibrates on the 32 probes as the benchmark does, then, for
the chosen setting's probe samples, counts those outside the natural range of each statistic
(``calibration_stats.Reference``: training latents and unguarded samples, widened by the range's own
width on each side) and the near copies, beside the unguarded samples' own values.
"""
from __future__ import annotations

import torch

from cpsample_nodes.core import calibrate
from cpsample_nodes.core.calibration_probes import L2_K
from cpsample_nodes.core.calibration_stats import Reference
from cpsample_nodes.core.metrics import REPLICA_L2_RATIO, calibrated_l2_ratio

from . import pipeline as P
from .comfy_sampling import make_sampler
from .model import NULL, TRIGGER
from .run import Guards, threads

STATS = ("std", "mean", "max |x|", "high-frequency share")


def main() -> None:
    threads()
    cfg = P.FULL
    sp = P.get_split(cfg)
    model = P.get_lora(cfg, sp)
    guard = next(iter(Guards(cfg, sp)))[0]
    for scale in (5.0, 1.0):
        sample = make_sampler(model, TRIGGER, NULL, "euler", scale, cfg.sample_steps)
        cal = calibrate(guard, sample, sp.finetune, seeds=list(range(cfg.probes)))
        base, chosen = cal.unguarded, cal.calibrated
        rb, rc = (calibrated_l2_ratio(x, sp.finetune, L2_K) for x in (base, chosen))  # calibration's own ratio
        ref = Reference.of(torch.cat([sp.finetune, base]), rb[rb >= REPLICA_L2_RATIO])
        s_base, s_chosen = Reference.stats(base), Reference.stats(chosen)
        out = (s_chosen < ref.lo) | (s_chosen > ref.hi)
        n = chosen.shape[0]
        print(f"Euler, CFG {scale:g}, guard seed 0: unguarded copies {int(cal.copied.sum())}/{n}; chosen "
              f"{dict(cal.settings)}; calibration's spoiled share {cal.spoiled_rate:.1%}")
        for j, name in enumerate(STATS):
            print(f"  {name}: outside the natural range {int(out[:, j].sum())}/{n} (range {float(ref.lo[j]):.3f} to "
                  f"{float(ref.hi[j]):.3f}; calibrated {float(s_chosen[:, j].min()):.3f} to "
                  f"{float(s_chosen[:, j].max()):.3f}; unguarded {float(s_base[:, j].min()):.3f} to "
                  f"{float(s_base[:, j].max()):.3f})")
        near = int(((rc >= REPLICA_L2_RATIO) & (rc < ref.near)).sum())
        print(f"  near copies (ratio between 1/3 and {ref.near:.3f}): {near}/{n}")


if __name__ == "__main__":
    main()
