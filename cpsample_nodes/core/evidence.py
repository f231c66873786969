"""A calibration's evidence, for both hosts: the picture (the copy rate of each setting tried against the
gate α, one line per σ window and scale, then one row per probe seed that copied: unguarded | calibrated |
nearest training image), the copying probes and one-line summaries. Host-free: hosts pass a decoder."""
from __future__ import annotations

import math

import numpy as np
import torch

from .guard import DEFAULT_SCALE  # a series at another scale says so in its name

WIDTH = 640
CELL = 192          # side of each image cell
MAX_ROWS = 8        # copy seeds shown
BG, FG, DIM = (24, 24, 24), (235, 235, 235), (150, 150, 150)


# Pillow's built-in font has no Greek letters: the picture's text is ASCII (a = alpha).
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


SERIES = [(120, 170, 230), (200, 130, 230), (230, 200, 90), (100, 210, 210), (230, 130, 150),
          (160, 220, 120), (240, 240, 240), (170, 140, 110)]
UNGUARDED, TARGET, CHOSEN, FAILED = (220, 90, 80), (90, 200, 110), (90, 200, 110), (230, 160, 60)


def _series(settings: dict) -> tuple:
    """A chart line: one σ window at one scale."""
    return settings.get("sigma_max"), float(settings.get("scale", DEFAULT_SCALE))


def _series_name(series: tuple) -> str:
    sigma_max, scale = series
    name = "all steps" if sigma_max is None else f"sigma <= {sigma_max:.3g}"
    return name if scale == DEFAULT_SCALE else f"{name}, scale {scale:g}"


def _failed(row: dict) -> bool:
    """Passed on the probes but not again on the confirmation seeds."""
    return str(row.get("outcome", "")).startswith("failed confirmation")


def _legend(names: list[str], extra: str | None, width: int, left: int, font) -> list[list[tuple[int, int, str]]]:
    """Legend entries laid out in lines that fit the width: [(x, index, name)] per line; ``extra``
    (a note without a swatch) is returned as an entry with index −1."""
    from PIL import Image, ImageDraw

    d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[list[tuple[int, int, str]]] = [[]]
    x = left
    for i, name in list(enumerate(names)) + ([(-1, extra)] if extra else []):
        w = (0 if i < 0 else 14) + int(d.textlength(name, font=font)) + 10
        if lines[-1] and x + w > width - 8:
            lines.append([])
            x = left
        lines[-1].append((x, i, name))
        x += w
    return lines


def _dashed(d, y: float, x0: float, x1: float, colour) -> None:
    for x in range(int(x0), int(x1), 8):
        d.line([(x, y), (min(x + 4, x1), y)], fill=colour, width=2)


def chart(rows: list[dict], target_rate: float | None, title: str, width: int = WIDTH):
    """PIL image: copy rate against α, one line per σ window (and scale), the unguarded rate and the target."""
    from PIL import Image, ImageDraw

    base = next((r for r in rows if not r.get("settings")), None)
    tried = [r for r in rows if r.get("settings")]
    alphas = sorted({float(r["settings"].get("alpha", 0.0)) for r in tried}) or [0.0]
    windows: list = []
    for r in tried:
        if _series(r["settings"]) not in windows:
            windows.append(_series(r["settings"]))
    windows.sort(key=lambda w: (w[1], math.inf if w[0] is None else float(w[0])))
    rates = [float(r.get("copy_rate") or 0.0) for r in rows] + [target_rate or 0.0]
    top_rate = next((t for t in (0.05, 0.1, 0.2, 0.4, 0.6, 0.8) if max(rates) * 1.1 <= t), 1.0)
    left, top, right = 48, 50, 110
    f, small = _font(14), _font(11)
    names = [_series_name(w) for w in windows]
    legend = _legend(names, "x: failed on new seeds" if any(_failed(r) for r in tried) else None,
                     width, left, small)
    bottom = 46 + 14 * len(legend)
    h = 240 + bottom
    img = Image.new("RGB", (width, h), BG)
    d = ImageDraw.Draw(img)
    d.text((8, 6), title, fill=FG, font=f)
    d.text((8, 26), "copies among the probes against the gate alpha, one line per sigma window and scale; "
                    "hollow: abandoned early", fill=DIM, font=small)
    pw, ph = width - left - right, h - top - bottom
    y0 = top + ph

    def ypos(rate: float) -> float:
        return y0 - min(1.0, rate / top_rate) * ph

    def xpos(alpha: float) -> float:
        return left + (alphas.index(alpha) + 0.5) * pw / len(alphas)

    for k in range(5):
        rate = top_rate * k / 4
        d.line([(left, ypos(rate)), (left + pw, ypos(rate))], fill=(55, 55, 55))
        d.text((4, ypos(rate) - 6), f"{rate:.0%}", fill=DIM, font=small)
    for a in alphas:
        d.text((xpos(a) - 12, y0 + 6), f"{a:g}", fill=DIM, font=small)
    d.text((left + pw / 2 - 20, y0 + 22), "alpha (gate)", fill=DIM, font=small)
    if base is not None:
        rate = float(base.get("copy_rate") or 0.0)
        _dashed(d, ypos(rate), left, left + pw, UNGUARDED)
        d.text((left + pw + 6, ypos(rate) - 7), f"unguarded {rate:.0%}", fill=UNGUARDED, font=small)
    if target_rate is not None:
        _dashed(d, ypos(target_rate), left, left + pw, TARGET)
        d.text((left + pw + 6, ypos(target_rate) - 7), f"target {target_rate:.0%}", fill=TARGET, font=small)
    for w_i, w in enumerate(windows):
        col = SERIES[w_i % len(SERIES)]
        pts = sorted(((xpos(float(r["settings"].get("alpha", 0.0))), ypos(float(r.get("copy_rate") or 0.0)), r)
                      for r in tried if _series(r["settings"]) == w), key=lambda p: p[0])
        if len(pts) > 1:
            d.line([(x, y) for x, y, _ in pts], fill=col, width=2)
        for x, y, r in pts:
            outcome = str(r.get("outcome", ""))
            if _failed(r):
                d.line([(x - 5, y - 5), (x + 5, y + 5)], fill=FAILED, width=2)
                d.line([(x - 5, y + 5), (x + 5, y - 5)], fill=FAILED, width=2)
            elif r.get("complete", True):
                d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=col)
            else:
                d.ellipse([x - 4, y - 4, x + 4, y + 4], outline=col, width=2)
            if outcome == "chosen":
                d.ellipse([x - 9, y - 9, x + 9, y + 9], outline=CHOSEN, width=2)
                d.text((x - 20, y - 26), "chosen", fill=CHOSEN, font=small)
    for line_i, line in enumerate(legend):
        y = y0 + 40 + 14 * line_i
        for x, i, name in line:
            if i < 0:
                d.text((x, y - 2), name, fill=FAILED, font=small)
                continue
            d.rectangle([x, y, x + 10, y + 10], fill=SERIES[i % len(SERIES)])
            d.text((x + 14, y - 2), name, fill=DIM, font=small)
    return img


def _cell(image: torch.Tensor):
    from PIL import Image

    arr = (image[..., :3].detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr, "RGB")
    scale = CELL / max(im.size)
    return im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.NEAREST
                     if scale >= 1 else Image.LANCZOS)


def pairs(unguarded: torch.Tensor, calibrated: torch.Tensor | None, nearest: torch.Tensor,
          captions: list[str], width: int = WIDTH):
    """PIL image: per row unguarded | calibrated | nearest training image (IMAGE tensors [n, H, W, 3])."""
    from PIL import Image, ImageDraw

    n = unguarded.shape[0]
    cap, head = 18, 20
    img = Image.new("RGB", (width, head + n * (CELL + cap)), BG)
    d = ImageDraw.Draw(img)
    small = _font(12)
    gap = (width - 3 * CELL) // 4
    for c, name in enumerate(("unguarded", "calibrated", "nearest training image")):
        d.text((gap + c * (CELL + gap), 3), name, fill=FG, font=small)
    for i in range(n):
        y = head + i * (CELL + cap)
        cells = [unguarded[i], calibrated[i] if calibrated is not None else None, nearest[i]]
        for c, im in enumerate(cells):
            if im is not None:
                img.paste(_cell(im), (gap + c * (CELL + gap), y))
        d.text((gap, y + CELL + 2), captions[i], fill=(255, 230, 120), font=small)
    return img


def picture(rows: list[dict], target_rate: float | None, title: str, unguarded: torch.Tensor | None = None,
            calibrated: torch.Tensor | None = None, nearest: torch.Tensor | None = None,
            captions: list[str] | None = None, note: str | None = None) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: the chart above the copy rows (or above ``note`` when no probe copied)."""
    from PIL import Image, ImageDraw

    parts = [chart(rows, target_rate, title)]
    if unguarded is not None and unguarded.shape[0]:
        parts.append(pairs(unguarded[:MAX_ROWS], None if calibrated is None else calibrated[:MAX_ROWS],
                           nearest[:MAX_ROWS], (captions or [""] * unguarded.shape[0])[:MAX_ROWS]))
    if note:
        extra = Image.new("RGB", (WIDTH, 28), BG)
        ImageDraw.Draw(extra).text((8, 6), note, fill=FG, font=_font(13))
        parts.append(extra)
    canvas = Image.new("RGB", (WIDTH, sum(p.size[1] for p in parts)), BG)
    y = 0
    for p in parts:
        canvas.paste(p, (0, y))
        y += p.size[1]
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]


def copied_probes(cal, latents: torch.Tensor) -> list[tuple[int, int, int, str]]:
    """Per probe that copied without the guard: (probe index, seed, nearest training image, and what
    the chosen setting made of it: "no copy" / "still a copy" / "" when nothing was calibrated)."""
    from .metrics import nearest_neighbors

    idx = cal.copied.nonzero().flatten()
    if idx.numel() == 0:
        return []
    nearest = nearest_neighbors(cal.unguarded[idx], latents.float().cpu(), 1)[1][:, 0]
    out = []
    for k, i in enumerate(idx.tolist()):
        after = "" if cal.calibrated_copied is None else (
            "still a copy" if bool(cal.calibrated_copied[i]) else "no copy")
        out.append((i, int(cal.seeds[i]), int(nearest[k]), after))
    return out


def copies_text(copies: list[tuple[int, int, int, str]], names: list[str]) -> str:
    """One line per copying probe: KSampler with that seed and batch size 1 makes the same image."""
    lines = ["probe seeds that copied (seed: nearest training image -> with the calibration):"]
    lines += [f"  {seed}: {names[j]} -> {after or 'not calibrated'}" for _, seed, j, after in copies]
    return "\n".join(lines)


def evidence_picture(cal, copies: list[tuple[int, int, int, str]], decode, train_images: torch.Tensor,
                     names: list[str], sampler: str) -> torch.Tensor:
    """The node's IMAGE: the chart, then unguarded | calibrated | nearest training image per copying probe."""
    n = cal.probes
    title = f"CPSample calibration: {n} probes, {sampler}"
    if not copies:
        return picture(cal.rows, None, title, note=f"no copies among {n} probes: nothing to calibrate")
    shown = copies[:MAX_ROWS]
    idx = torch.tensor([i for i, _, _, _ in shown])
    nearest = torch.tensor([j for _, _, j, _ in shown])
    target = cal.allowed / n
    calibrated = None if cal.calibrated is None else decode(cal.calibrated[idx])
    captions = [f"seed {seed}: copies {names[j]} -> {after}" for _, seed, j, after in shown]
    note = f"{len(shown)} of {len(copies)} probe seeds that copied shown" if len(copies) > len(shown) else None
    return picture(cal.rows, target, title, decode(cal.unguarded[idx]), calibrated, train_images[nearest],
                   captions, note=note)


def calibration_summary(cal) -> str:
    """One line for the node: what was chosen and what it did to the copies."""
    from .calibration import describe

    n = cal.probes
    if cal.no_copies:
        return f"no copies among {n} probes: the gentlest setting is kept ({describe(cal.settings)})"
    before, after = round(cal.unguarded_rate * n), round(cal.calibrated_rate * n)
    missed = "" if cal.reached else " (target missed: the best setting found)"
    weak = "; a weak guard for this model: one trained with another seed may do better" if cal.weak_guard else ""
    return f"calibrated: {describe(cal.settings)}; copies {before}/{n} -> {after}/{n}{missed}{weak}"


NOT_THE_TRAINING_SET = ("note: these are not exactly the latents the guard was trained on (another folder "
                        "content, size or VAE): copies are counted against this folder")


def report(cal, latents: torch.Tensor, names: list[str], header: str, footer: str, same_set: bool
           ) -> tuple[str, list[tuple[int, int, int, str]]]:
    """A host's calibration report: its header, the core's table, the probe seeds that copied and its
    footer. → (text, the copying probes as copied_probes gives them)."""
    lines = [header] + ([] if same_set else [NOT_THE_TRAINING_SET]) + [cal.report()]
    copies = copied_probes(cal, latents)
    if copies:
        lines.append(copies_text(copies, names))
    return "\n".join(lines + [footer]), copies
