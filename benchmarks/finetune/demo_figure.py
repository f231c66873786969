"""demo/out/compare.png: the same fresh seeds unguarded and with the calibrated guard, each beside its
nearest fine-tune image, under a plain title, a legend, and the product's calibration chart."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cpsample_nodes.core import evidence

ZOOM = 4           # pixel zoom of each 16×16 digit
PAD = 6
COPY = (220, 40, 40)
BG, FG, DIM = (255, 255, 255), (0, 0, 0), (90, 90, 90)


def ascii_text(text: str) -> str:
    """Pillow's built-in font has no Greek letters (as the product's own pictures: evidence.py)."""
    return text.replace("α", "alpha").replace("σ", "sigma").replace("≤", "<=")


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Digits [N, 1, H, W] in [-1, 1] → IMAGE [N, H, W, 3] in [0, 1] (what the product's pictures take)."""
    return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous()


def _tile(img: torch.Tensor) -> Image.Image:
    a = ((img[0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    return Image.fromarray(a, mode="L").resize((a.shape[1] * ZOOM, a.shape[0] * ZOOM), Image.NEAREST).convert("RGB")


def _strip(d: ImageDraw.ImageDraw, canvas: Image.Image, y: int, label: str, images: list[torch.Tensor],
           copies: list[bool] | None, label_w: int) -> int:
    """One row of tiles after its label; a red frame on each copy. Returns the next row's y."""
    d.text((PAD, y + 20), label, fill=FG, font=evidence._font(13))
    x = label_w
    for k, img in enumerate(images):
        tile = _tile(img)
        canvas.paste(tile, (x, y))
        if copies is not None and copies[k]:
            d.rectangle([x - 3, y - 3, x + tile.width + 2, y + tile.height + 2], outline=COPY, width=3)
        x += tile.width + PAD
    return y + images[0].shape[-1] * ZOOM + 2 * PAD


def compare_png(path: str | Path, *, unguarded: torch.Tensor, unguarded_copy: torch.Tensor, calibrated: torch.Tensor,
                calibrated_copy: torch.Tensor, nearest: torch.Tensor, finetune: torch.Tensor, chosen: str,
                summary: list[str], cal, n_show: int = 12) -> Path:
    """Rows: unguarded samples, the same seeds calibrated, the fine-tune image nearest each unguarded
    sample; then ``summary`` lines and the calibration's chart (copy rate of every setting it tried)."""
    label_w = 190
    tile = finetune.shape[-1] * ZOOM
    width = max(label_w + n_show * (tile + PAD) + PAD, evidence.WIDTH)
    title_f, text_f = evidence._font(16), evidence._font(12)
    rows_h = 3 * (tile + 2 * PAD)
    head_h, legend_h = 50, 18 * (len(summary) + 2) + 8
    chart = evidence.chart(cal.rows, cal.allowed / cal.probes if cal.probes else None,
                           f"How calibration chose: copies among its {cal.probes} probe seeds per setting tried")
    canvas = Image.new("RGB", (width, head_h + rows_h + legend_h + chart.height), BG)
    d = ImageDraw.Draw(canvas)
    d.text((PAD, 6), "CPSample demo: a fine-tune that copies its training digits, before and after protection",
           fill=FG, font=title_f)
    d.text((PAD, 28), ascii_text(f"The same {n_show} seeds in each column. Calibration chose: {chosen}."), fill=DIM, font=text_f)
    y = head_h
    nearest_imgs = [finetune[int(j)] for j in nearest[:n_show]]
    y = _strip(d, canvas, y, "no protection", list(unguarded[:n_show]), [bool(c) for c in unguarded_copy[:n_show]],
               label_w)
    y = _strip(d, canvas, y, "calibrated guard", list(calibrated[:n_show]),
               [bool(c) for c in calibrated_copy[:n_show]], label_w)
    y = _strip(d, canvas, y, "nearest training image", nearest_imgs, None, label_w)
    d.rectangle([PAD, y + 4, PAD + 12, y + 16], outline=COPY, width=3)
    d.text((PAD + 20, y + 4), "red frame: a near-copy of a training image (Replication Check's rule)",
           fill=FG, font=text_f)
    for k, line in enumerate(summary):
        d.text((PAD, y + 22 + 18 * k), ascii_text(line), fill=FG, font=text_f)
    canvas.paste(chart, ((width - chart.width) // 2, head_h + rows_h + legend_h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def evidence_png(path: str | Path, cal, finetune: torch.Tensor, sampler: str) -> Path:
    """The picture Calibrate Guard shows a user, for the demo's calibration (chart, then each copying
    probe: unguarded | calibrated | nearest training image)."""
    copies = evidence.copied_probes(cal, finetune)
    names = [f"training digit {i}" for i in range(finetune.shape[0])]
    pic = evidence.evidence_picture(cal, copies, to_rgb, to_rgb(finetune), names, sampler)
    arr = (pic[0].numpy() * 255 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)
    return path
