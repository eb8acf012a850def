"""Heatmap images a person can read, drawn with PIL (no matplotlib): a title, axis labels, ticks
with class names, and a colour bar with numbers.

Pillow comes with the core dependencies (``tensorboard`` requires it), and the package lists it
itself. Where it cannot be imported, :func:`labelled_heatmap` returns the unlabelled image of
:mod:`~lightning_stiffness.viz.raster` (with a colour bar, no text) and warns once.

Layout (pixels)::

                 title
    y label  yticks ┌──────────┐ ┊ ┌┐ 1
                    │  matrix  │ ┊ ││ 0.5 ...
                    └──────────┘ ┊ └┘ -1
                     xticks
                     x label

:func:`labelled_heatmap` returns the image and the list of every text item drawn with its box,
so tests (and users) can check what an image says without reading pixels.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from lightning_stiffness.viz.colormap import VMAX, VMIN
from lightning_stiffness.viz.labels import COLORBAR_TICKS, tick_text
from lightning_stiffness.viz.raster import colorbar, heatmap, with_colorbar

__all__ = ["LabelledImage", "TextItem", "block_ticks", "class_ticks", "have_pil", "labelled_heatmap", "shorten"]

#: Longest tick label drawn; longer class names are cut with "…" (``.`` where the font lacks it).
MAX_TICK_CHARS = 14
#: Most ticks per axis; with more classes every k-th class is labelled.
MAX_TICKS = 20

BLACK = (0, 0, 0)
WHITE_BG = (255, 255, 255)
PAD = 6
TICK_LEN = 3
BAR_WIDTH = 14


@dataclass(frozen=True)
class TextItem:
    """One piece of text drawn: ``role`` is ``title``, ``xlabel``, ``ylabel``, ``xtick``, ``ytick``
    or ``colorbar``; ``box`` is ``(left, top, right, bottom)`` in image pixels."""

    text: str
    role: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class LabelledImage:
    """A ``uint8`` ``(3, H, W)`` image, the text drawn on it (empty without PIL) and where the
    matrix lies in it, ``plot_box = (left, top, right, bottom)`` (right and bottom exclusive)."""

    image: Tensor
    texts: tuple[TextItem, ...]
    plot_box: tuple[int, int, int, int]

    def texts_of(self, role: str) -> list[str]:
        """The strings drawn in one role, in drawing order."""
        return [t.text for t in self.texts if t.role == role]


def have_pil() -> bool:
    """Whether Pillow can be imported."""
    try:
        import PIL.ImageDraw  # noqa: F401
    except ImportError:
        return False
    return True


_warned_no_pil = False


def _warn_no_pil_once() -> None:
    global _warned_no_pil
    if not _warned_no_pil:
        _warned_no_pil = True
        warnings.warn(
            "lightning_stiffness: Pillow is not installed, so heatmap images have no title, labels or numbers "
            "(pip install pillow).",
            stacklevel=3,
        )


@lru_cache(maxsize=4)
def _font(size: int) -> Any:
    """PIL's bundled default font at ``size`` pixels (the fixed bitmap font on old Pillow)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def shorten(name: str, limit: int = MAX_TICK_CHARS) -> str:
    """``name`` cut to ``limit`` characters, the last one ``.`` when cut."""
    return name if len(name) <= limit else name[: limit - 1] + "."


def class_ticks(
    classes: Sequence[int], class_names: Sequence[str] | None = None, max_ticks: int = MAX_TICKS
) -> list[tuple[float, str]]:
    """Ticks ``(cell position, label)`` for a class matrix whose row ``k`` is class ``classes[k]``
    (``range(C)``, or a super-class order): every row up to ``max_ticks`` rows, else every
    ``ceil(C / max_ticks)``-th one; the label is the class name, or the index without names."""
    classes = list(classes)
    if class_names is not None and classes and len(class_names) <= max(classes):
        raise ValueError(f"{len(class_names)} class names for classes up to {max(classes)}")
    stride = max(1, math.ceil(len(classes) / max_ticks))
    return [(k + 0.5, _name(classes[k], class_names)) for k in range(0, len(classes), stride)]


def block_ticks(
    boundaries: Sequence[int],
    size: int,
    block_classes: Sequence[int],
    class_names: Sequence[str] | None = None,
    max_ticks: int = MAX_TICKS,
) -> list[tuple[float, str]]:
    """Ticks at the centres of the blocks of a matrix sorted by class: block ``k`` spans
    ``[starts[k], starts[k+1])`` with ``starts = [0, *boundaries, size]`` and holds class
    ``block_classes[k]``. With more than ``max_ticks`` blocks every k-th block is labelled."""
    starts = [0, *boundaries, size]
    if len(block_classes) != len(starts) - 1:
        raise ValueError(f"{len(starts) - 1} blocks but {len(block_classes)} classes for them")
    stride = max(1, math.ceil(len(block_classes) / max_ticks))
    return [
        ((starts[k] + starts[k + 1]) / 2, _name(block_classes[k], class_names))
        for k in range(0, len(block_classes), stride)
    ]


def _name(c: int, class_names: Sequence[str] | None) -> str:
    return shorten(str(class_names[c])) if class_names is not None and c < len(class_names) else str(c)


@lru_cache(maxsize=1024)
def _text_mask(text: str, font: Any, vertical: bool) -> Any:
    """A greyscale ("L") image of ``text``, white on black, turned 90° left when ``vertical``.

    Cached: every measurement draws the same titles, labels and tick texts, and drawing text is
    most of a heatmap's cost. Callers only paste the mask, never change it."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255)
    return mask.rotate(90, expand=True) if vertical else mask


class _Canvas:
    """A white PIL image with a record of the text pasted on it."""

    def __init__(self, width: int, height: int) -> None:
        from PIL import Image, ImageDraw

        self.image = Image.new("RGB", (width, height), WHITE_BG)
        self.draw = ImageDraw.Draw(self.image)
        self.texts: list[TextItem] = []

    def text(self, mask: Any, text: str, role: str, x: int, y: int) -> None:
        """Paste a text mask (from :func:`_text_mask`) in black with its top-left at ``(x, y)``."""
        self.image.paste(BLACK, (x, y), mask)
        self.texts.append(TextItem(text, role, (x, y, x + mask.width, y + mask.height)))


def labelled_heatmap(
    matrix: Tensor,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ticks: Sequence[tuple[float, str]] | None = None,
    boundaries: list[int] | None = None,
    target_size: int = 320,
    font_size: int = 12,
    vmin: float = VMIN,
    vmax: float = VMAX,
    bar_ticks: Sequence[float] = COLORBAR_TICKS,
) -> LabelledImage:
    """The heatmap of ``matrix`` (:func:`~lightning_stiffness.viz.raster.heatmap`, fixed
    ``[vmin, vmax]``) with a title (lines after a ``\\n`` in a smaller font), axis labels,
    ``ticks`` (cell position, label) on both axes (the matrices are square: rows and columns are
    the same classes) and a colour bar numbered at ``bar_ticks``. Without Pillow: the unlabelled
    image and no text (warned once)."""
    rows = matrix.shape[0]
    if not have_pil():
        _warn_no_pil_once()
        body = heatmap(matrix, vmin=vmin, vmax=vmax, boundaries=boundaries, target_size=target_size)
        return LabelledImage(with_colorbar(body, vmin, vmax), (), (0, 0, body.shape[2], body.shape[1]))
    import numpy as np
    from PIL import Image

    body = heatmap(matrix, vmin=vmin, vmax=vmax, boundaries=boundaries, target_size=target_size)
    scale = body.shape[1] // rows
    plot_h, plot_w = body.shape[1], body.shape[2]
    font, title_font = _font(font_size), _font(font_size + 1)
    ticks = list(ticks or [])
    spacing = min((b - a for (a, _), (b, _) in itertools.pairwise(ticks)), default=math.inf) * scale
    widest = max((font.getbbox(label)[2] - font.getbbox(label)[0] for _, label in ticks), default=0)
    x_vertical = widest + 3 > spacing  # horizontal x tick labels would touch: turn them
    title_lines = title.split("\n")
    title_masks = [
        _text_mask(line, title_font if k == 0 else font, vertical=False) for k, line in enumerate(title_lines)
    ]
    title_h = sum(mask.height + 2 for mask in title_masks) - 2
    title_w = max(mask.width for mask in title_masks)
    xlabel_mask = _text_mask(xlabel, font, vertical=False)
    ylabel_mask = _text_mask(ylabel, font, vertical=True)
    xtick_masks = [_text_mask(label, font, vertical=x_vertical) for _, label in ticks]
    ytick_masks = [_text_mask(label, font, vertical=False) for _, label in ticks]
    bar_masks = [_text_mask(tick_text(v), font, vertical=False) for v in bar_ticks]

    ytick_w = max((m.width for m in ytick_masks), default=0)
    xtick_h = max((m.height for m in xtick_masks), default=0)
    bar_label_w = max((m.width for m in bar_masks), default=0)
    left = PAD + ylabel_mask.width + PAD + ytick_w + TICK_LEN + 2
    top = PAD + title_h + PAD
    bar_x = left + plot_w + 2 * PAD
    right_edge = bar_x + BAR_WIDTH + TICK_LEN + 2 + bar_label_w + PAD
    bottom_edge = top + plot_h + TICK_LEN + 2 + xtick_h + PAD + xlabel_mask.height + PAD
    width = max(right_edge, PAD + title_w + PAD, left + xlabel_mask.width + PAD)
    canvas = _Canvas(width, bottom_edge)

    canvas.image.paste(Image.fromarray(np.ascontiguousarray(body.permute(1, 2, 0).numpy())), (left, top))
    canvas.draw.rectangle((left - 1, top - 1, left + plot_w, top + plot_h), outline=BLACK)
    y = PAD
    for line, mask in zip(title_lines, title_masks):
        canvas.text(mask, line, "title", (width - mask.width) // 2, y)
        y += mask.height + 2
    canvas.text(ylabel_mask, ylabel, "ylabel", PAD, top + (plot_h - ylabel_mask.height) // 2)
    canvas.text(
        xlabel_mask,
        xlabel,
        "xlabel",
        left + max(0, (plot_w - xlabel_mask.width) // 2),
        top + plot_h + TICK_LEN + 2 + xtick_h + PAD,
    )
    for (pos, label), xm, ym in zip(ticks, xtick_masks, ytick_masks):
        at = round(pos * scale)
        x, y = left + at, top + at
        canvas.draw.line((x, top + plot_h, x, top + plot_h + TICK_LEN), fill=BLACK)
        canvas.text(xm, label, "xtick", x - xm.width // 2, top + plot_h + TICK_LEN + 2)
        canvas.draw.line((left - TICK_LEN - 1, y, left - 1, y), fill=BLACK)
        canvas.text(ym, label, "ytick", left - TICK_LEN - 2 - ym.width, y - ym.height // 2)

    bar = colorbar(plot_h, BAR_WIDTH, vmin, vmax)
    canvas.image.paste(Image.fromarray(np.ascontiguousarray(bar.permute(1, 2, 0).numpy())), (bar_x, top))
    canvas.draw.rectangle((bar_x - 1, top - 1, bar_x + BAR_WIDTH, top + plot_h), outline=BLACK)
    for value, mask in zip(bar_ticks, bar_masks):
        y = top + round((vmax - value) / (vmax - vmin) * (plot_h - 1))
        canvas.draw.line((bar_x + BAR_WIDTH, y, bar_x + BAR_WIDTH + TICK_LEN, y), fill=BLACK)
        y_text = min(max(y - mask.height // 2, 0), canvas.image.height - mask.height)
        canvas.text(mask, tick_text(value), "colorbar", bar_x + BAR_WIDTH + TICK_LEN + 2, y_text)

    image = torch.from_numpy(np.asarray(canvas.image).copy()).permute(2, 0, 1).contiguous()
    return LabelledImage(image, tuple(canvas.texts), (left, top, left + plot_w, top + plot_h))
