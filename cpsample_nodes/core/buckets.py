"""Aspect-ratio buckets: a few image sizes of about one area, as LoRA trainers use (kohya's buckets).

A set of images of many shapes trains at its own aspects without a square crop: each image goes to the
bucket whose aspect is nearest its own and is scaled to cover it and centre-cropped (a sliver at most).
Sides are multiples of ``step`` pixels (64 from 512 px up, as kohya's ``bucket_reso_steps``; smaller
sets step by an eighth of the side, at least the VAE's multiple) and no bucket has more area than
side × side, so 1024 gives 832×1216, 896×1152, 1024×1024 …
"""
from __future__ import annotations

import math
from typing import Iterable

MAX_ASPECT = 4.0  # longer side / shorter side at most: kohya's 256..2048 range at 1024 px allows about this
STEP = 64  # pixels, from 512 px up


def bucket_step(side: int, multiple: int) -> int:
    """The pixel step of bucket sides: 64 from 512 px, else side / 8, never below ``multiple``."""
    step = min(STEP, (side // 8) // multiple * multiple)
    return max(multiple, step)


def bucket_side(sizes: Iterable[tuple[int, int]], side: int, multiple: int) -> int:
    """The side of the bucket area: ``side`` when given, else √ of the smallest image's area (so no
    image is scaled up to fill its bucket by much); rounded down to the step."""
    sizes = list(sizes)
    if side <= 0:
        side = int(math.isqrt(min(w * h for w, h in sizes)))
    step = bucket_step(side, multiple)
    side = side // step * step
    if side < multiple:
        raise ValueError(f"bucket side {side} px is below the VAE's multiple of {multiple} pixels")
    return side


def bucket_sizes(side: int, multiple: int) -> list[tuple[int, int]]:
    """Every (height, width) bucket for an area of side × side: for each width on the step grid, the
    tallest height on the grid within the area, aspect at most ``MAX_ASPECT``; sorted."""
    step = bucket_step(side, multiple)
    area = side * side
    found = set()
    w = step
    while w <= side * MAX_ASPECT:
        h = min(area // w // step * step, int(side * MAX_ASPECT) // step * step)
        if h >= step and max(w, h) <= MAX_ASPECT * min(w, h):
            found.add((h, w))
        w += step
    return sorted(found)


def nearest_bucket(size: tuple[int, int], table: list[tuple[int, int]]) -> tuple[int, int]:
    """The (height, width) bucket whose aspect is nearest the (width, height) image's (in log ratio);
    of equally near ones the largest."""
    w, h = size
    aspect = math.log(w / h)
    return min(table, key=lambda b: (round(abs(math.log(b[1] / b[0]) - aspect), 9), -b[0] * b[1]))
