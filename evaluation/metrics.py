"""Image metrics for the paper's tables: PSNR, SSIM, FID, patch-FID and CLIP score.

Conventions
-----------
* Images are ``B x 3 x H x W`` floating-point tensors with values in ``[0, 1]``. Nothing is
  clamped, resized or cast behind your back: images out of range, with the wrong shape or with
  non-finite values raise ``ValueError`` (clamp decoder outputs with ``x.clamp(0, 1)`` first).
* PSNR and SSIM are computed per image (``data_range=1``; SSIM with the standard 11 x 11
  Gaussian window, sigma 1.5, border excluded as in scikit-image) with ``torchmetrics``.
* FID keeps running sums of features in float64 (``torchmetrics``' ``FrechetInceptionDistance``
  states) and evaluates the Frechet distance in float64 with :func:`frechet_distance`.
* Distributed evaluation: :class:`FIDAccumulator`, :class:`PatchFID` and :class:`CLIPScorer`
  keep their statistics in ``torchmetrics`` metric states reduced with ``sum``. When
  ``torch.distributed`` is initialised, ``compute()`` all-reduces those states over every
  process before computing the result (and restores the local states afterwards), so every
  rank feeds only its own shard of the images and all ranks get the same global number.
  Call ``compute()`` on every rank: it is a collective operation.

Optional dependencies
---------------------
The real feature extractors are imported only when used. The Inception network of the default
FID comes from ``torch-fidelity`` and the default CLIP model from the Hugging Face Hub; both
need the ``eval`` extra (``pip install "uplift-diffusers[eval]"``) or a cached model.
Importing this module imports neither ``torchmetrics`` nor ``transformers`` (``torchmetrics``
imports ``torchvision`` whenever it is installed), so it never loads ``torchvision``.
Tests inject small feature extractors (``feature_extractor=``, ``model=``, ``tokenizer=``).
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "psnr",
    "ssim",
    "frechet_distance",
    "FIDAccumulator",
    "random_patch_anchors",
    "extract_patches",
    "PatchFID",
    "clip_preprocess",
    "CLIPScorer",
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_CLIP_MODEL",
    "EVAL_INSTALL_HINT",
]

EVAL_INSTALL_HINT = 'pip install "uplift-diffusers[eval]"'
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
# Normalisation constants of the OpenAI CLIP image encoders.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------
def _check_images(name: str, images: Any, min_size: int = 1) -> None:
    """Raise ValueError unless ``images`` is a finite float B x 3 x H x W tensor in [0, 1]."""
    if not isinstance(images, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape B x 3 x H x W, got {type(images).__name__}; "
            "convert the images with torch.as_tensor and permute them to channels-first."
        )
    if images.ndim != 4:
        raise ValueError(
            f"{name} must have 4 dimensions (B x 3 x H x W), got shape {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0) for a single image."
        )
    if images.shape[1] != 3:
        raise ValueError(
            f"{name} must have 3 (RGB) channels in dimension 1, got shape {tuple(images.shape)}; "
            "pass channels-first RGB images (convert grey or RGBA images to RGB first)."
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(images.shape)}); pass at least one image.")
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor with values in [0, 1], got dtype {images.dtype}; "
            "for uint8 images use images.float() / 255."
        )
    height, width = images.shape[-2:]
    if min(height, width) < min_size:
        raise ValueError(
            f"{name} must be at least {min_size} x {min_size} pixels, got {height} x {width}; "
            "pass larger images."
        )
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} contains NaN or infinite values; check the model that produced the images.")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name} must have values in [0, 1], got values in [{low:.6g}, {high:.6g}]; "
            "map [-1, 1] images with (x + 1) / 2 and clamp small overshoots with x.clamp(0, 1)."
        )


def _check_pair(pred: Tensor, target: Tensor, min_size: int = 1, names: Tuple[str, str] = ("pred", "target")) -> None:
    _check_images(names[0], pred, min_size)
    _check_images(names[1], target, min_size)
    if pred.shape != target.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}; nothing is resized here, bring both to the same size first."
        )


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _as_float_pair(pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """Half-precision inputs are computed in float32; float32 / float64 are kept."""
    dtype = torch.promote_types(pred.dtype, target.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    return pred.to(dtype), target.to(dtype)


# --------------------------------------------------------------------------------------------
# PSNR / SSIM
# --------------------------------------------------------------------------------------------
def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio of each image, in dB.

    Args:
        pred: B x 3 x H x W float images in [0, 1].
        target: reference images of the same shape.

    Returns:
        Tensor of shape ``(B,)``: ``10 * log10(1 / MSE)`` over all pixels and channels of each
        image (data range 1). Identical images give ``inf``.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(pred, target)
    pred, target = _as_float_pair(pred, target)
    return peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Structural similarity of each image (Wang et al. 2004, the standard settings).

    Gaussian window of 11 x 11 pixels with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, data range 1,
    computed per channel and averaged over channels and over the pixels whose whole window lies
    inside the image (the 5-pixel border is left out, as in the reference MATLAB code). This
    matches ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=...)``.

    The SSIM map comes from ``torchmetrics``' ``structural_similarity_index_measure``; its own
    per-image average also counts the border pixels (computed on reflect-padded images), which
    would differ from the reference values, so the map is cropped here before averaging.

    Args:
        pred: B x 3 x H x W float images in [0, 1], at least 11 x 11 pixels.
        target: reference images of the same shape.

    Returns:
        Tensor of shape ``(B,)`` with one SSIM value per image.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(pred, target, min_size=SSIM_KERNEL_SIZE)
    pred, target = _as_float_pair(pred, target)
    _, ssim_map = structural_similarity_index_measure(
        pred,
        target,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_SIZE,
        reduction="none",
        data_range=1.0,
        return_full_image=True,
    )
    border = (SSIM_KERNEL_SIZE - 1) // 2
    return ssim_map[:, :, border:-border, border:-border].mean(dim=(1, 2, 3))


# --------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------
def _as_float64(name: str, value: Any) -> Tensor:
    if isinstance(value, np.ndarray) or isinstance(value, Tensor):
        tensor = torch.as_tensor(value).detach().to(device="cpu", dtype=torch.float64)
    else:
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}.")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values; recompute the feature statistics.")
    return tensor


def _nonnegative_eigenvalues(eigenvalues: Tensor) -> Tensor:
    """Zero the eigenvalues that are round-off (below ``max * dim * eps``, the numpy rank tolerance).

    A covariance estimated from fewer samples than features is singular; its zero eigenvalues come
    out of ``eigh`` as tiny numbers of either sign, and their square roots (about 1e-8 each) would
    otherwise add up to a visible bias in the distance.
    """
    tolerance = float(eigenvalues.max().clamp(min=0.0)) * eigenvalues.shape[-1] * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))


def _symmetric_sqrt(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    roots = _nonnegative_eigenvalues(eigenvalues).sqrt()
    return (eigenvectors * roots) @ eigenvectors.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))``.

    The trace of the matrix square root is computed as the sum of the square roots of the
    eigenvalues of the symmetric matrix ``sigma1^(1/2) sigma2 sigma1^(1/2)``, which has the same
    eigenvalues as ``sigma1 sigma2`` but is symmetric positive semi-definite, so it needs no
    complex arithmetic and is stable for singular covariances (fewer samples than features).

    Args:
        mu1, mu2: mean feature vectors of shape ``(d,)`` (tensors or numpy arrays).
        sigma1, sigma2: covariance matrices of shape ``(d, d)``, symmetric.

    Returns:
        The squared Frechet distance as a Python float (this is the number reported as FID).
    """
    mu1, mu2 = _as_float64("mu1", mu1), _as_float64("mu2", mu2)
    sigma1, sigma2 = _as_float64("sigma1", sigma1), _as_float64("sigma2", sigma2)
    if mu1.ndim != 1:
        raise ValueError(f"mu1 must be a vector of shape (d,), got shape {tuple(mu1.shape)}.")
    dim = mu1.shape[0]
    if mu2.shape != (dim,):
        raise ValueError(f"mu2 must have shape ({dim},) like mu1, got {tuple(mu2.shape)}; use features of the same extractor.")
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (dim, dim):
            raise ValueError(
                f"{name} must be a ({dim}, {dim}) covariance matrix matching the mean vectors, got shape "
                f"{tuple(sigma.shape)}."
            )
        scale = float(sigma.abs().max()) or 1.0
        asymmetry = float((sigma - sigma.T).abs().max())
        if asymmetry > 1e-6 * scale:
            raise ValueError(
                f"{name} must be symmetric, got max |{name} - {name}.T| = {asymmetry:.3g} (scale {scale:.3g}); "
                "pass a covariance matrix, e.g. numpy.cov(features, rowvar=False)."
            )
    sigma1 = 0.5 * (sigma1 + sigma1.T)
    sigma2 = 0.5 * (sigma2 + sigma2.T)
    root1 = _symmetric_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    middle = 0.5 * (middle + middle.T)
    trace_covmean = _nonnegative_eigenvalues(torch.linalg.eigvalsh(middle)).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2.0 * trace_covmean
    return float(distance)


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------
class _CheckedFeatureExtractor(nn.Module):
    """Runs an injected extractor without gradients and checks that it returns ``(N, d)`` features."""

    def __init__(self, extractor: nn.Module, num_features: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = num_features

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.extractor(images)
        if not isinstance(features, Tensor) or features.ndim != 2 or features.shape != (images.shape[0], self.num_features):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"feature_extractor must return a tensor of shape (N, {self.num_features}) for N = "
                f"{images.shape[0]} images, got {shape}; flatten pooled features with .flatten(1)."
            )
        if not bool(torch.isfinite(features).all()):
            raise ValueError("feature_extractor returned NaN or infinite features; check the extractor and its inputs.")
        return features

    def train(self, mode: bool = True) -> "_CheckedFeatureExtractor":
        """The extractor always stays in evaluation mode."""
        return super().train(False)


def _require_torch_fidelity() -> None:
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ImportError(
            "The default FID feature extractor is the Inception-v3 network of torch-fidelity, which is "
            f"not installed. Install the evaluation extra with `{EVAL_INSTALL_HINT}`, or pass your own "
            "network as feature_extractor=."
        )


class FIDAccumulator(nn.Module):
    """Accumulates feature statistics of real and generated images and computes the FID.

    Built on ``torchmetrics.image.fid.FrechetInceptionDistance``: its float64 running sums (sum of
    features, sum of outer products, count) are the state, reduced with ``sum`` across processes
    when ``torch.distributed`` is initialised (see the module docstring), and the distance is then
    computed in float64 by :func:`frechet_distance`.

    Args:
        feature_extractor: an ``nn.Module`` mapping a B x 3 x H x W float batch in [0, 1] to
            ``(B, d)`` features. ``None`` (default) uses the 2048-d pool features of the FID
            Inception-v3 network from ``torch-fidelity`` (weights downloaded on first use); images
            are then quantised to uint8 by rounding and resized to 299 x 299 by that network.
        num_features: ``d``; read from ``feature_extractor.num_features`` when that exists,
            otherwise found by running the extractor once on a random 1 x 3 x 299 x 299 batch.
        reset_real_features: ``False`` keeps the real statistics across :meth:`reset`, so a
            reference set is encoded once for several evaluated models.
        inception_antialias: resize of the default Inception input to 299 x 299. ``False``
            (default) is torch-fidelity's TensorFlow-1-compatible bilinear resize, the classic FID
            protocol; ``True`` is torchmetrics' default antialiased bilinear resize (numbers differ
            slightly). Ignored for an injected extractor.
    """

    def __init__(
        self,
        feature_extractor: Optional[nn.Module] = None,
        num_features: Optional[int] = None,
        reset_real_features: bool = True,
        inception_antialias: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(reset_real_features, bool):
            raise ValueError(f"reset_real_features must be a bool, got {reset_real_features!r}.")
        if not isinstance(inception_antialias, bool):
            raise ValueError(f"inception_antialias must be a bool, got {inception_antialias!r}.")
        if feature_extractor is None:
            if num_features is not None:
                raise ValueError(
                    f"num_features={num_features!r} only applies to an injected feature_extractor; the default "
                    "Inception extractor always gives 2048 features. Leave num_features unset."
                )
            _require_torch_fidelity()
            from torchmetrics.image.fid import FrechetInceptionDistance

            self.uses_default_inception = True
            self.metric = FrechetInceptionDistance(
                feature=2048, reset_real_features=reset_real_features, normalize=False, antialias=inception_antialias
            )
        else:
            if not isinstance(feature_extractor, nn.Module):
                raise ValueError(
                    f"feature_extractor must be a torch.nn.Module, got {type(feature_extractor).__name__}; "
                    "wrap a function in an nn.Module subclass."
                )
            feature_extractor.eval()
            if num_features is None:
                num_features = getattr(feature_extractor, "num_features", None)
            if num_features is None:
                parameter = next(feature_extractor.parameters(), None)
                device = parameter.device if parameter is not None else torch.device("cpu")
                with torch.no_grad():
                    probe = feature_extractor(torch.rand(1, 3, 299, 299, device=device))
                num_features = int(probe.shape[-1])
            num_features = _check_positive_int("num_features", num_features)
            from torchmetrics.image.fid import FrechetInceptionDistance

            self.uses_default_inception = False
            self.metric = FrechetInceptionDistance(
                feature=_CheckedFeatureExtractor(feature_extractor, num_features),
                reset_real_features=reset_real_features,
                normalize=True,
            )

    @property
    def num_real(self) -> int:
        """Number of real images seen by this process (before any cross-process reduction)."""
        return int(self.metric.real_features_num_samples)

    @property
    def num_fake(self) -> int:
        """Number of generated images seen by this process (before any cross-process reduction)."""
        return int(self.metric.fake_features_num_samples)

    def update(self, images: Tensor, real: bool) -> None:
        """Add a batch of B x 3 x H x W float images in [0, 1] to the real or the generated set.

        The images must be on the same device as the accumulator (move it with ``.to(device)``).
        """
        if not isinstance(real, bool):
            raise ValueError(f"real must be True (reference images) or False (generated images), got {real!r}.")
        _check_images("images", images)
        if self.uses_default_inception:
            images = (images * 255.0).round().to(torch.uint8)
        self.metric.update(images, real=real)

    def statistics(self, real: bool) -> Tuple[Tensor, Tensor]:
        """Mean ``(d,)`` and unbiased covariance ``(d, d)`` in float64 of the real or generated features.

        Reduced across processes when ``torch.distributed`` is initialised (collective call).
        """
        if not isinstance(real, bool):
            raise ValueError(f"real must be True or False, got {real!r}.")
        prefix = "real" if real else "fake"
        with self.metric.sync_context():
            total = getattr(self.metric, f"{prefix}_features_sum").clone()
            outer = getattr(self.metric, f"{prefix}_features_cov_sum").clone()
            count = int(getattr(self.metric, f"{prefix}_features_num_samples"))
        if count < 2:
            which = "real" if real else "generated"
            raise RuntimeError(
                f"FID needs at least 2 {which} images, got {count}; call update(images, real={real}) with more images."
            )
        mean = total / count
        covariance = (outer - count * torch.outer(mean, mean)) / (count - 1)
        return mean, covariance

    def compute(self) -> float:
        """FID between the generated and the real images seen so far (all processes)."""
        mu_real, sigma_real = self.statistics(real=True)
        mu_fake, sigma_fake = self.statistics(real=False)
        return frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real)

    def reset(self) -> None:
        """Forget the generated statistics, and the real ones unless ``reset_real_features=False``."""
        self.metric.reset()


# --------------------------------------------------------------------------------------------
# patch-FID
# --------------------------------------------------------------------------------------------
def random_patch_anchors(
    height: int,
    width: int,
    patch: int = 512,
    num_patches: int = 4,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Top-left corners of ``num_patches`` random ``patch`` x ``patch`` crops inside an image.

    Every crop lies fully inside the ``height`` x ``width`` image. Use the same anchors for a
    generated image and its real counterpart (the patch-FID protocol).

    Returns:
        int64 tensor of shape ``(num_patches, 2)`` holding ``(top, left)`` per crop.
    """
    height = _check_positive_int("height", height)
    width = _check_positive_int("width", width)
    patch = _check_positive_int("patch", patch)
    num_patches = _check_positive_int("num_patches", num_patches)
    if patch > height or patch > width:
        raise ValueError(
            f"patch={patch} is larger than the {height} x {width} image; use a patch size of at most "
            f"{min(height, width)}."
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
    top = torch.randint(0, height - patch + 1, (num_patches,), generator=generator)
    left = torch.randint(0, width - patch + 1, (num_patches,), generator=generator)
    return torch.stack([top, left], dim=1)


def extract_patches(images: Tensor, anchors: Tensor, patch: int) -> Tensor:
    """Crop ``patch`` x ``patch`` squares at the given anchors.

    Args:
        images: B x C x H x W tensor.
        anchors: ``(K, 2)`` integer ``(top, left)`` corners used for every image, or
            ``(B, K, 2)`` corners per image.
        patch: side of the square crops.

    Returns:
        Tensor of shape ``(B * K, C, patch, patch)``, ordered image by image
        (image 0 crops 0..K-1, then image 1, ...).
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a B x C x H x W tensor, got {shape}.")
    patch = _check_positive_int("patch", patch)
    if not isinstance(anchors, Tensor) or anchors.dtype.is_floating_point or anchors.dtype == torch.bool:
        raise ValueError(
            f"anchors must be an integer tensor of (top, left) corners, got "
            f"{anchors.dtype if isinstance(anchors, Tensor) else type(anchors).__name__}; use random_patch_anchors."
        )
    batch, _, height, width = images.shape
    if anchors.ndim == 2:
        anchors = anchors.unsqueeze(0).expand(batch, -1, -1)
    if anchors.ndim != 3 or anchors.shape[0] != batch or anchors.shape[2] != 2:
        raise ValueError(
            f"anchors must have shape (K, 2) or ({batch}, K, 2) for a batch of {batch} images, got "
            f"{tuple(anchors.shape)}."
        )
    tops, lefts = anchors[..., 0], anchors[..., 1]
    if bool((tops < 0).any() or (lefts < 0).any() or (tops + patch > height).any() or (lefts + patch > width).any()):
        raise ValueError(
            f"anchors put {patch} x {patch} crops outside the {height} x {width} images (tops in "
            f"[{int(tops.min())}, {int(tops.max())}], lefts in [{int(lefts.min())}, {int(lefts.max())}]); "
            "compute them with random_patch_anchors for this image size."
        )
    crops = [
        images[index, :, top : top + patch, left : left + patch]
        for index in range(batch)
        for top, left in anchors[index].tolist()
    ]
    return torch.stack(crops, dim=0)


class PatchFID(nn.Module):
    """patch-FID: FID between random crops taken at the same places in generated and real images.

    For each generated / real image pair, ``num_patches`` anchors are drawn with
    :func:`random_patch_anchors` from this object's own seeded generator, the same crops are cut
    out of both images and fed to an :class:`FIDAccumulator` (generated crops as fake, real crops
    as real). The anchor sequence is deterministic for a given ``seed`` and order of updates; in
    distributed evaluation pass a different seed per rank (e.g. ``seed + rank``) so that ranks do
    not repeat each other's crops. The statistics are gathered across processes like FID's.

    Args:
        feature_extractor, num_features, inception_antialias: as for :class:`FIDAccumulator`
            (default Inception-v3, which resizes each crop to 299 x 299).
        patch: side of the square crops in pixels (512 for 1024 x 1024 images).
        num_patches: crops per image pair.
        seed: seed of the anchor generator; :meth:`reset` restarts the sequence.
    """

    def __init__(
        self,
        feature_extractor: Optional[nn.Module] = None,
        num_features: Optional[int] = None,
        patch: int = 512,
        num_patches: int = 4,
        seed: int = 0,
        inception_antialias: bool = False,
    ) -> None:
        super().__init__()
        self.patch = _check_positive_int("patch", patch)
        self.num_patches = _check_positive_int("num_patches", num_patches)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.fid = FIDAccumulator(
            feature_extractor=feature_extractor, num_features=num_features, inception_antialias=inception_antialias
        )

    def update(self, generated: Tensor, real: Tensor) -> Tensor:
        """Add a batch of generated images and their real counterparts (same shape, in [0, 1]).

        Returns:
            The anchors used, int64 tensor of shape ``(B, num_patches, 2)`` of ``(top, left)``.
        """
        _check_pair(generated, real, names=("generated", "real"))
        batch, _, height, width = generated.shape
        if self.patch > height or self.patch > width:
            raise ValueError(
                f"patch={self.patch} is larger than the {height} x {width} images; build PatchFID with "
                f"patch <= {min(height, width)}."
            )
        anchors = torch.stack(
            [
                random_patch_anchors(height, width, self.patch, self.num_patches, generator=self.generator)
                for _ in range(batch)
            ]
        )
        self.fid.update(extract_patches(generated, anchors, self.patch), real=False)
        self.fid.update(extract_patches(real, anchors, self.patch), real=True)
        return anchors

    def compute(self) -> float:
        """patch-FID over all crops seen so far (all processes)."""
        return self.fid.compute()

    def reset(self) -> None:
        """Forget all crops and restart the anchor sequence from ``seed``."""
        self.fid.reset()
        self.generator.manual_seed(self.seed)


# --------------------------------------------------------------------------------------------
# CLIP score
# --------------------------------------------------------------------------------------------
def clip_preprocess(
    images: Tensor,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> Tensor:
    """CLIP image preprocessing written with torch (the steps of ``CLIPImageProcessor``).

    Resize so that the shorter side is ``size`` (bicubic, antialiased; the longer side becomes
    ``int(size * long / short)``), clamp to [0, 1] as 8-bit pipelines do, centre-crop
    ``size`` x ``size`` and normalise with the CLIP mean / std. Images already ``size`` x ``size``
    are only normalised.

    Args:
        images: B x 3 x H x W float images in [0, 1].

    Returns:
        float32 tensor of shape ``B x 3 x size x size``.
    """
    size = _check_positive_int("size", size)
    _check_images("images", images)
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std must hold 3 values (std > 0), got mean={mean!r}, std={std!r}.")
    images = images.float()
    height, width = images.shape[-2:]
    if (height, width) != (size, size):
        if height <= width:
            new_height, new_width = size, int(size * width / height)
        else:
            new_height, new_width = int(size * height / width), size
        images = F.interpolate(
            images, size=(new_height, new_width), mode="bicubic", align_corners=False, antialias=True
        ).clamp(0.0, 1.0)
        top, left = (new_height - size) // 2, (new_width - size) // 2
        images = images[:, :, top : top + size, left : left + size]
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def _pooled(output: Any) -> Tensor:
    """Projected embeddings from ``get_*_features`` (a tensor, or an output with ``pooler_output``)."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, Tensor):
        return pooled
    raise ValueError(
        f"the CLIP model's get_image_features / get_text_features returned {type(output).__name__}; expected a "
        "tensor or an output with .pooler_output (a transformers CLIPModel)."
    )


class CLIPScorer(nn.Module):
    """CLIP score between images and their captions.

    Per image: ``100 * max(cos(E_image, E_text), 0)`` with the CLIP image and text embeddings;
    :meth:`compute` returns the average over all images seen (all processes). This is the
    definition documented by ``torchmetrics.multimodal.CLIPScore`` and by Hessel et al. (2021)
    with weight 100; torchmetrics' code clamps the average instead of each image, which gives the
    same number whenever no cosine is negative (always the case for real CLIP models on
    captioned images).

    Args:
        model: a ``transformers.CLIPModel`` (or another ``nn.Module`` with ``get_image_features``,
            ``get_text_features`` and a CLIP ``config``). ``None`` loads ``model_id`` from the
            Hub or the local cache on construction.
        tokenizer: the matching tokenizer (e.g. ``transformers.CLIPTokenizer``); inject it
            together with ``model``, or leave both ``None``.
        model_id: Hub id used when ``model`` and ``tokenizer`` are ``None``.
        truncate_captions: captions longer than the text encoder's context
            (``max_position_embeddings``, 77 tokens for OpenAI CLIP) are truncated with a warning;
            ``False`` raises ValueError instead.

    Images are preprocessed by :func:`clip_preprocess` at the model's ``vision_config.image_size``.
    The model is kept in evaluation mode and run without gradients.
    """

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        tokenizer: Any = None,
        model_id: str = DEFAULT_CLIP_MODEL,
        truncate_captions: bool = True,
    ) -> None:
        super().__init__()
        if (model is None) != (tokenizer is None):
            raise ValueError(
                f"pass model and tokenizer together or neither (got model={type(model).__name__}, "
                f"tokenizer={type(tokenizer).__name__}); a CLIP model needs its own tokenizer."
            )
        if not isinstance(truncate_captions, bool):
            raise ValueError(f"truncate_captions must be a bool, got {truncate_captions!r}.")
        if model is None:
            if not isinstance(model_id, str) or not model_id:
                raise ValueError(f"model_id must be a Hugging Face model id or local folder, got {model_id!r}.")
            from transformers import CLIPModel, CLIPTokenizer

            model = CLIPModel.from_pretrained(model_id)
            tokenizer = CLIPTokenizer.from_pretrained(model_id)
        for method in ("get_image_features", "get_text_features"):
            if not isinstance(model, nn.Module) or not callable(getattr(model, method, None)):
                raise ValueError(f"model must provide {method}() like transformers.CLIPModel, got {type(model).__name__}.")
        config = getattr(model, "config", None)
        try:
            self.image_size = int(config.vision_config.image_size)
            self.max_length = int(config.text_config.max_position_embeddings)
        except AttributeError as error:
            raise ValueError(
                f"model.config must be a CLIPConfig with vision_config.image_size and "
                f"text_config.max_position_embeddings, got {type(config).__name__}."
            ) from error
        if not callable(tokenizer):
            raise ValueError(f"tokenizer must be callable like a transformers tokenizer, got {type(tokenizer).__name__}.")
        from torchmetrics.aggregation import SumMetric

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.truncate_captions = truncate_captions
        self._score_sum = SumMetric(nan_strategy="error").set_dtype(torch.float64)
        self._count = SumMetric(nan_strategy="error").set_dtype(torch.float64)

    def train(self, mode: bool = True) -> "CLIPScorer":
        """The CLIP model always stays in evaluation mode."""
        return super().train(False)

    def _device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def _tokenize(self, captions: Sequence[str]) -> Any:
        lengths = [len(ids) for ids in self.tokenizer(list(captions))["input_ids"]]
        too_long = [index for index, length in enumerate(lengths) if length > self.max_length]
        if too_long:
            message = (
                f"captions {too_long[:5]} have {max(lengths)} tokens, more than the text encoder's "
                f"{self.max_length}"
            )
            if not self.truncate_captions:
                raise ValueError(f"{message}; shorten them or build CLIPScorer(truncate_captions=True).")
            warnings.warn(f"{message}; they are truncated to {self.max_length} tokens.", stacklevel=3)
        return self.tokenizer(
            list(captions), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def cosine_similarity(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """Cosine similarity between each image's and its caption's CLIP embedding, shape ``(B,)``."""
        _check_images("images", images)
        if isinstance(captions, str) or not isinstance(captions, (list, tuple)):
            raise ValueError(
                f"captions must be a list of strings (one per image), got {type(captions).__name__}; "
                "wrap a single caption in a list."
            )
        if len(captions) != images.shape[0]:
            raise ValueError(
                f"captions has {len(captions)} entries for {images.shape[0]} images; pass exactly one caption per image."
            )
        bad = [index for index, caption in enumerate(captions) if not isinstance(caption, str) or not caption.strip()]
        if bad:
            raise ValueError(f"captions {bad[:5]} are empty or not strings; every image needs a non-empty caption.")
        device = self._device()
        pixel_values = clip_preprocess(images, size=self.image_size).to(device)
        tokens = self._tokenize(captions)
        with torch.no_grad():
            image_embeds = _pooled(self.model.get_image_features(pixel_values=pixel_values)).float()
            text_embeds = _pooled(
                self.model.get_text_features(
                    input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
                )
            ).float()
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        return (image_embeds * text_embeds).sum(dim=-1)

    def score(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """Per-image CLIP score ``100 * max(cos, 0)``, shape ``(B,)``, without accumulating it."""
        return 100.0 * self.cosine_similarity(images, captions).clamp(min=0.0)

    def update(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """Score a batch of B x 3 x H x W images in [0, 1] with one caption each; returns the per-image scores."""
        scores = self.score(images, captions)
        self._score_sum.update(scores.double().sum())
        self._count.update(torch.tensor(float(scores.shape[0]), dtype=torch.float64))
        return scores

    def compute(self) -> float:
        """Average CLIP score over all images seen so far (all processes; collective call)."""
        with self._score_sum.sync_context(), self._count.sync_context():
            total = float(self._score_sum.sum_value)
            count = float(self._count.sum_value)
        if count == 0:
            raise RuntimeError("CLIPScorer.compute() called before any update(images, captions).")
        return total / count

    def reset(self) -> None:
        """Forget all accumulated scores."""
        self._score_sum.reset()
        self._count.reset()
