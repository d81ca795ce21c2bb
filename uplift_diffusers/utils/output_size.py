"""Output sizes: the one rule of every pipeline and of the command line (no torch here: the
command line checks its flags with it before importing anything heavy)."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple

__all__ = ["check_upscale_factor", "output_size_for"]


def check_upscale_factor(upscale_factor, name: str = "upscale_factor") -> float:
    """``upscale_factor`` as a float; ValueError naming ``name`` unless it is a finite real number >= 1."""
    real = not isinstance(upscale_factor, bool) and isinstance(upscale_factor, numbers.Real)
    if not (real and math.isfinite(upscale_factor) and upscale_factor >= 1):
        raise ValueError(
            f"`{name}` must be a finite real number >= 1 (e.g. 2, 3 or 1.5; 1: the input size, UPLiFT only enlarges), "
            f"got {upscale_factor!r}."
        )
    return float(upscale_factor)


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def output_size_for(
    height: int,
    width: int,
    upscale_factor=None,
    out_height: Optional[int] = None,
    out_width: Optional[int] = None,
    names: Sequence[str] = ("upscale_factor", "height", "width"),
) -> Tuple[int, int]:
    """The output size ``(H, W)`` of an input of ``height x width`` (sides >= 1): the one rule of the package.

    - ``upscale_factor`` (any real number >= 1): ``round(factor * side)`` per side, halves up;
    - ``out_height`` and ``out_width``: exactly that size;
    - only one of them: that side, and the other keeps the aspect ratio (``round(other * out_side / side)``).

    ``names`` is how the errors name ``upscale_factor``, ``out_height`` and ``out_width`` (the
    caller's own arguments, e.g. ``("--scale", "--size height", "--size width")``).
    """
    factor_name, height_name, width_name = names
    sized = out_height is not None or out_width is not None
    if upscale_factor is not None and sized:
        raise ValueError(
            f"pass either `{factor_name}` or `{height_name}` / `{width_name}`, not both "
            f"(got {factor_name}={upscale_factor!r}, {height_name}={out_height!r}, {width_name}={out_width!r})."
        )
    if upscale_factor is not None:
        factor = check_upscale_factor(upscale_factor, factor_name)
        return _round_half_up(factor * height), _round_half_up(factor * width)
    if not sized:
        raise ValueError(f"pass `{factor_name}` or an output size (`{height_name}` and / or `{width_name}`).")
    for name, value, side in ((height_name, out_height, height), (width_name, out_width, width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < side):
            raise ValueError(
                f"`{name}` must be an int of at least the input's {side} pixels (UPLiFT only enlarges; downscale the "
                f"result yourself for a smaller image), got {value!r}."
            )
    if out_height is None:
        out_height = _round_half_up(height * out_width / width)
    elif out_width is None:
        out_width = _round_half_up(width * out_height / height)
    return int(out_height), int(out_width)
