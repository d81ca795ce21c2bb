"""Back-projection: make an upscaled image agree with the low-resolution image it came from.

Iterative back-projection (Irani and Peleg, 1991) repeats ``steps`` times::

    residual = reference - down(image)          # what the upscale got wrong, at the low resolution
    image    = image + up(residual)             # put it back at the high resolution

with ``down`` = antialiased bilinear resizing to the reference's size (the degradation of the
super-resolution protocol: PIL's bilinear resize, which it matches to about 58 dB) and ``up`` =
bicubic resizing of the residual. Each step brings ``down(image)`` closer to ``reference``, so the
low frequencies of the result come from the input while the high frequencies, which ``down`` removes,
stay UPLiFT's. It generalises the paper's colour correction, which only matches the channel means.

Measured on the 200 BSDS500 test images at 4x with the example TAEF2 model (see its card): the
default 5 rounds add 0.64 dB PSNR to the paper's output (0 rounds), most of it in the first round.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import DEFAULT_BACK_PROJECTION_STEPS
from .validation import check_unit_image_pair

__all__ = ["back_project", "project_to", "check_back_projection_steps", "DEFAULT_BACK_PROJECTION_STEPS"]


def check_back_projection_steps(steps, name: str = "back_projection_steps") -> int:
    """``steps`` as an int >= 0, else a ValueError naming ``name``. The default,
    :data:`~uplift_diffusers.constants.DEFAULT_BACK_PROJECTION_STEPS` = 5, gains all but 0.01 dB of
    10 steps (BSDS500 test, 4x)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`{name}` must be an int >= 0 (0 turns back-projection off; 5 is the default), got {steps!r}.")
    return steps


def project_to(image: torch.Tensor, reference: torch.Tensor, steps: int) -> torch.Tensor:
    """The back-projection itself, unchecked and unclamped (so differentiable, e.g. inside a
    training loss): ``steps`` rounds of ``image += up(reference - down(image))``, in float32 at
    least. ``reference`` is ``B x C x h x w`` with ``h <= H`` and ``w <= W``."""
    compute = torch.promote_types(image.dtype, torch.float32)
    image = image.to(compute)
    reference = reference.to(device=image.device, dtype=compute)
    low, high = tuple(reference.shape[-2:]), tuple(image.shape[-2:])
    for _ in range(steps):
        down = F.interpolate(image, size=low, mode="bilinear", antialias=True, align_corners=False)
        image = image + F.interpolate(reference - down, size=high, mode="bicubic", align_corners=False)
    return image


def back_project(image: torch.Tensor, reference: torch.Tensor, steps: int = DEFAULT_BACK_PROJECTION_STEPS) -> torch.Tensor:
    """``image`` corrected so that its antialiased bilinear downsampling matches ``reference``.

    ``image`` (the upscaled image) and ``reference`` (the low-resolution image it came from,
    ``h <= H`` and ``w <= W``) are ``B x 3 x H x W`` RGB tensors in [0, 1] of one batch size;
    ``steps`` rounds (0 returns ``image`` unchanged). The result has the shape, dtype and device
    of ``image``, clamped to [0, 1]. ValueError naming the argument for anything else.
    """
    check_back_projection_steps(steps, "steps")
    check_unit_image_pair(image, reference)
    if reference.shape[-2] > image.shape[-2] or reference.shape[-1] > image.shape[-1]:
        raise ValueError(
            f"`reference` ({reference.shape[-2]} x {reference.shape[-1]}) is larger than `image` "
            f"({image.shape[-2]} x {image.shape[-1]}); pass the low-resolution image as the reference."
        )
    if steps == 0:
        return image
    return project_to(image, reference, steps).clamp(0.0, 1.0).to(image.dtype)
