"""Small image helpers shared by the pipelines, training and evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


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
    """RGB PIL image -> 1 x 3 x H x W float tensor in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()
