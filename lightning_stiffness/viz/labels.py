"""The wording of every stiffness figure and image, in one place (plain ASCII-friendly text, so
PIL's default font draws it as well as matplotlib does).

Paper v1's class matrices: ``C[a, b]`` is the stiffness between a gradient step taken on an
example of class ``a`` (x axis) and the loss change of an example of class ``b`` (y axis).
"""

from __future__ import annotations

__all__ = [
    "COLORBAR_TICKS",
    "KIND_TITLES",
    "XLABEL",
    "XLABEL_EXAMPLES",
    "XLABEL_PROBE_ORDER",
    "YLABEL",
    "YLABEL_EXAMPLES",
    "YLABEL_PROBE_ORDER",
    "tick_text",
]

#: What each kind of stiffness is, for titles.
KIND_TITLES = {"sign": "sign stiffness E[sign(g_1·g_2)]", "cos": "cosine stiffness E[cos(g_1, g_2)]"}
#: Class-matrix axes (paper v1).
XLABEL = "class of g_1 (gradient taken on it)"
YLABEL = "class of g_2"
#: Axes of the N×N matrices sorted by class.
XLABEL_EXAMPLES = "example of g_1, sorted by class"
YLABEL_EXAMPLES = "example of g_2, sorted by class"
#: Axes of the N×N matrices of a measurement without classes (targets that are not class labels).
XLABEL_PROBE_ORDER = "example of g_1 (probe order)"
YLABEL_PROBE_ORDER = "example of g_2 (probe order)"
#: The numbers on every colour bar (the fixed range [-1, 1]).
COLORBAR_TICKS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def tick_text(value: float) -> str:
    """A colour-bar number as printed: ``-1``, ``-0.5``, ``0``, ``0.5``, ``1``."""
    return f"{value:g}"
