"""compare.png: fine-tune images | unguarded samples beside their nearest fine-tune image | guarded ones."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

Z = 4          # pixel zoom
PAD = 4


def _tile(img: torch.Tensor) -> Image.Image:
    a = ((img[0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    return Image.fromarray(a, mode="L").resize((a.shape[1] * Z, a.shape[0] * Z), Image.NEAREST).convert("RGB")


def _panel(title: str, cells: list[list[Image.Image]], flags: list[bool] | None = None, cols: int = 4) -> Image.Image:
    cw = sum(c.width for c in cells[0]) + PAD
    ch = cells[0][0].height + PAD
    rows = (len(cells) + cols - 1) // cols
    im = Image.new("RGB", (cols * cw + PAD, rows * ch + PAD + 14), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.text((PAD, 2), title, fill=(0, 0, 0))
    for k, group in enumerate(cells):
        r, c = divmod(k, cols)
        x0, y0 = PAD + c * cw, 14 + PAD + r * ch
        x = x0
        for t in group:
            im.paste(t, (x, y0))
            x += t.width
        if flags is not None and flags[k]:
            d.rectangle([x0 - 2, y0 - 2, x + 1, y0 + t.height + 1], outline=(220, 30, 30), width=2)
    return im


def compare_png(path: str | Path, finetune: torch.Tensor, unguarded: torch.Tensor, ung_nn: torch.Tensor,
                ung_rep: torch.Tensor, guarded: torch.Tensor, g_nn: torch.Tensor, g_rep: torch.Tensor,
                n_show: int = 16, guarded_title: str = "guarded") -> Path:
    """Samples are shown in seed order (the same seeds in both panels); a red frame marks a replica."""
    left = _panel("fine-tune set (16)", [[_tile(x)] for x in finetune], cols=4)
    mid = _panel("unguarded: sample | nearest", [[_tile(unguarded[i]), _tile(finetune[int(ung_nn[i])])]
                                                  for i in range(n_show)], [bool(ung_rep[i]) for i in range(n_show)])
    right = _panel(f"{guarded_title}: sample | nearest", [[_tile(guarded[i]), _tile(finetune[int(g_nn[i])])]
                                                          for i in range(n_show)], [bool(g_rep[i]) for i in range(n_show)])
    h = max(p.height for p in (left, mid, right))
    out = Image.new("RGB", (left.width + mid.width + right.width + 2 * 8, h), (255, 255, 255))
    x = 0
    for p in (left, mid, right):
        out.paste(p, (x, 0))
        x += p.width + 8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path
