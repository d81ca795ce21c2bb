"""Image metrics of the paper's tables, computed as the paper computed them: FID, patch-FID, SSIM
and PSNR with CFM's code (``CompVis/fm-boosting``, ``fmboost/metrics.py``), the CLIP score as the
``clip-score`` package, with the same libraries (torchmetrics, torch-fidelity, transformers).

* FID sees CFM's truncating uint8 conversion (:func:`to_uint8` ``"cfm"``), and torchmetrics with
  ``antialias=False``: the authors ran torchmetrics 1.7.1, which always resized the Inception
  input with torch-fidelity's TF1-compatible bilinear (1.9's default gives other numbers).
* patch-FID: 4 random 512 x 512 crops per image pair, the same box in both, drawn as
  torchvision's ``RandomCrop.get_params`` draws them.
* SSIM and PSNR are averaged over all images (CFM averages per batch, then over batches: the
  same for equal batches, and here independent of the batching).

Every accumulator keeps torchmetrics states: under ``torch.distributed`` ``compute()`` (a
collective call) gathers them over all processes.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from evaluation.sr_protocol import as_float_pair, check_image_pair, check_unit_images, psnr

#: ``"cfm"``: CFM's truncating conversion (FID); ``"round"``: what an 8-bit PNG of the image holds.
UINT8_METHODS = ("cfm", "round")
SSIM_KERNEL_SIZE = 11
#: CLIP score model of the paper (the `clip-score` package's default).
CLIP_MODEL_ID = "openai/clip-vit-base-patch32"


def to_uint8(images: Tensor, method: str = "cfm") -> Tensor:
    """Quantise ``B x 3 x H x W`` float images in [0, 1] to uint8. ``"cfm"``: CFM's ``un_normalize_ims``
    of ``2x - 1``, ``((2x - 1) * 127.5 + 127.5).clip(0, 255)`` truncated (what the paper's FID sees);
    ``"round"``: ``round(255 x)``, what an 8-bit PNG of the image holds (clip-score reads such files).
    Both give back ``k`` exactly for an image read from an 8-bit file."""
    check_unit_images("images", images)
    values = images.float()
    if method == "cfm":
        return ((values * 2 - 1) * 127.5 + 127.5).clip(0, 255).to(torch.uint8)
    if method == "round":
        return (values * 255).round().clip(0, 255).to(torch.uint8)
    raise ValueError(f"method must be one of {UINT8_METHODS}, got {method!r}.")


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM, ``(B,)``, as torchmetrics ``StructuralSimilarityIndexMeasure(data_range=1.0)``: 11 x 11
    Gaussian window, sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, reflect-padded, the whole map averaged
    (torchmetrics >= 1.4.3, as the 1.7.1 the authors ran; older releases, like scikit-image, leave the
    border out). ``pred`` / ``target``: ``B x 3 x H x W`` in [0, 1], at least 11 x 11 pixels."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    check_image_pair(pred, target, min_size=SSIM_KERNEL_SIZE)
    pred, target = as_float_pair(pred, target)
    return structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")


class FIDAccumulator(nn.Module):
    """The paper's FID: torchmetrics ``FrechetInceptionDistance(feature=2048, normalize=False)`` on
    :func:`to_uint8` ``"cfm"`` images; its states are summed across processes on :meth:`compute`.

    ``feature_extractor``: an ``nn.Module`` taking the uint8 batch and returning ``(B, d)`` features
    (default: torch-fidelity's FID Inception-v3, downloaded on first use). ``inception_antialias``:
    ``False`` (the paper's) is torch-fidelity's TF1-compatible bilinear resize that torchmetrics
    <= 1.7 always used; ``True`` torchmetrics 1.9's default."""

    def __init__(self, feature_extractor: Optional[nn.Module] = None, reset_real_features: bool = True,
                 inception_antialias: bool = False) -> None:
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance

        if feature_extractor is None:
            # torchmetrics < 1.8 has no antialias option: it always used the TF1-compatible resize
            options = {"antialias": inception_antialias}
            if "antialias" not in inspect.signature(FrechetInceptionDistance.__init__).parameters:
                if inception_antialias:
                    raise ValueError("inception_antialias=True needs a newer torchmetrics; upgrade torchmetrics.")
                options = {}
            self.metric = FrechetInceptionDistance(
                feature=2048, normalize=False, reset_real_features=reset_real_features, **options
            )
        else:
            extractor = feature_extractor.eval().requires_grad_(False)
            self.metric = FrechetInceptionDistance(feature=extractor, normalize=False, reset_real_features=reset_real_features)

    @property
    def num_real(self) -> int:
        """Number of real images seen by this process (before any cross-process reduction)."""
        return int(self.metric.real_features_num_samples)

    @property
    def num_fake(self) -> int:
        """Number of generated images seen by this process (before any cross-process reduction)."""
        return int(self.metric.fake_features_num_samples)

    def features(self, images: Tensor) -> Tensor:
        """The ``(B, d)`` features (the extractor's dtype) of B x 3 x H x W float images in [0, 1]:
        what :meth:`update` adds, for keeping per-image results and adding them later (:meth:`add_features`)."""
        with torch.no_grad():
            return self.metric.inception(to_uint8(images, "cfm"))

    def add_features(self, features: Tensor, real: bool) -> None:
        """Add ``(B, d)`` features from :meth:`features` to the real or the generated set (as torchmetrics' update does)."""
        metric = self.metric
        metric.orig_dtype = features.dtype
        features = features.to(metric.real_features_sum.device).double()
        prefix = "real" if real else "fake"
        setattr(metric, f"{prefix}_features_sum", getattr(metric, f"{prefix}_features_sum") + features.sum(dim=0))
        setattr(metric, f"{prefix}_features_cov_sum", getattr(metric, f"{prefix}_features_cov_sum") + features.t().mm(features))
        setattr(metric, f"{prefix}_features_num_samples", getattr(metric, f"{prefix}_features_num_samples") + features.shape[0])
        metric._update_count += 1  # as Metric.update does: compute() knows the states were updated
        metric._computed = None

    def update(self, images: Tensor, real: bool) -> None:
        """Add a batch of B x 3 x H x W float images in [0, 1] (on the accumulator's device) to one set."""
        with torch.no_grad():
            self.metric.update(to_uint8(images, "cfm"), real=real)

    def compute(self) -> Dict[str, float]:
        """``{"fid": ...}`` between the generated and the real images seen so far (all processes)."""
        return {"fid": float(self.metric.compute())}

    def reset(self) -> None:
        """Forget the generated statistics, and the real ones unless ``reset_real_features=False``."""
        self.metric.reset()


def random_patch_anchors(height: int, width: int, patch: int = 512, num_patches: int = 4,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """``(num_patches, 2)`` int64 ``(top, left)`` corners of random ``patch`` x ``patch`` crops, drawn crop by
    crop as ``torchvision.transforms.RandomCrop.get_params`` draws them (CFM's patch-FID): ``top``,
    then ``left``, each a ``(1,)`` ``randint`` from ``generator``; an image of exactly the patch size
    gives ``(0, 0)`` without drawing."""
    if patch > height or patch > width:
        raise ValueError(
            f"patch={patch} is larger than the {height} x {width} images (CFM's crops must fit); use a patch "
            f"size of at most {min(height, width)}."
        )
    anchors = torch.zeros(num_patches, 2, dtype=torch.int64)
    if (height, width) == (patch, patch):
        return anchors
    for index in range(num_patches):
        anchors[index, 0] = torch.randint(0, height - patch + 1, size=(1,), generator=generator)
        anchors[index, 1] = torch.randint(0, width - patch + 1, size=(1,), generator=generator)
    return anchors


def extract_patches(images: Tensor, anchors: Tensor, patch: int) -> Tensor:
    """``(B * K, C, patch, patch)`` crops of ``images`` (image by image) at ``anchors``: ``(K, 2)``
    ``(top, left)`` corners for every image, or ``(B, K, 2)`` per image."""
    if anchors.ndim == 2:
        anchors = anchors.unsqueeze(0).expand(images.shape[0], -1, -1)
    crops = [
        images[index, :, top : top + patch, left : left + patch]
        for index in range(images.shape[0])
        for top, left in anchors[index].tolist()
    ]
    return torch.stack(crops, dim=0)


class PatchFID(nn.Module):
    """patch-FID (CFM's): FID on ``num_patches`` random crops cut at the same boxes from each generated /
    real image pair (:func:`random_patch_anchors`), only the crops fed to ``accumulator``. With
    ``seeds`` (one per image, the scripts pass ``seed + image index``) an image's boxes depend on
    nothing else: not its batch, its process or a resumed run; without, they come from this object's
    generator seeded ``seed`` (:meth:`reset` restarts it)."""

    def __init__(self, accumulator: FIDAccumulator, patch: int = 512, num_patches: int = 4, seed: int = 0) -> None:
        super().__init__()
        self.patch, self.num_patches, self.seed = patch, num_patches, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.accumulator = accumulator

    def anchors(self, generated: Tensor, real: Tensor, seeds: Optional[Sequence[int]] = None) -> Tensor:
        """The boxes of a batch, ``(B, num_patches, 2)``: drawn from this object's generator in turn,
        or with ``seeds`` (one per image) from a generator seeded with the image's seed, so that
        an image's boxes depend on nothing else (not its batch, process or a resumed run)."""
        check_image_pair(generated, real, names=("generated", "real"))
        batch, _, height, width = generated.shape
        if seeds is not None and len(seeds) != batch:
            raise ValueError(f"seeds has {len(seeds)} entries for a batch of {batch} images; pass one seed per image.")
        generators = [self.generator] * batch if seeds is None else [torch.Generator().manual_seed(int(s)) for s in seeds]
        return torch.stack(
            [random_patch_anchors(height, width, self.patch, self.num_patches, generator=g) for g in generators]
        )

    def features(self, generated: Tensor, real: Tensor, seeds: Optional[Sequence[int]] = None) -> Tuple[Tensor, Tensor]:
        """``(generated, real)`` crop features, ``(B * num_patches, d)`` each (image by image), of the
        boxes of :meth:`anchors`; :meth:`add_features` adds them."""
        anchors = self.anchors(generated, real, seeds)
        features = self.accumulator.features
        return features(extract_patches(generated, anchors, self.patch)), features(extract_patches(real, anchors, self.patch))

    def add_features(self, generated: Tensor, real: Tensor) -> None:
        """Add crop features from :meth:`features` (generated as fake, real as real)."""
        self.accumulator.add_features(generated, real=False)
        self.accumulator.add_features(real, real=True)

    def update(self, generated: Tensor, real: Tensor, seeds: Optional[Sequence[int]] = None) -> Tensor:
        """Add generated images and their real counterparts (same shape, in [0, 1]); returns the boxes,
        ``(B, num_patches, 2)``."""
        anchors = self.anchors(generated, real, seeds)
        self.accumulator.update(extract_patches(generated, anchors, self.patch), real=False)
        self.accumulator.update(extract_patches(real, anchors, self.patch), real=True)
        return anchors

    def compute(self) -> Dict[str, float]:
        """The accumulator's numbers over all crops seen so far (all processes)."""
        return self.accumulator.compute()

    def reset(self) -> None:
        """Forget all crops and restart the box sequence from ``seed``."""
        self.accumulator.reset()
        self.generator.manual_seed(self.seed)


def _pooled(output: Any) -> Tensor:
    """Projected embeddings from ``get_*_features``: a tensor (transformers 4), or an output whose
    ``pooler_output`` holds them (transformers 5)."""
    return output if isinstance(output, Tensor) else output.pooler_output


class CLIPScorer(nn.Module):
    """The paper's CLIP score (the ``clip-score`` package) with a transformers CLIP model.

    Images: ``processor(images=...)`` (``CLIPProcessor``; loaded with ``backend="pil"``, the PIL
    image processor of transformers 4.48 that the package used: shortest side to the model's size
    with PIL bicubic, centre crop, /255, OpenAI mean / std) on the 8-bit images. Captions:
    ``processor.tokenizer(captions, padding=True, truncation=True, max_length=...)``. Embeddings:
    ``get_image_features`` / ``get_text_features``, L2-normalised; score ``100 x`` mean cosine.
    torchmetrics' ``CLIPScore`` is not the paper's: it clamps each score at 0.

    Args:
        model: a ``transformers.CLIPModel``. ``None`` loads ``model_id``.
        processor: the matching ``CLIPProcessor``; inject it together with ``model``, or leave both ``None``.
        model_id: Hub id or local folder used when ``model`` and ``processor`` are ``None``
            (default ``openai/clip-vit-base-patch32``).
        truncate_captions: captions longer than the text encoder's context
            (``max_position_embeddings``, 77 tokens for OpenAI CLIP) are truncated, as the authors'
            clip-score does, with a warning; ``False`` raises ValueError instead.
    """

    def __init__(self, model: Optional[nn.Module] = None, processor: Any = None, model_id: Optional[str] = None,
                 truncate_captions: bool = True) -> None:
        super().__init__()
        from torchmetrics.aggregation import SumMetric

        self._cosine_sum = SumMetric(nan_strategy="error").set_dtype(torch.float64)
        self._count = SumMetric(nan_strategy="error").set_dtype(torch.float64)
        if (model is None) != (processor is None):
            raise ValueError(
                f"pass model and processor together or neither (got model={type(model).__name__}, "
                f"processor={type(processor).__name__}); a CLIP model needs its own processor."
            )
        if model is None:
            import transformers
            from transformers import CLIPModel, CLIPProcessor

            model_id = model_id or CLIP_MODEL_ID
            model = CLIPModel.from_pretrained(model_id)
            # the PIL image processor: transformers 5 names it backend="pil", 4.x use_fast=False
            pil_backend = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}
            processor = CLIPProcessor.from_pretrained(model_id, **pil_backend)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.model = model.eval()
        self.processor = processor
        self.truncate_captions = truncate_captions

    def train(self, mode: bool = True) -> "CLIPScorer":
        """The CLIP model always stays in evaluation mode."""
        return super().train(False)

    def cosine_similarity(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """Cosine similarity between each image's and its caption's CLIP embedding, shape ``(B,)``."""
        from PIL import Image

        if len(captions) != images.shape[0]:
            raise ValueError(
                f"captions has {len(captions)} entries for {images.shape[0]} images; pass exactly one caption per image."
            )
        arrays = to_uint8(images, "round").permute(0, 2, 3, 1).cpu().numpy()
        pil_images = [Image.fromarray(array, "RGB") for array in arrays]
        device = next(self.model.parameters()).device
        pixel_values = self.processor(images=pil_images, return_tensors="pt")["pixel_values"].to(device)
        tokens = self._tokenize(list(captions))
        with torch.no_grad():
            image_embeds = _pooled(self.model.get_image_features(pixel_values=pixel_values))
            text_embeds = _pooled(self.model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                                               attention_mask=tokens["attention_mask"].to(device)))
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True).to(torch.float32)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True).to(torch.float32)
        return (image_embeds.float() * text_embeds.float()).sum(dim=-1)

    def update(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """Score a batch of B x 3 x H x W images in [0, 1] with one caption each; returns the per-image
        scores ``100 * cos`` (not clamped), shape ``(B,)``."""
        scores = 100.0 * self.cosine_similarity(images, captions)
        self._cosine_sum.update(scores.double().sum() / 100.0)
        self._count.update(torch.tensor(float(scores.shape[0]), dtype=torch.float64))
        return scores

    def compute(self) -> float:
        """``100 x`` the mean cosine over all images seen so far (all processes; collective call)."""
        with self._cosine_sum.sync_context(), self._count.sync_context():
            total = float(self._cosine_sum.sum_value)
            count = float(self._count.sum_value)
        if count == 0:
            raise RuntimeError(f"{type(self).__name__}.compute() called before any update(images, captions).")
        return 100.0 * total / count

    def reset(self) -> None:
        """Forget all accumulated scores."""
        self._cosine_sum.reset()
        self._count.reset()

    def _tokenize(self, captions: List[str]) -> Any:
        tokenizer = self.processor.tokenizer
        lengths = [len(ids) for ids in tokenizer(captions)["input_ids"]]
        too_long = [index for index, length in enumerate(lengths) if length > self.max_length]
        if too_long:
            message = f"captions {too_long[:5]} have {max(lengths)} tokens, more than the text encoder's {self.max_length}"
            if not self.truncate_captions:
                raise ValueError(f"{message}; shorten them or build CLIPScorer(truncate_captions=True).")
            warnings.warn(f"{message}; they are truncated to {self.max_length} tokens.", stacklevel=4)
        return tokenizer(captions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
