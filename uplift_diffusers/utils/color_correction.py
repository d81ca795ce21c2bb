"""Colour correction after decoding an upscaled latent: a per-channel mean shift in pixel space.

The UPLiFT authors correct the small colour drift that latent upsampling can introduce by
shifting every RGB channel of the decoded high-resolution image so that its mean equals the
mean of the same channel in the low-resolution reference (the input image in
super-resolution, the base image in text-to-image).
"""
from __future__ import annotations

import torch

from .validation import check_unit_image_pair

__all__ = ["color_correct", "mean_shift"]


def color_correct(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Shift every channel of ``image`` so that its mean matches ``reference``'s, then clamp to [0, 1]::

        out[b, c] = clamp(image[b, c] - (mean(image[b, c]) - mean(reference[b, c])), 0, 1)

    ``image`` (the decoded upscaled image) and ``reference`` (the low-resolution image the upscale
    started from, of any spatial size) are ``B x 3 x H x W`` RGB tensors in [0, 1] of one batch
    size; ValueError naming the argument otherwise. The result has the shape, dtype and device of
    ``image``; the means match exactly unless the clamp had to cut values.
    """
    check_unit_image_pair(image, reference)
    return mean_shift(image, reference).clamp(0.0, 1.0).to(image.dtype)


def mean_shift(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The correction itself, unchecked and unclamped (so differentiable, e.g. inside a training
    loss): ``image`` with each channel's mean moved to ``reference``'s, in float32 at least so
    that half-precision images do not lose the shift."""
    compute = torch.promote_types(image.dtype, torch.float32)
    image_mean = image.to(compute).mean(dim=(2, 3), keepdim=True)
    reference_mean = reference.to(device=image.device, dtype=compute).mean(dim=(2, 3), keepdim=True)
    return image.to(compute) - (image_mean - reference_mean)
