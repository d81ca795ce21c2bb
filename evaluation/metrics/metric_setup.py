"""The metric flags of the evaluation scripts, the metric objects they build and the record of
the metrics' definitions written to ``results.json``. ``--feature-extractor tiny-random`` is a
small seeded random network for offline tests only."""
from __future__ import annotations

import argparse
from importlib import metadata
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from evaluation.arguments import check_at_least, loading
from evaluation.metrics.image_metrics import CLIP_MODEL_ID, CLIPScorer, FIDAccumulator, PatchFID

FEATURE_EXTRACTORS = ("inception", "tiny-random")
#: CFM's patch-FID: 4 crops of 512 x 512 per image.
PATCH_SIZE = 512
NUM_PATCHES = 4

_CFM = "CompVis/fm-boosting fmboost/metrics.py"
DEFINITIONS = {
    "fid": (
        "torchmetrics FrechetInceptionDistance(feature=2048, normalize=False, reset_real_features=True, "
        "antialias=False) on uint8 images ((2x - 1) * 127.5 + 127.5 clipped to [0, 255] and truncated: CFM's "
        f"un_normalize_ims) [{_CFM}; torchmetrics 1.7.1 resize as in mwalmer-umd/UPLiFT requirements.txt]"
    ),
    "patch_fid": (
        "the same as fid on {num_patches} random {patch} x {patch} crops per image pair, the same box in the "
        "generated and the real image (torchvision RandomCrop.get_params order, image i's boxes drawn with seed {seed} + i), "
        f"crops only [{_CFM}]"
    ),
    "ssim": (
        "torchmetrics StructuralSimilarityIndexMeasure(data_range=1.0) defaults (Gaussian 11 x 11, sigma 1.5, "
        f"K1 0.01, K2 0.03, whole reflect-padded SSIM map) per image, mean over all images [{_CFM}]"
    ),
    "psnr": f"per image 10 log10(1 / MSE) after clamping both images to [0, 1], mean over all images [{_CFM} calculate_PSNR]",
    "clip": (
        "clip-score package: transformers CLIPModel {model}, CLIPProcessor (PIL backend) on the 8-bit image "
        "(round(255 x)), tokenizer(padding=True, truncation=True); 100 x mean cosine of the L2-normalised "
        "get_image_features / get_text_features, not clamped [PyPI clip-score 0.2.1, AniAggarwal/clip-score]"
    ),
}


class TinyRandomFeatures(nn.Module):
    """A fixed, seeded random feature extractor for offline tests (strided conv, ReLU, global average
    pool on uint8 batches): the same network in every process and run. Not a meaningful metric."""

    num_features = 16

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, self.num_features, kernel_size=4, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.5)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=generator) * 0.1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(images.float() / 255.0)).mean(dim=(2, 3))


def resolve_feature_extractor(spec: Union[str, nn.Module, None]) -> Optional[nn.Module]:
    """``"inception"`` / None -> None (the backend's Inception); ``"tiny-random"`` -> a new
    :class:`TinyRandomFeatures`; an ``nn.Module`` is returned as given."""
    if spec is None or spec == "inception":
        return None
    if spec == "tiny-random":
        return TinyRandomFeatures()
    if isinstance(spec, nn.Module):
        return spec
    raise ValueError(f"feature extractor must be one of {FEATURE_EXTRACTORS} or an nn.Module, got {spec!r}.")


def add_fid_arguments(parser: argparse.ArgumentParser) -> None:
    """``--no-fid``, ``--feature-extractor``, ``--patch-size``, ``--num-patches``."""
    parser.add_argument("--no-fid", action="store_true", help="skip FID and patch-FID")
    parser.add_argument("--feature-extractor", choices=FEATURE_EXTRACTORS, default="inception",
                        help="FID features: 'inception' (default; the backend's network) or 'tiny-random' (offline tests only)")
    parser.add_argument("--patch-size", type=int, default=PATCH_SIZE,
                        help=f"patch-FID crop side (default {PATCH_SIZE}, the paper's)")
    parser.add_argument("--num-patches", type=int, default=NUM_PATCHES, help=f"patch-FID crops per image (default {NUM_PATCHES})")


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """``--no-clip``, ``--clip-model``."""
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP score")
    parser.add_argument("--clip-model", default=CLIP_MODEL_ID,
                        help=f"Hub id or local folder of the transformers CLIPModel (default {CLIP_MODEL_ID}, the paper's)")


def check_metric_arguments(args) -> None:
    """ValueError for bad metric flags (those of :func:`add_fid_arguments`)."""
    check_at_least(args, {"patch_size": 1, "num_patches": 1})


def build_fid(spec: Union[str, nn.Module, None], device: torch.device) -> FIDAccumulator:
    """A :class:`FIDAccumulator` with the feature extractor ``spec`` names, on ``device``."""
    return FIDAccumulator(feature_extractor=resolve_feature_extractor(spec)).to(device)


def build_patch_fid(spec: Union[str, nn.Module, None], device: torch.device, patch: int, num_patches: int, seed: int) -> PatchFID:
    """A :class:`PatchFID` over a new accumulator; ``seed`` draws the boxes of updates without per-image ``seeds``."""
    return PatchFID(build_fid(spec, device), patch=patch, num_patches=num_patches, seed=seed)


def build_clip_scorer(model: str, device: torch.device) -> nn.Module:
    """The paper's :class:`CLIPScorer` with the CLIP model ``model`` (Hub id or folder) on ``device``."""
    return loading("the CLIP model", model, "--clip-model DIR", lambda: CLIPScorer(model_id=model)).to(device)


def fid_results(fid: nn.Module, patch_fid: PatchFID) -> Dict[str, float]:
    """``fid`` / ``patch_fid`` of a row (collective call)."""
    values = dict(fid.compute())
    values.update({f"patch_{key}": value for key, value in patch_fid.compute().items()})
    return values


def _version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def metrics_record(args, fid: bool, clip: bool = False, pixel: bool = False, feature_extractor: Any = None,
                   clip_scorer: Any = None) -> Dict[str, Any]:
    """What ``results.json`` says about the metrics computed (``fid``, ``clip``, ``pixel``: PSNR / SSIM):
    backends, models, each metric's exact definition and the library versions; an injected
    ``feature_extractor`` / ``clip_scorer`` is recorded by its class name."""
    record: Dict[str, Any] = {"fid_backend": None, "feature_extractor": None, "clip_model": None, "definitions": {}}
    packages = ["torchmetrics"]
    if pixel:
        record["definitions"].update(psnr=DEFINITIONS["psnr"], ssim=DEFINITIONS["ssim"])
    if fid:
        record["fid_backend"] = "torchmetrics"
        record["feature_extractor"] = type(feature_extractor).__name__ if feature_extractor is not None else args.feature_extractor
        patch_fid = DEFINITIONS["patch_fid"].format(num_patches=args.num_patches, patch=args.patch_size, seed=args.seed)
        record["definitions"].update(fid=DEFINITIONS["fid"], patch_fid=patch_fid)
        packages.append("torch-fidelity")
    if clip:
        record["clip_model"] = type(clip_scorer).__name__ if clip_scorer is not None else args.clip_model
        record["definitions"]["clip"] = DEFINITIONS["clip"].format(model=record["clip_model"])
        packages.append("transformers")
    record["library_versions"] = {name: _version(name) for name in packages}
    return record
