"""The super-resolution scoring: the pixel-space baseline (PIL bicubic), the paper's PSNR (CFM's
``calculate_PSNR`` per image) and the loop scoring methods over (HR, LR) pairs (the pairs
themselves: :func:`uplift_diffusers.image_processor.load_hr_lr`). Images are ``B x 3 x H x W`` floats in
[0, 1]; :func:`check_image_pair` is the check every image metric applies.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from uplift_diffusers.image_processor import load_hr_lr, pil_to_tensor
from uplift_diffusers.utils.validation import check_image_batch, check_values

#: A method of the protocol: a batch of LR images -> ``B x 3 x H x W`` images of the HR size.
SRMethod = Callable[["SRBatch"], torch.Tensor]
#: A per-image metric: ``(pred, target)`` -> a tensor of ``B`` values.
ImageMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bicubic_upscale(lr: Image.Image, size: Tuple[int, int]) -> torch.Tensor:
    """The pixel-space baseline: PIL bicubic resize to ``size`` (width, height), ``1 x 3 x H x W`` in [0, 1]."""
    return pil_to_tensor(lr.resize(size, Image.BICUBIC))


def check_unit_images(name: str, images: Any, min_size: int = 1) -> None:
    """ValueError unless ``images`` is a finite float ``B x 3 x H x W`` tensor in [0, 1] of at least
    ``min_size`` x ``min_size`` pixels (one reduction: a device synchronisation)."""
    check_image_batch(name, images, channels=3)
    height, width = images.shape[-2:]
    if min(height, width) < min_size:
        raise ValueError(f"`{name}` must be at least {min_size} x {min_size} pixels, got {height} x {width}; pass larger images.")
    check_values(name, images, 0.0, 1.0, hint="map [-1, 1] images with (x + 1) / 2 and clamp small overshoots with x.clamp(0, 1).")


def check_image_pair(pred: torch.Tensor, target: torch.Tensor, min_size: int = 1, names: Tuple[str, str] = ("pred", "target")) -> None:
    """:func:`check_unit_images` on both, and the same shape (nothing is resized)."""
    check_unit_images(names[0], pred, min_size)
    check_unit_images(names[1], target, min_size)
    if pred.shape != target.shape:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}; nothing is resized here, bring both to the same size first."
        )


def as_float_pair(pred: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Half-precision inputs are computed in float32; float32 / float64 are kept."""
    dtype = torch.promote_types(pred.dtype, target.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    return pred.to(dtype), target.to(dtype)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, ``(B,)`` (CFM's ``calculate_PSNR``): both images clamped to [0, 1],
    ``10 log10(1 / MSE)`` over all pixels and channels (torchmetrics ``peak_signal_noise_ratio``);
    identical images give ``inf``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    check_image_pair(pred, target)
    pred, target = as_float_pair(pred, target)
    return peak_signal_noise_ratio(pred, target, data_range=(0.0, 1.0), reduction="none", dim=(1, 2, 3))


@dataclass
class SRBatch:
    """(HR, LR) pairs scored together: ``hr`` / ``lr`` are ``B x 3 x H x W`` float32 in [0, 1] on
    the scoring device, ``lr_images`` the LR PIL images, ``indices`` the pairs' positions in the
    whole list (e.g. for per-image seeds)."""

    hr: torch.Tensor
    lr: torch.Tensor
    lr_images: List[Image.Image]
    indices: List[int]


class SRPairs:
    """The batches (:class:`SRBatch`) of ``items``, loaded lazily by ``load(item) -> (HR, LR)`` PIL images
    (default: ``item`` is an image file, :func:`load_hr_lr` at ``hr_size`` / ``lr_size``); ``indices``
    are the items' positions in the whole list (a process scoring a shard passes the shard's)."""

    def __init__(self, items: Sequence, hr_size: Optional[int] = None, lr_size: Optional[int] = None, batch_size: int = 1,
                 device: Union[str, torch.device, None] = None, load: Optional[Callable[[Any], Tuple[Image.Image, Image.Image]]] = None,
                 indices: Optional[Sequence[int]] = None):
        if load is None:
            load = lambda path: load_hr_lr(path, hr_size, lr_size)  # noqa: E731
        self.items = list(items)
        self.indices = list(range(len(self.items))) if indices is None else list(indices)
        self.load, self.batch_size, self.device = load, batch_size, device

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def __iter__(self) -> Iterator[SRBatch]:
        for start in range(0, len(self.items), self.batch_size):
            pairs = [self.load(item) for item in self.items[start : start + self.batch_size]]
            hr = torch.cat([pil_to_tensor(hr) for hr, _ in pairs]).to(self.device)
            lr = torch.cat([pil_to_tensor(lr) for _, lr in pairs]).to(self.device)
            yield SRBatch(hr, lr, [lr for _, lr in pairs], self.indices[start : start + self.batch_size])


@dataclass
class SRScores:
    """One method's per-image metric values (``values[metric]``, in batch order) and the seconds spent in it."""

    values: Dict[str, List[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        """How many images were scored."""
        return len(next(iter(self.values.values()), []))

    def mean(self, metric: str) -> float:
        """The mean of ``metric`` over the images (ValueError when nothing was scored)."""
        values = self.values.get(metric, [])
        if not values:
            raise ValueError(f"no {metric!r} values: nothing was scored with that metric.")
        return float(sum(values) / len(values))


def score_super_resolution(methods: Mapping[str, SRMethod], batches: Iterable[SRBatch], metrics: Optional[Mapping[str, ImageMetric]] = None,
                           on_output: Optional[Callable[[str, torch.Tensor, SRBatch], None]] = None) -> Dict[str, SRScores]:
    """``{name: SRScores}``: every method (``method(batch)`` -> images of the HR size) on every batch,
    its outputs clamped to [0, 1] and scored against the HR images with ``metrics`` (``{name:
    metric(pred, target) -> B values}``, default PSNR), and the seconds spent in the method.
    ``on_output(name, output, batch)`` sees every output (e.g. to feed FID). ValueError when a
    method returns another shape than the HR images."""
    if not methods:
        raise ValueError("`methods` is empty; pass at least one {name: method}.")
    metrics = {"psnr": psnr} if metrics is None else dict(metrics)
    scores = {name: SRScores({metric: [] for metric in metrics}) for name in methods}
    for batch in batches:
        for name, method in methods.items():
            start = time.perf_counter()
            output = method(batch).to(batch.hr.device, torch.float32).clamp(0, 1)
            scores[name].seconds += time.perf_counter() - start
            if output.shape != batch.hr.shape:
                raise ValueError(
                    f"method {name!r} returned {tuple(output.shape)} for the images {batch.indices}, "
                    f"expected {tuple(batch.hr.shape)} (the HR images' shape)."
                )
            for metric, function in metrics.items():
                scores[name].values[metric] += function(output, batch.hr).tolist()
            if on_output is not None:
                on_output(name, output, batch)
    return scores
