"""Reference (real) images for the text-to-image FID: square crop and resize, and export.

The text-to-image protocol compares square generated images with real photographs of any
aspect ratio: every real image is centre-cropped to a square (side = its shorter side) and
resized with PIL bicubic (antialiased when shrinking) to the generated size.
``evaluation.data.prepare_coco`` / ``evaluation.data.prepare_relaion`` can store them at that size
once (``--reference-size``); ``evaluation.tasks.eval_text_to_image`` applies the same function on the fly.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from PIL import Image

from uplift_diffusers.utils.atomic_files import atomic_save_image, atomic_write
from uplift_diffusers.image_processor import centre_crop


def square_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre square crop of ``image`` (RGB), PIL-bicubic resized to ``size`` x ``size`` when needed."""
    image = centre_crop(image.convert("RGB"), min(image.size))
    return image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC)


def export_reference(source, destination, size: Optional[int] = None) -> Path:
    """Copy ``source`` to ``destination`` unchanged (``size`` None), or store its square crop at
    ``size`` as PNG. An existing destination is kept (resumable); writes are atomic."""
    source, destination = Path(source), Path(destination)
    if not source.is_file():
        raise FileNotFoundError(f"reference image not found: {str(source)!r}; check the images folder.")
    if destination.is_file():
        return destination
    if size is None:
        return atomic_write(destination, lambda temporary: shutil.copyfile(source, temporary))
    with Image.open(source) as handle:
        image = square_crop_resize(handle, size)
    return atomic_save_image(image, destination, format="PNG")
