"""Line charts drawn with PIL, for the images logged at every measurement (matplotlib took about
half a second per figure, most of the callback's image cost; the report keeps matplotlib).

:func:`distance_chart` is the stiffness-vs-distance image: mean stiffness ± s.e.m. per distance
bin, one line per curve, dashed guides at -1, 0 and 1, and a vertical line per critical length
(solid at a measured ξ, dotted and labelled "ξ >=" at the lower bound of a censored or
extrapolated one). It returns a :class:`~lightning_stiffness.viz.labelled.LabelledImage`, whose
``texts`` list every string drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from lightning_stiffness.analytics import BinnedCurve, CriticalLength
from lightning_stiffness.viz.labelled import BLACK, PAD, LabelledImage, _Canvas, _font, _text_mask

__all__ = ["Series", "VLine", "distance_chart", "line_chart", "nice_ticks"]

#: Line colours, in order (matplotlib's default cycle).
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)
GUIDE_GREY = (150, 150, 150)


@dataclass(frozen=True)
class Series:
    """One line: points ``(x, y)`` with a band ``y ± err`` (NaN err: no band)."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    err: Sequence[float]


@dataclass(frozen=True)
class VLine:
    """A vertical marker at ``x``: ``dotted`` for a lower bound."""

    x: float
    label: str
    dotted: bool = False


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values covering ``[lo, hi]``: a step of 1, 2 or 5 × 10^k giving about ``target``
    ticks, every multiple of it inside the range."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, target - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] = (-1.05, 1.05),
    yticks: Sequence[float] = (-1.0, -0.5, 0.0, 0.5, 1.0),
    guides: Sequence[float] = (-1.0, 0.0, 1.0),
    vlines: Sequence[VLine] = (),
    size: tuple[int, int] = (420, 280),
    font_size: int = 11,
) -> LabelledImage:
    """Lines with ± bands in a ``size`` (width, height) plot box, legend on the right."""
    import numpy as np
    from PIL import Image, ImageDraw

    font = _font(font_size)
    plot_w, plot_h = size
    xs = [v for s in series for v in s.x if math.isfinite(v)] + [v.x for v in vlines if math.isfinite(v.x)]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    margin = 0.04 * (x_hi - x_lo)
    x_lo, x_hi = x_lo - margin, x_hi + margin
    y_lo, y_hi = ylim
    xticks = nice_ticks(x_lo, x_hi)

    title_mask = _text_mask(title, _font(font_size + 1), vertical=False)
    xlabel_mask = _text_mask(xlabel, font, vertical=False)
    ylabel_mask = _text_mask(ylabel, font, vertical=True)
    ytick_masks = [(v, _text_mask(f"{v:g}", font, vertical=False)) for v in yticks]
    xtick_masks = [(v, _text_mask(f"{v:g}", font, vertical=False)) for v in xticks]
    entries = [(s.name, PALETTE[k % len(PALETTE)], False, False) for k, s in enumerate(series)]
    entries += [(v.label, BLACK, True, v.dotted) for v in vlines]
    legend_masks = [_text_mask(name, font, vertical=False) for name, *_ in entries]

    left = PAD + ylabel_mask.width + PAD + max((m.width for _, m in ytick_masks), default=0) + 5
    top = PAD + title_mask.height + PAD
    tick_h = max((m.height for _, m in xtick_masks), default=0)
    legend_x = left + plot_w + 2 * PAD
    legend_w = 24 + max((m.width for m in legend_masks), default=0)
    width = max(legend_x + legend_w + PAD, PAD + title_mask.width + PAD)
    height = top + plot_h + 5 + tick_h + PAD + xlabel_mask.height + PAD
    canvas = _Canvas(width, height)

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (plot_w - 1)

    def py(y: float) -> float:
        return top + (y_hi - min(max(y, y_lo), y_hi)) / (y_hi - y_lo) * (plot_h - 1)

    for value in guides:
        _dashed(canvas.draw, px(x_lo), py(value), px(x_hi), py(value), GUIDE_GREY, dash=5)
    overlay = Image.new("RGBA", canvas.image.size, (0, 0, 0, 0))
    band = ImageDraw.Draw(overlay)
    for s, (_, colour, _, _) in zip(series, entries):
        pts = [(x, y, e) for x, y, e in zip(s.x, s.y, s.err) if math.isfinite(x) and math.isfinite(y)]
        upper = [(px(x), py(y + e)) for x, y, e in pts if math.isfinite(e)]
        lower = [(px(x), py(y - e)) for x, y, e in reversed(pts) if math.isfinite(e)]
        if len(upper) >= 2:
            band.polygon(upper + lower, fill=(*colour, 50))
    canvas.image.paste(Image.alpha_composite(canvas.image.convert("RGBA"), overlay).convert("RGB"))
    for s, (_, colour, _, _) in zip(series, entries):
        line = [(px(x), py(y)) for x, y in zip(s.x, s.y) if math.isfinite(x) and math.isfinite(y)]
        if len(line) >= 2:
            canvas.draw.line(line, fill=colour, width=2)
        for x, y in line:
            canvas.draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    for v in vlines:
        if math.isfinite(v.x):
            if v.dotted:
                _dashed(canvas.draw, px(v.x), top, px(v.x), top + plot_h - 1, BLACK, dash=2)
            else:
                canvas.draw.line((px(v.x), top, px(v.x), top + plot_h - 1), fill=BLACK, width=1)
    canvas.draw.rectangle((left - 1, top - 1, left + plot_w, top + plot_h), outline=BLACK)

    canvas.text(title_mask, title, "title", (width - title_mask.width) // 2, PAD)
    canvas.text(ylabel_mask, ylabel, "ylabel", PAD, top + (plot_h - ylabel_mask.height) // 2)
    canvas.text(
        xlabel_mask, xlabel, "xlabel", left + max(0, (plot_w - xlabel_mask.width) // 2), top + plot_h + 5 + tick_h + PAD
    )
    for value, mask in ytick_masks:
        y = round(py(value))
        canvas.draw.line((left - 4, y, left - 1, y), fill=BLACK)
        canvas.text(mask, f"{value:g}", "ytick", left - 5 - mask.width, y - mask.height // 2)
    for value, mask in xtick_masks:
        x = round(px(value))
        canvas.draw.line((x, top + plot_h, x, top + plot_h + 3), fill=BLACK)
        canvas.text(mask, f"{value:g}", "xtick", x - mask.width // 2, top + plot_h + 5)
    y = top
    for (name, colour, is_vline, dotted), mask in zip(entries, legend_masks):
        mid = y + mask.height // 2
        if is_vline and dotted:
            _dashed(canvas.draw, legend_x, mid, legend_x + 18, mid, colour, dash=2)
        else:
            canvas.draw.line((legend_x, mid, legend_x + 18, mid), fill=colour, width=2)
        canvas.text(mask, name, "legend", legend_x + 24, y)
        y += mask.height + 5

    image = torch.from_numpy(np.asarray(canvas.image).copy()).permute(2, 0, 1).contiguous()
    return LabelledImage(image, tuple(canvas.texts), (left, top, left + plot_w, top + plot_h))


def _dashed(draw: object, x0: float, y0: float, x1: float, y1: float, colour: tuple[int, int, int], dash: int) -> None:
    """A dashed straight line (``dash`` pixels on, ``dash`` off)."""
    length = math.hypot(x1 - x0, y1 - y0)
    steps = max(1, int(length // (2 * dash)))
    for k in range(steps + 1):
        a, b = (2 * k * dash) / max(length, 1e-9), min(1.0, (2 * k + 1) * dash / max(length, 1e-9))
        if a >= 1.0:
            break
        draw.line(  # type: ignore[attr-defined]
            (x0 + a * (x1 - x0), y0 + a * (y1 - y0), x0 + b * (x1 - x0), y0 + b * (y1 - y0)), fill=colour
        )


def distance_chart(
    curves: Mapping[str, BinnedCurve],
    lengths: Mapping[str, CriticalLength] | None = None,
    *,
    title: str = "",
    xlabel: str = "input-space cosine distance 1 - cos(x_1, x_2)",
) -> LabelledImage:
    """Stiffness vs distance (the image twin of ``viz.curves.distance_figure``): mean ± s.e.m.
    over the bins that hold pairs; ξ solid where measured, dotted "ξ >=" at a lower bound."""
    series = []
    for name, curve in curves.items():
        keep = curve.count > 0
        series.append(Series(name, curve.centers[keep].tolist(), curve.mean[keep].tolist(), curve.sem[keep].tolist()))
    vlines = []
    for name, xi in (lengths or {}).items():
        at = xi.bound_or_value
        if math.isfinite(at):
            vlines.append(VLine(at, f"xi {name} {'=' if xi.crossed else '>='} {at:.3f}", dotted=not xi.crossed))
    return line_chart(series, title=title or "stiffness vs distance", xlabel=xlabel, ylabel="stiffness", vlines=vlines)
