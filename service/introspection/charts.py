"""PNG charts of what layers learned, drawn with PIL (the serving image has no pyplot):
probe score against depth, a 2-D projection coloured by class, a CKA heat map, and a grid
of thumbnails (a unit's top samples)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from service.introspection.pictures import colorize, to_png

WIDTH, HEIGHT = 640, 360
MARGIN = 48
# 10 distinguishable colours (tab10), then they repeat
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def _canvas(width: int = WIDTH, height: int = HEIGHT) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (width, height), (255, 255, 255))
    return img, ImageDraw.Draw(img)


def _png(img: Image.Image) -> bytes:
    return to_png(np.asarray(img))


def probe_chart(
    names: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float],
    baseline: float | None,
    metric: str,
) -> bytes:
    """Probe score (mean +- std over folds) per layer in depth order; the raw input's
    score as a dashed line."""
    img, draw = _canvas()
    left, right, top, bottom = MARGIN, WIDTH - 16, 16, HEIGHT - MARGIN
    values = [*means, *([baseline] if baseline is not None else [])]
    lo = min(0.0, min(values) if values else 0.0)
    hi = max(1.0, max(values) if values else 1.0)

    def y_of(v: float) -> float:
        return bottom - (v - lo) / (hi - lo or 1.0) * (bottom - top)

    n = max(1, len(names))

    def x_of(i: int) -> float:
        return left + (i + 0.5) * (right - left) / n

    draw.line([left, top, left, bottom, right, bottom], fill=(0, 0, 0))
    for tick in np.linspace(lo, hi, 5):
        y = y_of(float(tick))
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((4, y - 6), f"{tick:.2f}", fill=(0, 0, 0))
    if baseline is not None:
        y = y_of(baseline)
        for x in range(left, right, 12):
            draw.line([x, y, min(x + 6, right), y], fill=(200, 40, 40))
        draw.text((right - 120, y - 14), f"raw input {baseline:.3f}", fill=(200, 40, 40))
    points = [(x_of(i), y_of(m)) for i, m in enumerate(means)]
    for i, (m, s) in enumerate(zip(means, stds, strict=True)):
        x = x_of(i)
        draw.line([x, y_of(max(lo, m - s)), x, y_of(min(hi, m + s))], fill=(120, 120, 200))
    if len(points) > 1:
        draw.line(points, fill=PALETTE[0], width=2)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=PALETTE[0])
    step = max(1, math.ceil(len(names) / 12))
    for i in range(0, len(names), step):
        draw.text(
            (x_of(i) - 20, bottom + 6 + (i // step % 2) * 12), str(names[i])[:12], fill=(0, 0, 0)
        )
    draw.text((left + 4, top), f"linear probe {metric} by layer", fill=(0, 0, 0))
    return _png(img)


def scatter(points: np.ndarray, labels: np.ndarray | None, names: Sequence[str] | None) -> bytes:
    """2-D points, coloured by class (or by a continuous target, light to dark)."""
    img, draw = _canvas(WIDTH, WIDTH * 3 // 4)
    w, h = img.size
    left, right, top, bottom = 16, w - 140, 16, h - 16
    pts = np.asarray(points, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    xy = (pts - lo) / span
    xs = left + xy[:, 0] * (right - left)
    ys = bottom - xy[:, 1] * (bottom - top)
    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    if labels is not None and np.issubdtype(np.asarray(labels).dtype, np.integer):
        classes = sorted(set(int(v) for v in labels))
        colours = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}
        for c in classes[:20]:
            name = names[c] if names is not None and 0 <= c < len(names) else str(c)
            y = top + 14 * classes.index(c)
            draw.rectangle([right + 12, y + 2, right + 22, y + 12], fill=colours[c])
            draw.text((right + 26, y), str(name)[:16], fill=(0, 0, 0))
        fills = [colours[int(v)] for v in labels]
    elif labels is not None:
        t = np.asarray(labels, dtype=np.float64)
        t = (t - t.min()) / ((t.max() - t.min()) or 1.0)
        fills = [tuple(int(c) for c in rgb) for rgb in colorize(t, lo=0.0, hi=1.0)]
    else:
        fills = [PALETTE[0]] * len(pts)
    for x, y, fill in zip(xs, ys, fills, strict=True):
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=fill)
    return _png(img)


def heat_map(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> bytes:
    """A matrix in [0, 1] as coloured cells, rows and columns labelled."""
    m = np.asarray(matrix, dtype=np.float64)
    cell = max(4, min(32, 480 // max(1, max(m.shape))))
    label = 96
    img, draw = _canvas(label + cell * m.shape[1] + 8, label + cell * m.shape[0] + 8)
    colours = colorize(m, lo=0.0, hi=1.0)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            x0, y0 = label + j * cell, label + i * cell
            draw.rectangle(
                [x0, y0, x0 + cell - 1, y0 + cell - 1], fill=tuple(int(c) for c in colours[i, j])
            )
    step_r = max(1, math.ceil(12 / cell))
    for i in range(0, len(rows), step_r):
        draw.text((2, label + i * cell), str(rows[i])[:14], fill=(0, 0, 0))
    for j in range(0, len(cols), step_r):
        draw.text((label + j * cell, 2 + (j // step_r % 6) * 14), str(cols[j])[:10], fill=(0, 0, 0))
    return _png(img)


def thumbnails(images: Sequence[np.ndarray], captions: Sequence[str], size: int = 64) -> bytes:
    """Images (H x W [x 1|3], any range) in a grid, each scaled by its own range, with a
    caption under it."""
    n = max(1, len(images))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pad, text = 4, 14
    img, draw = _canvas(cols * (size + pad) + pad, rows * (size + pad + text) + pad)
    for k, (image, caption) in enumerate(zip(images, captions, strict=True)):
        r, c = divmod(k, cols)
        x0, y0 = pad + c * (size + pad), pad + r * (size + pad + text)
        a = np.asarray(image, dtype=np.float64)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        tile = Image.fromarray((a * 255).round().astype(np.uint8), "L" if a.ndim == 2 else "RGB")
        img.paste(tile.convert("RGB").resize((size, size), Image.NEAREST), (x0, y0))
        draw.text((x0, y0 + size + 1), str(caption)[:10], fill=(0, 0, 0))
    return _png(img)
