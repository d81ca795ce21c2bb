"""The super-resolution protocol's pairs, defined once for the evaluation, the training and the examples.

HR = the centre ``hr_size`` x ``hr_size`` crop of an image (:func:`centre_crop`), LR = PIL bilinear
resize of HR to ``lr_size`` x ``lr_size`` (:func:`load_hr_lr`): the paper's HR -> LR degradation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

from PIL import Image

__all__ = ["centre_crop", "load_hr_lr"]


def centre_crop(image: Image.Image, size: int) -> Image.Image:
    """The centre ``size`` x ``size`` crop; ValueError when the image is smaller."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"image of {width} x {height} is smaller than the crop size {size}; use a smaller --hr-size.")
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_hr_lr(path: Union[str, Path], hr_size: int, lr_size: int) -> Tuple[Image.Image, Image.Image]:
    """(HR centre crop, LR = PIL bilinear resize of it) of the image file ``path``, as RGB PIL images."""
    if lr_size < 1 or hr_size < lr_size:
        raise ValueError(f"need 1 <= lr_size <= hr_size, got lr_size={lr_size}, hr_size={hr_size}.")
    with Image.open(path) as handle:
        hr = centre_crop(handle.convert("RGB"), hr_size)
    return hr, hr.resize((lr_size, lr_size), Image.BILINEAR)
