"""Does a guard still gate on a near-copy generated at another size or aspect than it trained at?

A fine-tune that copies a training image at another canvas size does not return the training latent:
it returns the picture cropped, extended, rescaled or letterboxed into the new canvas. This trains the
product's guard (``train_guard`` defaults, vp space) on smooth random latents, once on one square size
(a set of 1024×1024 images) and once on three aspect buckets, then reads each training latent brought
to another canvas in each of these ways, at σ_min (the guard reads the model's x0 prediction, which
near the end of sampling is the copy itself), and counts how often the gate opens: the most confident
head's p outside [α, 1 − α] at the default α and at the guard's own ``auto_alpha``. Novel latents of
the same kind are the control (the gate should stay shut on them); "recognised" also asks every head to name the image's
random label, which on a novel latent happens by chance (1 in 2^heads).

Sizes are latents (pixels / 8), scaled down a further 8× to keep CPU time short: 16×16 stands for
1024×1024 px, 19×13 for 832×1216 (h×w), 13×19 for 1216×832.

    CPSAMPLE_THREADS=1 .venv/bin/python benchmarks/aspect_copies.py > benchmarks/results/aspect/aspect_copies.txt
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import machine  # noqa: E402
from cpsample_nodes.core import NoiseSpace, train_guard  # noqa: E402
from cpsample_nodes.core.guard import DEFAULT_ALPHA, most_confident  # noqa: E402
from cpsample_nodes.core.latent_groups import cover_resize  # noqa: E402
from cpsample_nodes.core.training import head_labels  # noqa: E402

SQUARE = (16, 16)      # 1024x1024 px
PORTRAIT = (19, 13)    # 832x1216 px (h, w)
LANDSCAPE = (13, 19)   # 1216x832 px


def smooth(n: int, hw: tuple[int, int], seed: int, channels: int = 4) -> torch.Tensor:
    """Smooth random fields standardised per latent (as benchmarks/training_cost.py makes them)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, channels, max(hw[0] // 4, 2), max(hw[1] // 4, 2), generator=g)
    x = F.interpolate(coarse, size=hw, mode="bicubic", align_corners=False)
    x = x + 0.1 * torch.randn(n, channels, *hw, generator=g)
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    return x / x.std(dim=(1, 2, 3), keepdim=True)


def views(x: torch.Tensor, target: tuple[int, int], seed: int) -> dict[str, torch.Tensor]:
    """Latents [N, C, h, w] brought to a target canvas (h, w) the ways a copying model might."""
    th, tw = target
    h, w = x.shape[-2:]
    novel = smooth(x.shape[0], (max(th, h), max(tw, w)), seed)  # what the model paints outside the copy
    out = {"cover (scaled to cover, centre-cropped)": cover_resize(x, th, tw),
           "stretched (aspect not kept)": F.interpolate(x, size=target, mode="bilinear", align_corners=False)}
    # the copy at its own scale, cropped where the canvas is smaller and extended with new content where larger
    canvas = novel[..., :th, :tw].clone()
    ch, cw = min(h, th), min(w, tw)
    top, left = (h - ch) // 2, (w - cw) // 2
    ptop, pleft = (th - ch) // 2, (tw - cw) // 2
    canvas[..., ptop:ptop + ch, pleft:pleft + cw] = x[..., top:top + ch, left:left + cw]
    out["same scale, cropped and extended with new content"] = canvas
    # letterboxed: scaled to fit inside, bars of the latents' mean (flat bars)
    scale = min(th / h, tw / w)
    fh, fw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(x, size=(fh, fw), mode="bilinear", align_corners=False, antialias=True)
    box = torch.zeros(x.shape[0], x.shape[1], th, tw)
    box[..., (th - fh) // 2:(th - fh) // 2 + fh, (tw - fw) // 2:(tw - fw) // 2 + fw] = small
    out["letterboxed (fit inside, flat bars)"] = box
    return out


@torch.no_grad()
def gate_share(guard, x: torch.Tensor, alpha: float, labels: torch.Tensor | None = None) -> float:
    """Share of latents on which the gate opens at σ_min (p of the most confident head outside [α, 1−α]);
    with ``labels`` [N, heads], only those where also every head names its training label: the guard
    recognises the image (chance: 1 in 2^heads)."""
    sigma = torch.full((x.shape[0],), float(guard.space.sigma_min))
    logits = guard.head_logits(x, sigma)
    p = torch.sigmoid(most_confident(logits))
    hit = (p < alpha) | (p > 1 - alpha)
    if labels is not None:
        hit = hit & ((logits > 0) == (labels > 0.5)).all(1)
    return float(hit.float().mean())


def row(guard, source: str, target: str, view: str, x: torch.Tensor, labels: torch.Tensor) -> dict:
    auto = guard.auto_alpha()
    return dict(source=source, target=target, view=view, gate_default=gate_share(guard, x, DEFAULT_ALPHA),
                gate_auto=gate_share(guard, x, auto), recognised_default=gate_share(guard, x, DEFAULT_ALPHA, labels),
                recognised_auto=gate_share(guard, x, auto, labels))


def measure(guard, sets: dict[str, torch.Tensor], targets: list[tuple[int, int]], seed: int) -> list[dict]:
    labels = head_labels(sum(x.shape[0] for x in sets.values()), seed, guard.heads).view(-1, guard.heads)
    rows, at = [], 0
    for name, x in sets.items():
        y_true = labels[at:at + x.shape[0]]
        at += x.shape[0]
        rows.append(row(guard, name, f"{x.shape[-2]}x{x.shape[-1]}", "exact (the training latent)", x, y_true))
        for t in targets:
            if tuple(x.shape[-2:]) != t:
                rows += [row(guard, name, f"{t[0]}x{t[1]}", view, y, y_true) for view, y in views(x, t, seed).items()]
    for t in targets:  # novel latents read against random labels: chance for "recognised"
        novel = smooth(64, t, seed + 99)
        rows.append(row(guard, "novel (control)", f"{t[0]}x{t[1]}", "-", novel,
                        head_labels(64, seed + 5, guard.heads).view(-1, guard.heads)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12, help="training latents per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CPSAMPLE_THREADS", "1")))
    space = NoiseSpace.vp()
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    print(f"# near-copies at another canvas  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"# machine: {machine.describe()}; {torch.get_num_threads()} threads; shared machine: {uptime()}")
    print(f"# guard: train_guard defaults (vp), seed {a.seed}; gate read at sigma_min {space.sigma_min:.4f} on the "
          f"latent itself; default alpha {DEFAULT_ALPHA}, auto alpha from the guard's margin")
    results = {}
    square = smooth(a.n, SQUARE, a.seed)
    buckets = {"portrait 19x13": smooth(a.n, PORTRAIT, a.seed + 1), "square 16x16": smooth(a.n, SQUARE, a.seed + 2),
               "landscape 13x19": smooth(a.n, LANDSCAPE, a.seed + 3)}
    for label, latents, sets in (("one square size (16x16)", square, {"square 16x16": square}),
                                 ("three aspect buckets", list(buckets.values()), buckets)):
        t0 = time.monotonic()
        guard = train_guard(latents, space, seed=a.seed)
        print(f"\n## guard trained on {label}: {guard.info['steps']} steps, {time.monotonic() - t0:.0f} s, memorised "
              f"{guard.info['memorised']}, auto alpha {guard.auto_alpha():.2e}")
        rows = measure(guard, sets, [SQUARE, PORTRAIT, LANDSCAPE], a.seed)
        print(f"{'training latents':18s} {'canvas':7s} {'view':52s} gate open (alpha {DEFAULT_ALPHA} | auto); "
              f"recognised: open and every head names the image's label (alpha {DEFAULT_ALPHA} | auto)")
        for r in rows:
            print(f"{r['source']:18s} {r['target']:7s} {r['view']:52s} {r['gate_default']:5.0%} | "
                  f"{r['gate_auto']:5.0%};"
                  f"  {r['recognised_default']:5.0%} | {r['recognised_auto']:5.0%}")
        results[label] = dict(steps=guard.info["steps"], memorised=guard.info["memorised"], rows=rows)
    print(f"\n# uptime at end: {uptime()}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
