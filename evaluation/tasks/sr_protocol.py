"""The super-resolution protocol shared by evaluation, training validation and examples.

HR = centre crop of ``hr_size`` x ``hr_size``; LR = PIL bilinear resize of the HR crop to
``lr_size`` x ``lr_size``. Methods map the LR image to an image of the HR size, and are scored
with PSNR / SSIM in [0, 1] per image (averaged over the images). PSNR is
:func:`evaluation.metrics.image_metrics.psnr` (re-exported here; CFM's definition: both images clamped to
[0, 1], ``10 log10(1 / MSE)`` per image), the project's single PSNR implementation (it needs
``torchmetrics``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from evaluation.metrics.image_metrics import psnr
from uplift_diffusers.image_processor import list_images, pil_to_tensor  # noqa: F401 (re-exported)

__all__ = ["centre_crop", "load_hr_lr", "bicubic_upscale", "evaluate", "psnr", "list_images", "pil_to_tensor"]


def centre_crop(image: Image.Image, size: int) -> Image.Image:
    """The centre ``size`` x ``size`` crop; ValueError when the image is smaller."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"image of {width} x {height} is smaller than the crop size {size}; use a smaller --hr-size.")
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_hr_lr(path: Union[str, Path], hr_size: int, lr_size: int) -> Tuple[Image.Image, Image.Image]:
    """(HR centre crop, LR = PIL bilinear resize of it) as RGB PIL images."""
    if lr_size < 1 or hr_size < lr_size:
        raise ValueError(f"need 1 <= lr_size <= hr_size, got lr_size={lr_size}, hr_size={hr_size}.")
    with Image.open(path) as handle:
        hr = centre_crop(handle.convert("RGB"), hr_size)
    return hr, hr.resize((lr_size, lr_size), Image.BILINEAR)


def bicubic_upscale(lr: Image.Image, size: Tuple[int, int]) -> torch.Tensor:
    """The pixel-space baseline: PIL bicubic resize to ``size`` (width, height)."""
    return pil_to_tensor(lr.resize(size, Image.BICUBIC))


def evaluate(
    method: Callable[[Image.Image, Tuple[int, int]], torch.Tensor],
    files: Sequence[Union[str, Path]],
    hr_size: int,
    lr_size: int,
    ssim_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = None,
    progress: bool = False,
) -> Dict[str, float]:
    """Score ``method(lr_image, (width, height)) -> 1 x 3 x H x W in [0, 1]`` over ``files``.

    Returns the mean ``psnr`` (and ``ssim`` when ``ssim_fn`` is given) and ``count``.
    """
    from tqdm.auto import tqdm

    if not files:
        raise ValueError("`files` is empty; pass at least one image.")
    psnrs, ssims = [], []
    for path in tqdm(files, desc="super-resolution", disable=not progress):
        hr, lr = load_hr_lr(path, hr_size, lr_size)
        target = pil_to_tensor(hr)
        pred = method(lr, hr.size).float().clamp(0, 1)
        if pred.shape != target.shape:
            raise ValueError(f"method returned {tuple(pred.shape)} for {path}, expected {tuple(target.shape)}.")
        psnrs.append(psnr(pred, target).item())
        if ssim_fn is not None:
            ssims.append(float(ssim_fn(pred, target).mean()))
    result = {"psnr": float(np.mean(psnrs)), "count": len(psnrs)}
    if ssim_fn is not None:
        result["ssim"] = float(np.mean(ssims))
    return result
