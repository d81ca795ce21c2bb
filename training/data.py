"""Training data: any folder of images (recursive), made into square crops of ``resolution`` px
(the crop modes: docs/training.md). ``center`` is the authors' preprocessing (torchvision
``Resize(resolution, BILINEAR)`` then ``CenterCrop(resolution)``), reproduced with PIL to the pixel.
Images are never upscaled: one whose shorter side is under ``resolution`` is skipped, an
unreadable one too, each counted with its reason (also when a file breaks after indexing).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from uplift_diffusers.image_processor import list_images, pil_to_tensor

CROP_MODES = ("center", "random", "random_resized")


def resized_size(width: int, height: int, resolution: int) -> Tuple[int, int]:
    """(width, height) after resizing the shorter side to ``resolution`` as torchvision's
    ``Resize(resolution)`` does: the longer side becomes ``int(resolution * long / short)``."""
    if width <= height:
        return resolution, int(resolution * height / width)
    return int(resolution * width / height), resolution


class ImageFolderDataset(Dataset):
    """Square crops of ``resolution`` px from the images under ``folders`` (searched recursively).
    ``crop``, ``crops_per_image`` (a fixed, seeded set of random crops per image) and
    ``max_upscale_crop`` are the recipe's ``data`` keys, checked by the configuration; ``seed`` seeds the fixed crops."""

    def __init__(
        self,
        folders: Union[str, Path, Sequence[Union[str, Path]]],
        resolution: int,
        crops_per_image: Optional[int] = None,
        max_upscale_crop: float = 1.0,
        seed: int = 0,
        crop: str = "random_resized",
    ):
        self.resolution = resolution
        self.crop = crop
        self.crops_per_image = crops_per_image if crop != "center" else None
        self.max_upscale_crop = max_upscale_crop
        self.seed = seed
        self.too_small: Dict[str, str] = {}  # the files skipped: path -> size
        self.unreadable: Dict[str, str] = {}  # path -> error
        self.files: List[Path] = []
        self.sizes: List[tuple] = []
        for path in list_images(folders):
            try:
                with Image.open(path) as handle:
                    size = handle.size
            except (OSError, UnidentifiedImageError) as error:
                self.unreadable[str(path)] = str(error)
                continue
            if min(size) < resolution:
                self.too_small[str(path)] = f"{size[0]} x {size[1]} px"
                continue
            self.files.append(path)
            self.sizes.append(size)
        if not self.files:
            raise ValueError(
                f"no usable image of at least {resolution} px under {folders} "
                f"({len(self.too_small)} too small, {len(self.unreadable)} unreadable)."
            )

    @property
    def num_skipped(self) -> int:
        return len(self.too_small) + len(self.unreadable)

    def __len__(self) -> int:
        return len(self.files) * (self.crops_per_image or 1)

    def describe(self) -> str:
        """How many images are used and how many are skipped, and why, e.g. ``"1240 images usable
        (1240 items per epoch, crop=center at 1024 px); skipped 12: 10 shorter side < 1024 px, 2 unreadable"``."""
        return (
            f"{len(self.files)} images usable ({len(self)} items per epoch, crop={self.crop} at {self.resolution} px); "
            f"skipped {self.num_skipped}: {len(self.too_small)} shorter side < {self.resolution} px, "
            f"{len(self.unreadable)} unreadable"
        )

    def crop_params(self, index: int) -> Dict:
        """Resize (None or the (width, height) the whole image is resized to first), crop box
        (in the pixels of the resized image, or of the original when ``resize`` is None), flip
        flag and cache key of item ``index``."""
        image_index, crop_index = divmod(index, self.crops_per_image or 1)
        width, height = self.sizes[image_index]
        res = self.resolution
        rng = random.Random(hash((self.seed, image_index, crop_index))) if self.crops_per_image else random
        path = self.files[image_index]
        stat = path.stat()
        identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if self.crop == "random_resized":
            short = min(width, height)
            side = int(round(short * rng.uniform(min(res / short, self.max_upscale_crop), self.max_upscale_crop)))
            side = max(res, min(side, short))
            left, top = rng.randint(0, width - side), rng.randint(0, height - side)
            flip = rng.random() < 0.5
            box = (left, top, left + side, top + side)
            key = f"{identity}|box={box}|flip={flip}|res={res}"
            return {"image_index": image_index, "resize": None, "box": box, "flip": flip, "key": key}
        resize = resized_size(width, height, res)
        if self.crop == "center":
            left, top = int(round((resize[0] - res) / 2.0)), int(round((resize[1] - res) / 2.0))
        else:
            left, top = rng.randint(0, resize[0] - res), rng.randint(0, resize[1] - res)
        box = (left, top, left + res, top + res)
        key = f"{identity}|resize={resize[0]}x{resize[1]}|box={box}|res={res}"
        return {"image_index": image_index, "resize": resize, "box": box, "flip": False, "key": key}

    def __getitem__(self, index: int) -> Dict:
        params = self.crop_params(index)
        path = self.files[params["image_index"]]
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            self.unreadable.setdefault(str(path), str(error))  # counted once, however often it fails
            return {"pixel_values": None, "key": params["key"], "path": str(path), "error": str(error)}
        if params["resize"] is not None:  # torchvision's Resize on a PIL image is this call
            image = image.resize(params["resize"], Image.BILINEAR)
        image = image.crop(params["box"])
        if image.size != (self.resolution, self.resolution):
            image = image.resize((self.resolution, self.resolution), Image.BICUBIC, reducing_gap=None)
        if params["flip"]:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return {"pixel_values": pil_to_tensor(image)[0], "key": params["key"]}


def collate_skipping_failures(items: List[Dict]) -> Dict:
    """Stack a batch, dropping items whose image failed to load; ``failed`` lists them as
    ``(path, error)`` so that the training process counts them (DataLoader workers count in
    their own copy of the dataset)."""
    good = [item for item in items if item["pixel_values"] is not None]
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in good]) if good else None,
        "keys": [item["key"] for item in good],
        "failed": [(item["path"], item["error"]) for item in items if item["pixel_values"] is None],
    }
