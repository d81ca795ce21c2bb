"""Colour correction after decoding an upscaled latent: a per-channel mean shift in pixel space.

The UPLiFT authors correct the small colour drift that latent upsampling can introduce by
shifting every RGB channel of the decoded high-resolution image so that its mean equals the
mean of the same channel in the low-resolution reference (the input image in
super-resolution, the base image in text-to-image).
"""
from __future__ import annotations

import torch

from ..image_processor import check_unit_range

__all__ = ["color_correct"]


def _check_image(name: str, tensor, batch: int = None) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor of shape B x 3 x H x W in [0, 1], got {type(tensor).__name__}.")
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        raise ValueError(
            f"`{name}` must have shape B x 3 x H x W (RGB), got {tuple(tensor.shape)}; "
            "add a batch dimension with `.unsqueeze(0)` or convert the image to RGB."
        )
    if tensor.shape[0] < 1 or tensor.shape[2] < 1 or tensor.shape[3] < 1:
        raise ValueError(f"`{name}` is empty (shape {tuple(tensor.shape)}); pass at least one pixel per image.")
    if not tensor.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor in [0, 1], got dtype {tensor.dtype}; divide uint8 images by 255.")
    check_unit_range(tensor, f"`{name}`", "convert images in [-1, 1] with `(x / 2 + 0.5).clamp(0, 1)`.")
    if batch is not None and tensor.shape[0] != batch:
        raise ValueError(f"`{name}` has batch size {tensor.shape[0]} but `image` has {batch}; pass one reference per image.")


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
    _check_image("image", image)
    _check_image("reference", reference, batch=image.shape[0])
    return mean_shift(image, reference).clamp(0.0, 1.0).to(image.dtype)


def mean_shift(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The correction itself, unchecked and unclamped (so differentiable, e.g. inside a training
    loss): ``image`` with each channel's mean moved to ``reference``'s, in float32 at least so
    that half-precision images do not lose the shift."""
    compute = torch.promote_types(image.dtype, torch.float32)
    image_mean = image.to(compute).mean(dim=(2, 3), keepdim=True)
    reference_mean = reference.to(device=image.device, dtype=compute).mean(dim=(2, 3), keepdim=True)
    return image.to(compute) - (image_mean - reference_mean)
