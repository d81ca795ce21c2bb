"""Image helpers shared by the pipelines, training and evaluation: finding image files and
turning images into tensors.

:func:`images_to_tensors` converts the super-resolution pipeline's ``image`` argument (PIL images
of any mode, numpy arrays, tensors, or lists of them) to ``1 x 3 x H x W`` float32 tensors in
[0, 1]: gray is replicated to RGB and transparent images are composited on a white background.
:func:`size_groups` groups them by size for batching, and :func:`pad_to_multiple` pads them
(reflection, or replication where reflection is undefined) to the VAE's multiple.

8-bit RGB goes through diffusers' ``VaeImageProcessor`` (``pil_to_numpy`` / ``numpy_to_pt``).
The rest is ours because ``VaeImageProcessor.preprocess`` does something else: it resizes to the
VAE's multiple (we pad and crop back, so outputs are exactly ``factor`` times the input), drops
alpha instead of compositing it, reads 16-bit and float PIL modes as 8-bit, and needs one size
per batch (we accept mixed sizes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from .constants import IMAGE_SUFFIXES
from .utils.validation import UNIT_RANGE_TOLERANCE, check_values

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInput",
    "list_images",
    "pil_to_tensor",
    "images_to_tensors",
    "size_groups",
    "pad_to_multiple",
]

#: One image as the super-resolution pipeline accepts it.
ImageInput = Union[Image.Image, np.ndarray, torch.Tensor]
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

_RANGE_HINT = "divide 8-bit values by 255 (or pass uint8), convert [-1, 1] images with x / 2 + 0.5."
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA")
_PREMULTIPLIED_MODES = ("RGBa", "La")


def list_images(folders: Union[str, Path, Sequence[Union[str, Path]]]) -> List[Path]:
    """All image files under one or more folders (recursive), sorted."""
    if isinstance(folders, (str, Path)):
        folders = [folders]
    files: List[Path] = []
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {str(folder)!r}; pass an existing directory of images.")
        files.extend(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(files)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> 1 x 3 x H x W float tensor in [0, 1].

    Other modes are converted by PIL's ``convert("RGB")`` (an alpha channel is dropped, not
    composited); :func:`images_to_tensors` is the pipeline's stricter conversion.
    """
    return _hwc_to_tensor(_rgb8_to_array(image))


# ---------------------------------------------------------------------------------------------
# Input conversion: everything becomes 1 x 3 x H x W float32 tensors in [0, 1]
# ---------------------------------------------------------------------------------------------
def _over_white(colour: ArrayOrTensor, alpha: ArrayOrTensor) -> ArrayOrTensor:
    """Colour in [0, 1] with its alpha -> the colour over a white background (numpy or torch)."""
    return colour * alpha + (1.0 - alpha)


def _rgb8_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image converted by PIL to 8-bit RGB -> H x W x 3 float32 in [0, 1] (alpha dropped)."""
    return VaeImageProcessor.pil_to_numpy(image.convert("RGB"))[0]


def _hwc_to_tensor(array: np.ndarray) -> torch.Tensor:
    """H x W x C numpy array -> contiguous 1 x C x H x W tensor."""
    return VaeImageProcessor.numpy_to_pt(np.ascontiguousarray(array)[None]).contiguous()


def _pil_to_array(image: Image.Image, where: str) -> np.ndarray:
    """A PIL image of any mode -> H x W x 3 float32 in [0, 1]."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "I":  # 32-bit integer; PIL opens 16-bit PNGs in this mode
        values = np.asarray(image).astype(np.int64)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"`{where}`: a mode 'I' image must hold 16-bit values in [0, 65535], got [{low}, {high}]; "
                "rescale it, or pass a float array in [0, 1]."
            )
        return np.repeat((values.astype(np.float32) / 65535.0)[..., None], 3, axis=2)
    if mode == "F":  # PIL's convention for float images: the 0..255 scale of mode "L"
        values = np.asarray(image).astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"`{where}`: the mode 'F' image holds NaN or infinite values.")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"`{where}`: a mode 'F' image must hold values in [0, 255] (PIL's scale), got [{low:.4g}, {high:.4g}]; "
                "pass a float numpy array in [0, 1] instead."
            )
        return np.repeat((values / 255.0)[..., None], 3, axis=2)
    if mode in _PREMULTIPLIED_MODES:  # colour already multiplied by alpha: over white = colour + (1 - alpha)
        values = np.asarray(image).astype(np.float32) / 255.0
        colour, alpha = values[..., :-1], values[..., -1:]
        composited = colour + (1.0 - alpha)
        return np.repeat(composited, 3, axis=2) if composited.shape[-1] == 1 else composited
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA")).astype(np.float32) / 255.0
        return _over_white(rgba[..., :3], rgba[..., 3:4])
    return _rgb8_to_array(image)


def _to_unit_float(values: torch.Tensor, where: str) -> torch.Tensor:
    """uint8 / uint16 / floating tensor -> float32 in [0, 1]."""
    if values.dtype == torch.uint8:
        return values.float() / 255.0
    if values.dtype == torch.uint16:
        return values.float() / 65535.0
    if values.is_floating_point():
        values = values.float()
        check_values(where, values, 0.0, 1.0, tolerance=UNIT_RANGE_TOLERANCE, hint=_RANGE_HINT)
        return values.clamp(0.0, 1.0)
    raise ValueError(f"`{where}` has dtype {values.dtype}; pass uint8, uint16 or floating-point values in [0, 1].")


def _channels_to_rgb(batch: torch.Tensor, where: str) -> torch.Tensor:
    """B x C x H x W with C in {1, 3, 4} -> B x 3 x H x W (gray replicated, alpha composited on white)."""
    channels = batch.shape[1]
    if channels == 1:
        return batch.expand(-1, 3, -1, -1)
    if channels == 3:
        return batch
    if channels == 4:
        return _over_white(batch[:, :3], batch[:, 3:4])
    raise ValueError(
        f"`{where}` has {channels} channels; pass 1 (gray), 3 (RGB) or 4 (RGBA) channels."
    )


def _check_size(height: int, width: int, where: str) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"`{where}` has zero size ({height} x {width}); pass images of at least 1 x 1 pixels.")


def _numpy_to_tensors(array: np.ndarray, where: str) -> List[torch.Tensor]:
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.floating) or array.dtype in (np.uint8, np.uint16)):
        raise ValueError(f"`{where}` has dtype {array.dtype}; pass uint8, uint16 or float arrays in [0, 1].")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(
            f"`{where}` has shape {array.shape}; numpy images are H x W, H x W x C or B x H x W x C."
        )
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"`{where}` has shape {array.shape}: the last axis must be the channels (1, 3 or 4); numpy images are "
            "H x W x C (pass a torch tensor for C x H x W)."
        )
    if array.shape[0] == 0:
        raise ValueError(f"`{where}` is an empty batch (shape {array.shape}); pass at least one image.")
    _check_size(array.shape[1], array.shape[2], where)
    if array.dtype == np.uint16:
        tensor = torch.from_numpy(array.astype(np.float32) / 65535.0)
    else:
        # a copy when the array is read-only (e.g. np.asarray of a PIL image): torch needs writable memory
        tensor = torch.from_numpy(np.ascontiguousarray(array) if array.flags.writeable else np.array(array))
    batch = _channels_to_rgb(_to_unit_float(tensor, where).permute(0, 3, 1, 2), where)
    return [image[None].contiguous() for image in batch]


def _tensor_to_tensors(tensor: torch.Tensor, where: str) -> List[torch.Tensor]:
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4:
        raise ValueError(f"`{where}` has shape {tuple(tensor.shape)}; tensors are C x H x W or B x C x H x W.")
    if tensor.shape[0] == 0:
        raise ValueError(f"`{where}` is an empty batch (shape {tuple(tensor.shape)}); pass at least one image.")
    _check_size(tensor.shape[2], tensor.shape[3], where)
    if tensor.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"`{where}` has shape {tuple(tensor.shape)}: dimension 1 must be the channels (1, 3 or 4); tensors are "
            "C x H x W or B x C x H x W (pass a numpy array for H x W x C)."
        )
    batch = _channels_to_rgb(_to_unit_float(tensor.detach().cpu(), where), where)
    return [image[None].contiguous() for image in batch]


def images_to_tensors(image: Union[ImageInput, Sequence[ImageInput]]) -> List[torch.Tensor]:
    """Convert the pipeline's ``image`` argument to a list of ``1 x 3 x H x W`` float32 tensors in [0, 1].

    Accepted: a PIL image of any mode (16-bit modes scaled by 65535, mode ``"F"`` read on PIL's
    0..255 scale, palette / CMYK / YCbCr / ... converted by PIL), a numpy array (``H x W``,
    ``H x W x C`` or ``B x H x W x C``; uint8, uint16 or float in [0, 1]), a tensor (``C x H x W`` or
    ``B x C x H x W``; float in [0, 1] or uint8), or a list of them. One or four channels mean
    gray or RGBA. Transparent images are composited on white.

    Raises:
        ValueError: an empty list, a zero-size image, an unknown type, dtype, layout or value range.
    """
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError("`image` is an empty list; pass at least one image.")
    tensors: List[torch.Tensor] = []
    for index, item in enumerate(items):
        where = "image" if len(items) == 1 and not isinstance(image, (list, tuple)) else f"image[{index}]"
        if isinstance(item, Image.Image):
            _check_size(item.height, item.width, where)
            array = _pil_to_array(item, where)
            tensors.append(_hwc_to_tensor(array))
        elif isinstance(item, np.ndarray):
            tensors.extend(_numpy_to_tensors(item, where))
        elif isinstance(item, torch.Tensor):
            tensors.extend(_tensor_to_tensors(item, where))
        else:
            raise ValueError(
                f"`{where}` has type {type(item).__name__}; pass a PIL image, a numpy array, a torch tensor or a list of them."
            )
    return tensors


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``B x C x H x W`` at the bottom and right to multiples of ``multiple``.

    Reflection padding, or replication along a side shorter than the padding it needs (where
    reflection is undefined).
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"`image` must be a B x C x H x W tensor, got {getattr(image, 'shape', type(image).__name__)}.")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"`multiple` must be an int >= 1, got {multiple!r}.")
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_w:
        image = F.pad(image, (0, pad_w, 0, 0), mode="reflect" if pad_w < width else "replicate")
    if pad_h:
        image = F.pad(image, (0, 0, 0, pad_h), mode="reflect" if pad_h < height else "replicate")
    return image


def size_groups(tensors: Sequence[torch.Tensor]) -> List[List[int]]:
    """Indices of ``... x H x W`` tensors grouped by ``(H, W)``, groups in order of first appearance.

    Raises:
        ValueError: an item is not a tensor with at least two dimensions.
    """
    for index, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor) or tensor.ndim < 2:
            raise ValueError(
                f"`tensors[{index}]` must be a ... x H x W tensor, got {getattr(tensor, 'shape', type(tensor).__name__)}; "
                "pass the output of images_to_tensors."
            )
    groups: Dict[Tuple[int, int], List[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape[-2:]), []).append(index)
    return list(groups.values())
