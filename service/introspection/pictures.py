"""PNG pictures of activations and attributions, drawn with numpy + PIL (no pyplot).

Fixed sizes (pixels):

* feature-map grid (4-D layer output, one instance): ``cols = ceil(sqrt(channels))``,
  ``rows = ceil(channels / cols)``; each map is scaled (nearest) to ``CELL x CELL`` (64) with a
  ``GAP`` (2) border: width ``cols * 66 + 2``, height ``rows * 66 + 2``. One colour scale for
  the whole layer (min..max of that instance), so weak maps look dark.
* heat strip (a vector per instance, (batch, units)): one row ``STRIP_HEIGHT`` (32) tall per
  instance; each unit ``max(1, 512 // units)`` wide, so width ``units * that``. More than
  ``MAX_CELLS`` (4,096) units are averaged into that many bins first.
* sequence heat map (a 3-D (batch, time, units) layer, one instance: an RNN's hidden states,
  an embedding, a Conv1D): time down, units across; each step ``max(1, 256 // steps)`` tall,
  each unit ``max(1, 512 // units)`` wide (more than ``MAX_CELLS`` steps or units are
  averaged into bins). Any other rank (5-D and up) is drawn the same way with every axis
  but the last folded into "time".
* Grad-CAM overlay: ``OVERLAY x OVERLAY`` (224), the input in grey with the heat map blended in
  proportion to its value.
* attribution bars (tabular): ``BAR_WIDTH`` (480) wide, ``BAR_ROW`` (16) per feature.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

CELL = 64
GAP = 2
STRIP_HEIGHT = 32
STRIP_WIDTH = 512
SEQUENCE_HEIGHT = 256
MAX_CELLS = 4096
OVERLAY = 224
BAR_WIDTH = 480
BAR_ROW = 16

# viridis at 0, .25, .5, .75, 1 (sequential); used for activations
_VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
# black-red-yellow-white ("hot"), used for heat maps
_HOT = np.array(
    [[0, 0, 0], [180, 0, 0], [255, 120, 0], [255, 230, 0], [255, 255, 255]], dtype=np.float64
)


def colorize(
    values: np.ndarray,
    palette: np.ndarray = _VIRIDIS,
    lo: float | None = None,
    hi: float | None = None,
) -> np.ndarray:
    """uint8 RGB array (..., 3) of ``values`` mapped linearly from [lo, hi] onto the palette."""
    v = np.asarray(values, dtype=np.float64)
    lo = float(np.nanmin(v)) if lo is None else lo
    hi = float(np.nanmax(v)) if hi is None else hi
    t = np.zeros_like(v) if hi <= lo else np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    t = np.nan_to_num(t) * (len(palette) - 1)
    i = np.minimum(t.astype(int), len(palette) - 2)
    frac = (t - i)[..., None]
    return (palette[i] * (1 - frac) + palette[i + 1] * frac).round().astype(np.uint8)


def to_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (h, w, 3) array."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def grid_size(channels: int) -> tuple[int, int]:
    """(width, height) of the feature-map grid for ``channels`` maps."""
    cols = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / cols)
    return cols * (CELL + GAP) + GAP, rows * (CELL + GAP) + GAP


def feature_map_grid(maps: np.ndarray) -> bytes:
    """PNG grid of one instance's feature maps ``(h, w, channels)``."""
    h, w, c = maps.shape
    cols = math.ceil(math.sqrt(c))
    width, height = grid_size(c)
    canvas = np.full((height, width, 3), 40, dtype=np.uint8)
    colored = colorize(maps)  # (h, w, c, 3), one scale for the layer
    ys = np.arange(CELL) * h // CELL
    xs = np.arange(CELL) * w // CELL
    cells = colored[ys][:, xs]  # (CELL, CELL, c, 3)
    for k in range(c):
        r, q = divmod(k, cols)
        top, left = GAP + r * (CELL + GAP), GAP + q * (CELL + GAP)
        canvas[top : top + CELL, left : left + CELL] = cells[:, :, k]
    return to_png(canvas)


def strip_size(units: int, rows: int = 1) -> tuple[int, int]:
    """(width, height) of a heat strip of ``units`` for ``rows`` instances."""
    units = min(units, MAX_CELLS)
    return units * max(1, STRIP_WIDTH // units), rows * STRIP_HEIGHT


def _binned(values: np.ndarray, axis: int, limit: int = MAX_CELLS) -> np.ndarray:
    """``values`` with ``axis`` averaged into at most ``limit`` equal-ish bins."""
    size = values.shape[axis]
    if size <= limit:
        return values
    edges = np.linspace(0, size, limit + 1).round().astype(int)
    return np.add.reduceat(values, edges[:-1], axis=axis) / np.diff(edges).reshape(
        [-1 if a == axis % values.ndim else 1 for a in range(values.ndim)]
    )


def heat_strip(values: np.ndarray) -> bytes:
    """PNG heat strip of ``values`` (rows, units): one row per instance, one cell per unit."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    values = _binned(values.reshape(len(values), -1), 1)
    rows, units = values.shape
    cell = max(1, STRIP_WIDTH // units)
    colored = colorize(values)  # (rows, units, 3)
    img = np.repeat(np.repeat(colored, STRIP_HEIGHT, axis=0), cell, axis=1)
    return to_png(np.ascontiguousarray(img))


def sequence_size(steps: int, units: int) -> tuple[int, int]:
    """(width, height) of the sequence heat map of ``steps`` x ``units`` values."""
    steps, units = min(steps, MAX_CELLS), min(units, MAX_CELLS)
    return units * max(1, STRIP_WIDTH // units), steps * max(1, SEQUENCE_HEIGHT // steps)


def sequence_heatmap(values: np.ndarray) -> bytes:
    """PNG heat map of one instance's (time, units) values: time down, units across, one
    colour scale (min..max of the instance)."""
    values = np.asarray(values, dtype=np.float64)
    values = values.reshape(1, -1) if values.ndim < 2 else values
    values = values.reshape(-1, values.shape[-1])
    values = _binned(_binned(values, 0), 1)
    steps, units = values.shape
    width, height = sequence_size(steps, units)
    colored = colorize(values)  # (steps, units, 3)
    img = np.repeat(np.repeat(colored, height // steps, axis=0), width // units, axis=1)
    return to_png(np.ascontiguousarray(img))


def picture_kind(ndim: int) -> str:
    """Which picture a layer output of ``ndim`` dimensions (batch included) gets."""
    if ndim == 4:
        return "grid"
    if ndim <= 2:
        return "strip"
    return "sequence"


def layer_picture(values: np.ndarray) -> bytes:
    """One instance's activations without the batch axis: a grid for (h, w, c), a heat map
    for (time, units) and higher ranks, a strip for vectors."""
    values = np.asarray(values)
    kind = picture_kind(values.ndim + 1)
    if kind == "grid":
        return feature_map_grid(values)
    if kind == "sequence":
        return sequence_heatmap(values)
    return heat_strip(values.reshape(1, -1))


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    """Float RGB (h, w, 3) in [0, 1] from a raw (h, w[, 1|3]) image scaled by its own range."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]


def gradcam_overlay(image: np.ndarray, cam: np.ndarray) -> bytes:
    """PNG ``OVERLAY`` square: the input image in grey, the Grad-CAM heat (values in [0, 1])
    blended in with opacity equal to 0.6 * heat."""
    base = Image.fromarray((_gray_rgb(image) * 255).round().astype(np.uint8), "RGB")
    base = np.asarray(base.resize((OVERLAY, OVERLAY), Image.NEAREST), dtype=np.float64)
    heat = Image.fromarray(np.asarray(cam, dtype=np.float32), "F")
    heat = np.clip(np.asarray(heat.resize((OVERLAY, OVERLAY), Image.BILINEAR)), 0, 1)
    colored = colorize(heat, _HOT, 0.0, 1.0).astype(np.float64)
    alpha = 0.6 * heat[..., None]
    return to_png((base * (1 - alpha) + colored * alpha).round().astype(np.uint8))


def attribution_bars(names: list[str], values: np.ndarray) -> bytes:
    """PNG horizontal bar chart of per-feature attributions (red positive, blue negative)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    img = Image.new("RGB", (BAR_WIDTH, BAR_ROW * len(values)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    label_w, mid = 90, 90 + (BAR_WIDTH - 90) // 2
    span = float(np.abs(values).max()) or 1.0
    half = (BAR_WIDTH - label_w) // 2 - 4
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        y = i * BAR_ROW
        draw.text((2, y + 2), str(name)[:14], fill=(0, 0, 0))
        length = int(round(abs(v) / span * half))
        x0, x1 = (mid, mid + length) if v >= 0 else (mid - length, mid)
        draw.rectangle(
            [x0, y + 3, x1, y + BAR_ROW - 3], fill=(200, 40, 40) if v >= 0 else (40, 80, 200)
        )
    draw.line([mid, 0, mid, img.height], fill=(120, 120, 120))
    return to_png(np.asarray(img))
