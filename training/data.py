"""Training data: any folder of images (recursive), resized and cropped to a square resolution.

Unreadable or too-small images are skipped and counted, never crash the run. Training items
are random crops (random scale, position and horizontal flip); with ``crops_per_image`` the
crops are a fixed, seeded set per image (so a latent cache hits in later epochs).
Validation items are centre crops.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from uplift_diffusers.image_io import list_images


@dataclass
class SkipCounts:
    too_small: List[str] = field(default_factory=list)
    unreadable: List[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.too_small) + len(self.unreadable)


class ImageFolderDataset(Dataset):
    """Square crops of ``resolution`` px from the images under ``folders``.

    Args:
        folders: one or more directories, searched recursively.
        resolution: side of the crops (px).
        train: random crops (True) or centre crops (False).
        crops_per_image: with ``train``, a fixed number of seeded crops per image instead of
            fresh random ones every time.
        max_upscale_crop: the largest fraction of the shorter side a random crop may span
            before being resized to ``resolution`` (1.0 = the whole shorter side).
        seed: seed of the fixed crops.
    """

    def __init__(
        self,
        folders: Union[str, Path, Sequence[Union[str, Path]]],
        resolution: int,
        train: bool = True,
        crops_per_image: Optional[int] = None,
        max_upscale_crop: float = 1.0,
        seed: int = 0,
    ):
        if resolution < 8:
            raise ValueError(f"`resolution` must be >= 8, got {resolution}.")
        if crops_per_image is not None and crops_per_image < 1:
            raise ValueError(f"`crops_per_image` must be >= 1 or None, got {crops_per_image}.")
        self.resolution = resolution
        self.train = train
        self.crops_per_image = crops_per_image if train else None
        self.max_upscale_crop = max_upscale_crop
        self.seed = seed
        self.skipped = SkipCounts()
        self.files: List[Path] = []
        self.sizes: List[tuple] = []
        for path in list_images(folders):
            try:
                with Image.open(path) as handle:
                    size = handle.size
            except (OSError, UnidentifiedImageError):
                self.skipped.unreadable.append(str(path))
                continue
            if min(size) < resolution:
                self.skipped.too_small.append(str(path))
                continue
            self.files.append(path)
            self.sizes.append(size)
        if not self.files:
            raise ValueError(
                f"no usable image of at least {resolution} px under {folders} "
                f"({len(self.skipped.too_small)} too small, {len(self.skipped.unreadable)} unreadable)."
            )

    def __len__(self) -> int:
        return len(self.files) * (self.crops_per_image or 1)

    def crop_params(self, index: int) -> Dict:
        """Crop box (in original pixels), flip flag and key of item ``index``."""
        image_index, crop_index = divmod(index, self.crops_per_image or 1)
        width, height = self.sizes[image_index]
        short = min(width, height)
        if not self.train:
            side, flip = short, False
            left, top = (width - side) // 2, (height - side) // 2
        else:
            rng = random.Random(hash((self.seed, image_index, crop_index))) if self.crops_per_image else random
            low = self.resolution / short
            side = int(round(short * rng.uniform(min(low, self.max_upscale_crop), self.max_upscale_crop)))
            side = max(self.resolution, min(side, short))
            left, top = rng.randint(0, width - side), rng.randint(0, height - side)
            flip = rng.random() < 0.5
        box = (left, top, left + side, top + side)
        path = self.files[image_index]
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|box={box}|flip={flip}|res={self.resolution}"
        return {"image_index": image_index, "box": box, "flip": flip, "key": key}

    def __getitem__(self, index: int) -> Dict:
        params = self.crop_params(index)
        path = self.files[params["image_index"]]
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB").crop(params["box"])
        except (OSError, UnidentifiedImageError):
            self.skipped.unreadable.append(str(path))
            return {"pixel_values": None, "key": params["key"]}
        if image.size != (self.resolution, self.resolution):
            image = image.resize((self.resolution, self.resolution), Image.BICUBIC, reducing_gap=None)
        if params["flip"]:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return {"pixel_values": torch.from_numpy(array).permute(2, 0, 1).contiguous(), "key": params["key"]}


def collate_skipping_failures(items: List[Dict]) -> Dict:
    """Stack a batch, dropping items whose image failed to load (counted by the dataset)."""
    good = [item for item in items if item["pixel_values"] is not None]
    if not good:
        return {"pixel_values": None, "keys": []}
    return {"pixel_values": torch.stack([item["pixel_values"] for item in good]), "keys": [item["key"] for item in good]}
