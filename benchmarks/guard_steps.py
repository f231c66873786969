"""How many steps the calibration table's mixture guards train on this machine, and a weight checksum.

The stop check ends training at the first multiple of 50 steps that passes, so a guard of a given seed
is another guard where the float kernels round differently (docs/protection.md, "Another machine, other
guards"). Run it under different kernel settings to see that on one machine:

    CPSAMPLE_THREADS=1 python benchmarks/guard_steps.py --bench mixture-vp --guard-seeds 1,3
    ATEN_CPU_CAPABILITY=default CPSAMPLE_THREADS=1 python benchmarks/guard_steps.py --bench mixture-vp --guard-seeds 1
    ONEDNN_MAX_CPU_ISA=SSE41 CPSAMPLE_THREADS=1 python benchmarks/guard_steps.py --bench mixture-vp --guard-seeds 1
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import machine  # noqa: E402
from benchmarks.calibration import MixtureBench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", choices=["mixture-vp", "mixture-flow"], default="mixture-vp")
    ap.add_argument("--guard-seeds", default="0,1,2")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CPSAMPLE_THREADS", "2")))  # it decides which guard trains
    kernels = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    print(f"machine: {machine.describe()}; kernel settings: {kernels or 'none'}", flush=True)
    bench = MixtureBench(args.bench.split("-")[1], 10, 50)  # the data only: nothing is sampled
    for seed in [int(s) for s in args.guard_seeds.split(",")]:
        t0 = time.time()
        guard = bench.guard(seed)
        checksum = sum(float(p.double().abs().sum()) for p in guard.net.parameters())
        print(f"{bench.name} guard seed {seed}: {guard.info['steps']} steps (memorised {guard.info['memorised']}), "
              f"sum |w| {checksum:.6f}, {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
