"""Colour correction after decoding an upscaled latent: a per-channel mean shift in pixel space.

The UPLiFT authors correct the small colour drift that latent upsampling can introduce by
shifting every RGB channel of the decoded high-resolution image so that its mean equals the
mean of the same channel in the low-resolution reference (the input image in
super-resolution, the base image in text-to-image).
"""
from __future__ import annotations

import torch

from .validation import UNIT_RANGE_TOLERANCE, check_image_batch, check_values

__all__ = ["color_correct", "mean_shift"]

_HINT = "convert images in [-1, 1] with `(x / 2 + 0.5).clamp(0, 1)`."


def color_correct(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Shift every channel of ``image`` so that its mean matches ``reference``'s, then clamp to [0, 1].

    For each image ``b`` and channel ``c``::

        out[b, c] = clamp(image[b, c] - (mean(image[b, c]) - mean(reference[b, c])), 0, 1)

    Args:
        image: ``B x 3 x H x W`` floating-point RGB tensor in [0, 1] (the decoded upscaled image).
        reference: ``B x 3 x h x w`` floating-point RGB tensor in [0, 1] of any spatial size and
            the same batch size (the low-resolution image the upscale started from).

    Returns:
        A tensor with the shape, dtype and device of ``image``. The means match exactly unless
        the clamp to [0, 1] had to cut values.

    Raises:
        ValueError: when either argument is not a finite floating-point ``B x 3 x H x W``
            tensor, or the batch sizes differ.
    """
    check_image_batch("image", image)
    check_image_batch("reference", reference, batch=image.shape[0])
    for name, tensor in (("image", image), ("reference", reference)):
        check_values(name, tensor, 0.0, 1.0, tolerance=UNIT_RANGE_TOLERANCE, hint=_HINT)
    return mean_shift(image, reference).clamp(0.0, 1.0).to(image.dtype)


def mean_shift(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The correction itself, unchecked and unclamped (so differentiable, e.g. inside a training
    loss): ``image`` with each channel's mean moved to ``reference``'s, in float32 at least so
    that half-precision images do not lose the shift."""
    compute = torch.promote_types(image.dtype, torch.float32)
    image_mean = image.to(compute).mean(dim=(2, 3), keepdim=True)
    reference_mean = reference.to(device=image.device, dtype=compute).mean(dim=(2, 3), keepdim=True)
    return image.to(compute) - (image_mean - reference_mean)
