"""Build the FID / patch-FID / CLIP metric objects the evaluation scripts use.

``--feature-extractor inception`` (default) is the FID Inception-v3 network of torch-fidelity
(the ``eval`` extra); ``tiny-random`` is a small seeded random convolutional network for
offline tests only (its numbers mean nothing). ``--clip-model`` is a Hub id or a local
``CLIPModel`` folder. A caller running a script in-process can instead pass its own
``nn.Module`` feature extractor or ready-made :class:`~evaluation.metrics.CLIPScorer`.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from evaluation.metrics import CLIPScorer, FIDAccumulator, PatchFID

__all__ = ["FEATURE_EXTRACTORS", "TinyRandomFeatures", "resolve_feature_extractor", "build_fid", "build_patch_fid", "build_clip_scorer"]

FEATURE_EXTRACTORS = ("inception", "tiny-random")


class TinyRandomFeatures(nn.Module):
    """A fixed random feature extractor for tests: strided conv, ReLU, global average pool.

    Seeded, so every process and every run gets the same network. Not a meaningful metric.
    """

    num_features = 16

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, self.num_features, kernel_size=4, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.5)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=generator) * 0.1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(images.float())).mean(dim=(2, 3))


def resolve_feature_extractor(spec: Union[str, nn.Module, None]) -> Optional[nn.Module]:
    """``"inception"`` / None -> None (the metrics' default Inception); ``"tiny-random"`` -> a new
    :class:`TinyRandomFeatures`; an ``nn.Module`` is returned as given."""
    if spec is None or spec == "inception":
        return None
    if spec == "tiny-random":
        return TinyRandomFeatures()
    if isinstance(spec, nn.Module):
        return spec
    raise ValueError(f"feature extractor must be one of {FEATURE_EXTRACTORS} or an nn.Module, got {spec!r}.")


def build_fid(spec: Union[str, nn.Module, None], device: torch.device) -> FIDAccumulator:
    """An :class:`FIDAccumulator` with the given feature extractor, on ``device``."""
    return FIDAccumulator(feature_extractor=resolve_feature_extractor(spec)).to(device)


def build_patch_fid(spec: Union[str, nn.Module, None], device: torch.device, patch: int, num_patches: int, seed: int) -> PatchFID:
    """A :class:`PatchFID` with the given feature extractor, crop size, crops per image and seed."""
    return PatchFID(
        feature_extractor=resolve_feature_extractor(spec), patch=patch, num_patches=num_patches, seed=seed
    ).to(device)


def build_clip_scorer(model_id: str, device: torch.device) -> CLIPScorer:
    """A :class:`CLIPScorer` loading ``model_id`` (Hub id or local folder), on ``device``."""
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"clip model must be a Hub id or a local CLIPModel folder, got {model_id!r}.")
    return CLIPScorer(model_id=model_id).to(device)
