"""Argument and tensor validators: one definition of each check and of its message.

:func:`check_image_batch` reads only a tensor's metadata (shape, dtype), so it costs nothing and
never waits for the device. :func:`check_values` reduces the tensor once and so synchronises with
the device: it belongs where data enters (the pipelines, the CLI, data loading), not inside a
model's ``forward`` or a training step. Messages name the argument, what was found and the fix.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

__all__ = ["check_flag", "check_back_projection_steps", "check_image_batch", "check_values", "UNIT_RANGE_TOLERANCE"]

#: Float images this far outside [0, 1] are accepted (and clamped by the callers): the rounding
#: of resampled images and of half-precision decoders.
UNIT_RANGE_TOLERANCE = 1e-3


def check_flag(name: str, value: Any) -> None:
    """ValueError unless the argument ``name`` is exactly ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def check_back_projection_steps(steps: Any, name: str = "back_projection_steps") -> None:
    """ValueError naming ``name`` unless ``steps`` is an int >= 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`{name}` must be an int >= 0 (0 turns back-projection off; 5 is the default), got {steps!r}.")


def check_image_batch(
    name: str,
    x: Any,
    *,
    channels: Optional[int] = 3,
    multiple: int = 1,
    dtype: Optional[torch.dtype] = None,
    batch: Optional[int] = None,
) -> None:
    """ValueError unless ``x`` (the argument ``name``) is a non-empty floating-point
    ``B x channels x H x W`` tensor (``channels=None``: any), H and W multiples of ``multiple``,
    of ``dtype`` and ``batch`` items when those are given."""
    layout = f"B x {channels if channels is not None else 'C'} x H x W"
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or min(x.shape[0], x.shape[2], x.shape[3]) < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"`{name}` must have shape {layout}, got {got}; pass a non-empty torch.Tensor batch (add a batch "
            "dimension with `.unsqueeze(0)` for one item)."
        )
    shape = tuple(x.shape)
    if channels is not None and shape[1] != channels:
        raise ValueError(f"`{name}` must have {channels} channels, got {shape[1]} (shape {shape}, expected {layout}).")
    height, width = shape[-2:]
    if multiple > 1 and (height % multiple or width % multiple):
        raise ValueError(
            f"`{name}` height and width must be multiples of {multiple}, got {height} x {width}; pad (or crop) it to "
            f"{-(-height // multiple) * multiple} x {-(-width // multiple) * multiple} first, e.g. with "
            "torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode='replicate')."
        )
    if not x.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}; divide uint8 images by 255.")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"`{name}` has dtype {x.dtype} but the model runs in {dtype}; convert it with `.to({dtype})`.")
    if batch is not None and shape[0] != batch:
        raise ValueError(f"`{name}` has batch size {shape[0]}, expected {batch}; pass one per item of the batch.")


def check_values(
    name: str,
    x: torch.Tensor,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    tolerance: float = 0.0,
    hint: str = "",
) -> None:
    """ValueError unless ``x`` is finite and, with ``low`` and ``high``, within ``[low - tolerance,
    high + tolerance]`` (``hint`` ends that error); an empty ``x`` passes. One reduction: see the module."""
    if x.numel() == 0:
        return
    lowest, highest = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        raise ValueError(f"`{name}` contains NaN or infinite values (min {lowest}, max {highest}); pass finite values.")
    if low is not None and (lowest < low - tolerance or highest > high + tolerance):
        raise ValueError(
            f"`{name}` must hold values in [{low:g}, {high:g}], got the range [{lowest:.4g}, {highest:.4g}]"
            + (f"; {hint}" if hint else ".")
        )
