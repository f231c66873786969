"""Guard guide/probability time with 1 vs 2 torch threads (why the cost benchmarks use --threads 1
on a busy machine). Each thread count runs in a fresh process; the load average is printed.

    .venv/bin/python benchmarks/guard_threads.py
"""
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(threads: int) -> None:
    import torch
    sys.path.insert(0, str(ROOT))
    from cpsample_nodes.core import Guard, GuardConfig, GuardNet, NoiseSpace
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = Guard(GuardNet(GuardConfig.for_latents((4, 64, 64))).eval().requires_grad_(False), NoiseSpace.vp())
    d = torch.randn(2, 4, 64, 64)
    x = d + torch.randn_like(d)
    s = torch.ones(2)

    def med(f, k=5):
        f()
        r = []
        for _ in range(k):
            t0 = time.perf_counter()
            f()
            r.append(time.perf_counter() - t0)
        return statistics.median(r) * 1000

    with torch.inference_mode():
        gm = med(lambda: g.guide(d, x, s, scale=1.0, alpha=0.5))
        pm = med(lambda: g.probability(x, s))
    print(f"torch {torch.__version__}, {threads} thread(s): guide 2x4x64x64 median {gm:.1f} ms, "
          f"probability {pm:.1f} ms  (load {' '.join(f'{v:.2f}' for v in os.getloadavg())})", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        worker(int(sys.argv[1]))
    else:
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {os.cpu_count()} logical CPUs")
        for t in (1, 2, 1, 2):
            subprocess.run([sys.executable, __file__, str(t)], check=True)
