"""Tests of evaluation/metrics/image_metrics.py: the paper's metric definitions.

Offline, CPU, small: FID gets small random conv extractors, the CLIP score a tiny random-weight
transformers model built here (nothing is downloaded). Reference numbers come from
independent computations: CFM's formulas (``CompVis/fm-boosting`` ``fmboost/metrics.py``)
written out in numpy / torch, scipy's ``sqrtm`` for the Frechet distance, scipy's Gaussian filter for SSIM, scikit-image for PSNR, PIL for the image resizes,
and torchvision's ``RandomCrop.get_params`` for the crop boxes.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch
from PIL import Image
from torch import nn

from evaluation.metrics import image_metrics as metrics
from tiny_models import make_tiny_clip, make_tokenizer
from evaluation.metrics.image_metrics import (
    CLIPScorer,
    FIDAccumulator,
    PatchFID,
    extract_patches,
    psnr,
    random_patch_anchors,
    ssim,
    to_uint8,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711])


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
class TinyFeatures(nn.Module):
    """Small random conv feature extractor: B x 3 x H x W (uint8 or float in [0, 255]) -> B x 12."""

    num_features = 12

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, self.num_features, 3, stride=2, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 255.0)


class RecordingFeatures(TinyFeatures):
    """TinyFeatures that also keeps a copy of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        return super().forward(images)


def _smooth_images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Natural-looking smooth random images in [0, 1] (upsampled noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 8 + 1, width // 8 + 1, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


def _degrade(images: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = 0.05 * torch.randn(images.shape, generator=generator)
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    return (blurred + noise).clamp(0, 1)


def _cfm_un_normalize(ims: torch.Tensor) -> torch.Tensor:
    """CFM's ``un_normalize_ims``: [-1, 1] -> uint8 by ``(x * 127.5 + 127.5).clip(0, 255).to(uint8)``."""
    return ((ims * 127.5) + 127.5).clip(0, 255).to(torch.uint8)


def _scipy_frechet(feats1: np.ndarray, feats2: np.ndarray) -> float:
    mu1, sigma1 = feats1.mean(0), np.cov(feats1, rowvar=False)
    mu2, sigma2 = feats2.mean(0), np.cov(feats2, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(sigma1 @ sigma2))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _ssim_reference(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM of one C x H x W image pair: 11-tap Gaussian (sigma 1.5) on mirror-padded planes (torch's
    reflect padding = scipy's "mirror"), C1 = 0.01^2, C2 = 0.03^2, the whole map averaged."""
    def blur(plane):
        return scipy.ndimage.gaussian_filter(plane, sigma=1.5, mode="mirror", truncate=5 / 1.5)

    maps = []
    for p, t in zip(pred.astype(np.float64), target.astype(np.float64)):
        mu_p, mu_t = blur(p), blur(t)
        var_p = np.maximum(blur(p * p) - mu_p**2, 0)
        var_t = np.maximum(blur(t * t) - mu_t**2, 0)
        cov = blur(p * t) - mu_p * mu_t
        c1, c2 = 0.01**2, 0.03**2
        maps.append(((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2)))
    return float(np.mean(maps))


# --------------------------------------------------------------------------------------------
# import hygiene
# --------------------------------------------------------------------------------------------
@pytest.mark.slow  # a new interpreter importing the library: 5.4 s (measured)
def test_import_does_not_load_the_metric_backends():
    # The metric back-ends are imported when a metric first needs them. (torchvision and
    # transformers do load: the module rests on the library, whose diffusers import brings them.)
    script = textwrap.dedent(
        """
        import sys
        import evaluation.metrics.image_metrics
        print(sorted(m for m in ("torchmetrics", "torch_fidelity") if m in sys.modules))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# uint8 conversion
# --------------------------------------------------------------------------------------------
def test_to_uint8_cfm_is_un_normalize_ims_of_2x_minus_1():
    images = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(0))
    images[0, 0, 0, :5] = torch.tensor([0.0, 1.0, 0.5, 0.999, 254.6 / 255])
    ours = to_uint8(images, "cfm")
    assert ours.dtype == torch.uint8 and ours.shape == images.shape
    assert torch.equal(ours, _cfm_un_normalize(images * 2 - 1))
    # truncation, not rounding: 0.5 -> 127 (round: 128), 0.999 -> 254 (round: 255)
    assert ours[0, 0, 0, :5].tolist() == [0, 255, 127, 254, 254]
    assert to_uint8(images, "round")[0, 0, 0, :5].tolist() == [0, 255, 128, 255, 255]
    # away from the ulp boundaries this is floor(255 x); rounding is what an 8-bit PNG stores
    floor = np.floor(images.double().numpy() * 255)
    assert np.mean(ours.numpy() == floor) > 0.999 and np.abs(ours.numpy() - floor).max() <= 1
    assert np.array_equal(to_uint8(images, "round").numpy(), (images.numpy() * 255).round().astype(np.uint8))


def test_to_uint8_gives_back_8bit_images_exactly():
    levels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).reshape(1, 3, 16, 16)
    as_float = levels.float() / 255  # what pil_to_tensor gives for an 8-bit file
    assert torch.equal(to_uint8(as_float, "cfm"), levels)
    assert torch.equal(to_uint8(as_float, "round"), levels)
    with pytest.raises(ValueError, match="method must be one of"):
        to_uint8(as_float, "floor")


# --------------------------------------------------------------------------------------------
# PSNR / SSIM
# --------------------------------------------------------------------------------------------
def test_psnr_is_cfm_calculate_psnr_per_image():
    from skimage.metrics import peak_signal_noise_ratio

    target = _smooth_images(3, 40, 56, seed=1)
    pred = _degrade(target, seed=2)
    ours = psnr(pred, target)
    assert ours.shape == (3,)
    # CFM: clamp to [0, 1], per-image MSE over C, H, W, 20 log10(1 / sqrt(MSE))
    p, t = pred.double().clamp(0, 1), target.double().clamp(0, 1)
    mse = ((p - t) ** 2).mean(dim=(1, 2, 3))
    cfm = 20 * torch.log10(1 / torch.sqrt(mse))
    np.testing.assert_allclose(ours.double().numpy(), cfm.numpy(), rtol=0, atol=1e-4)
    skimage = [peak_signal_noise_ratio(t_.numpy(), p_.numpy(), data_range=1.0) for p_, t_ in zip(pred.double(), target.double())]
    np.testing.assert_allclose(ours.double().numpy(), skimage, rtol=0, atol=1e-4)
    assert np.all((cfm.numpy() > 20) & (cfm.numpy() < 30))  # noise of std 0.05 plus a blur
    assert torch.isinf(psnr(target, target)).all()


def test_ssim_is_torchmetrics_ssim_with_data_range_1():
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    target = _smooth_images(5, 40, 56, seed=3)
    pred = _degrade(target, seed=4)
    ours = ssim(pred, target)
    assert ours.shape == (5,)
    expected = [_ssim_reference(p.numpy(), t.numpy()) for p, t in zip(pred, target)]
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=0, atol=1e-5)
    # the metric object CFM uses, accumulated over uneven batches, averages these per-image values
    metric = StructuralSimilarityIndexMeasure(data_range=1.0)
    metric.update(pred[:3], target[:3])
    metric.update(pred[3:], target[3:])
    assert float(metric.compute()) == pytest.approx(float(ours.mean()), abs=1e-6)
    torch.testing.assert_close(ssim(target, target), torch.ones(5), atol=1e-6, rtol=0)
    assert np.all((np.array(expected) > 0.2) & (np.array(expected) < 0.95))


def test_psnr_ssim_on_photos(shared_path):
    folder = shared_path("data", "bsds500", "test")
    files = sorted(folder.glob("*.jpg"))[:2]
    assert len(files) == 2
    crops = []
    for file in files:
        with Image.open(file) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32)[:96, :128] / 255.0
        crops.append(torch.from_numpy(array).permute(2, 0, 1))
    target = torch.stack(crops)
    pred = _degrade(target, seed=5)
    expected = [_ssim_reference(p.numpy(), t.numpy()) for p, t in zip(pred, target)]
    np.testing.assert_allclose(ssim(pred, target).double().numpy(), expected, rtol=0, atol=1e-5)
    mse = ((pred.double() - target.double()) ** 2).mean(dim=(1, 2, 3))
    np.testing.assert_allclose(psnr(pred, target).double().numpy(), (10 * torch.log10(1 / mse)).numpy(), atol=1e-4)


# --------------------------------------------------------------------------------------------
# FID (torchmetrics, the paper's)
# --------------------------------------------------------------------------------------------
def test_fid_feeds_cfm_uint8_images_and_matches_scipy():
    extractor = RecordingFeatures()
    real, fake = _smooth_images(30, 32, 32, seed=6), _smooth_images(30, 32, 32, seed=7).pow(2)
    fid = FIDAccumulator(feature_extractor=extractor)
    for start in range(0, 30, 8):  # uneven batches: accumulation must not depend on batching
        fid.update(real[start : start + 8], real=True)
        fid.update(fake[start : start + 8], real=False)
    assert (fid.num_real, fid.num_fake) == (30, 30)
    seen = torch.cat(extractor.seen[0::2]), torch.cat(extractor.seen[1::2])
    assert seen[0].dtype == torch.uint8
    assert torch.equal(seen[0], _cfm_un_normalize(real * 2 - 1)) and torch.equal(seen[1], _cfm_un_normalize(fake * 2 - 1))
    with torch.no_grad():
        feats_real = TinyFeatures.forward(extractor, seen[0]).double().numpy()
        feats_fake = TinyFeatures.forward(extractor, seen[1]).double().numpy()
    value = fid.compute()["fid"]
    assert value > 0
    assert value == pytest.approx(_scipy_frechet(feats_fake, feats_real), rel=1e-4)
    fid.reset()  # reset_real_features=True by default
    assert (fid.num_real, fid.num_fake) == (0, 0)


def test_fid_of_a_set_against_itself_is_zero_and_real_features_can_be_kept():
    images = _smooth_images(24, 32, 32, seed=8)
    fid = FIDAccumulator(feature_extractor=TinyFeatures(), reset_real_features=False)
    fid.update(images[:10], real=True)
    fid.update(images[10:], real=True)
    fid.update(images, real=False)
    assert abs(fid.compute()["fid"]) < 1e-3
    fid.reset()
    assert (fid.num_real, fid.num_fake) == (24, 0)


@pytest.mark.slow  # builds the full-size Inception network, about 2 s
def test_fid_default_is_torchmetrics_inception_2048_without_antialias(monkeypatch):
    """The paper's network: torchmetrics' NoTrainInceptionV3, 2048 features, the resize torchmetrics
    1.7.1 (the authors' version) used (antialias=False); built here without its weights."""
    import torchmetrics.image.fid as tm_fid

    built = []

    class FakeInception(nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, antialias=True):
            super().__init__()
            built.append(dict(name=name, features_list=features_list, antialias=antialias))

        def forward(self, images):
            assert images.dtype == torch.uint8
            return images.float().mean(dim=(2, 3)).repeat(1, 683)[:, :2048]

    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", FakeInception)
    fid = FIDAccumulator()
    assert built == [dict(name="inception-v3-compat", features_list=["2048"], antialias=False)]
    assert fid.metric.normalize is False and fid.metric.reset_real_features is True
    images = _smooth_images(4, 16, 16, seed=9)
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert np.isfinite(fid.compute()["fid"])  # fed uint8 (checked in forward), 2048 features
    FIDAccumulator(inception_antialias=True)
    assert built[-1]["antialias"] is True


def test_fid_infers_num_features_by_probing_with_uint8():
    class NoAttribute(nn.Module):
        def forward(self, images):
            assert images.dtype == torch.uint8
            return images.float().mean(dim=(2, 3))  # 3 features

    fid = FIDAccumulator(feature_extractor=NoAttribute())
    images = _smooth_images(5, 16, 16, seed=10)
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert fid.metric.real_features_sum.shape == (3,)
    assert abs(fid.compute()["fid"]) < 1e-6


def test_fid_compute_needs_two_images_per_set():
    fid = FIDAccumulator(feature_extractor=TinyFeatures())
    fid.update(_smooth_images(1, 32, 32, seed=11), real=True)
    fid.update(_smooth_images(3, 32, 32, seed=12), real=False)
    with pytest.raises(RuntimeError, match="More than one sample"):
        fid.compute()


_DISTRIBUTED_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from torch import nn
from evaluation.metrics.image_metrics import FIDAccumulator


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # identical weights on every rank
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images):
        return self.net(images.float() / 255)


rank, store = int(sys.argv[1]), sys.argv[2]
generator = torch.Generator().manual_seed(1)
real, fake = torch.rand(16, 3, 16, 16, generator=generator), torch.rand(16, 3, 16, 16, generator=generator) ** 2
shard = slice(0, 10) if rank == 0 else slice(10, 16)  # uneven shards
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
values, locals_ = [], []
for make in (lambda: FIDAccumulator(feature_extractor=Features()),):
    metric = make()
    metric.update(real[shard], real=True)  # each rank sees only its shard
    metric.update(fake[shard], real=False)
    values.append(metric.compute())  # collective
    locals_.append(metric.num_real)
dist.destroy_process_group()
singles = []
for make in (lambda: FIDAccumulator(feature_extractor=Features()),):
    metric = make()  # one process, all images
    metric.update(real, real=True)
    metric.update(fake, real=False)
    singles.append(metric.compute())
print(repr((values, singles, locals_)))
"""


@pytest.mark.slow  # two extra interpreters importing torch + torchmetrics: ~15 CPU-seconds
def test_fid_gathers_statistics_across_processes(tmp_path):
    script = tmp_path / "fid_ddp.py"
    script.write_text(_DISTRIBUTED_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    store = str(tmp_path / "store")
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), store],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(2)
    ]
    outputs = [process.communicate(timeout=240) for process in ranks]
    for process, (_, stderr) in zip(ranks, outputs):
        assert process.returncode == 0, stderr[-3000:]
    for rank, (stdout, _) in enumerate(outputs):
        gathered, single, local_real = eval(stdout.strip().splitlines()[-1])
        for ours, reference in zip(gathered, single):  # both ranks get the numbers of all 16 + 16 images
            assert reference["fid"] > 0 and set(ours) == set(reference)
            for key in reference:
                assert ours[key] == pytest.approx(reference[key], rel=1e-5)
        assert local_real == [10 if rank == 0 else 6]  # compute() restores the local states afterwards


# --------------------------------------------------------------------------------------------
# patch-FID
# --------------------------------------------------------------------------------------------
def test_patch_boxes_are_drawn_as_cfm_draws_them():
    """CFM: for i in range(B * num_crops): RandomCrop.get_params(real_ims[0], (crop, crop)) on torch's global RNG."""
    from torchvision import transforms

    image = torch.zeros(3, 70, 100)
    torch.manual_seed(11)
    cfm = [transforms.RandomCrop.get_params(image, output_size=(32, 32)) for _ in range(3 * 4)]
    patch_fid = PatchFID(FIDAccumulator(feature_extractor=TinyFeatures()), patch=32, num_patches=4, seed=11)
    anchors = patch_fid.update(_smooth_images(3, 70, 100, seed=17), _smooth_images(3, 70, 100, seed=18))
    assert anchors.shape == (3, 4, 2)
    assert [tuple(a) for a in anchors.reshape(-1, 2).tolist()] == [(top, left) for top, left, _, _ in cfm]
    # an image exactly crop x crop: (0, 0) without drawing, as get_params
    torch.manual_seed(5)
    assert transforms.RandomCrop.get_params(torch.zeros(3, 32, 32), (32, 32)) == (0, 0, 32, 32)
    after_cfm = torch.randint(0, 1000, (1,))
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(random_patch_anchors(32, 32, patch=32, num_patches=2, generator=generator), torch.zeros(2, 2, dtype=torch.int64))
    assert torch.equal(torch.randint(0, 1000, (1,), generator=generator), after_cfm)


def test_random_patch_anchors_cover_the_valid_range():
    anchors = random_patch_anchors(100, 70, patch=32, num_patches=500, generator=torch.Generator().manual_seed(3))
    again = random_patch_anchors(100, 70, patch=32, num_patches=500, generator=torch.Generator().manual_seed(3))
    assert anchors.shape == (500, 2) and anchors.dtype == torch.int64 and torch.equal(anchors, again)
    tops, lefts = anchors[:, 0], anchors[:, 1]
    assert tops.min() == 0 and tops.max() == 68 and lefts.min() == 0 and lefts.max() == 38


def test_extract_patches_matches_slicing():
    images = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    anchors = torch.tensor([[0, 0], [6, 8], [3, 5]])
    crops = extract_patches(images, anchors, patch=4)
    assert crops.shape == (6, 3, 4, 4)
    for index in range(2):
        for k, (top, left) in enumerate(anchors.tolist()):
            assert torch.equal(crops[index * 3 + k], images[index, :, top : top + 4, left : left + 4])
    per_image = torch.tensor([[[1, 1]], [[2, 3]]])
    assert torch.equal(extract_patches(images, per_image, patch=4)[1], images[1, :, 2:6, 3:7])


def test_patch_fid_is_fid_of_the_same_crops_of_both_images():
    extractor = RecordingFeatures()
    patch_fid = PatchFID(FIDAccumulator(feature_extractor=extractor), patch=16, num_patches=4, seed=7)
    generated, real = _smooth_images(3, 40, 48, seed=19), _smooth_images(3, 40, 48, seed=20)
    anchors = patch_fid.update(generated, real)
    fake_batch, real_batch = extractor.seen
    assert fake_batch.shape == real_batch.shape == (12, 3, 16, 16)
    for index in range(3):
        for k, (top, left) in enumerate(anchors[index].tolist()):
            assert torch.equal(fake_batch[index * 4 + k], to_uint8(generated[index : index + 1, :, top : top + 16, left : left + 16])[0])
            assert torch.equal(real_batch[index * 4 + k], to_uint8(real[index : index + 1, :, top : top + 16, left : left + 16])[0])
    # FID on the crops only: the same number as FID fed the crops directly
    direct = FIDAccumulator(feature_extractor=extractor)
    direct.update(extract_patches(generated, anchors, 16), real=False)
    direct.update(extract_patches(real, anchors, 16), real=True)
    assert patch_fid.compute()["fid"] == pytest.approx(direct.compute()["fid"], rel=1e-6)
    # deterministic per seed, and reset() restarts the sequence
    assert torch.equal(PatchFID(FIDAccumulator(feature_extractor=TinyFeatures()), 16, 4, seed=7).update(generated, real), anchors)
    patch_fid.reset()
    assert torch.equal(patch_fid.update(generated, real), anchors)
    assert not torch.equal(PatchFID(FIDAccumulator(feature_extractor=TinyFeatures()), 16, 4, seed=8).update(generated, real), anchors)


# --------------------------------------------------------------------------------------------
# CLIP score (the paper's: the clip-score package's computation)
# --------------------------------------------------------------------------------------------
WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "car", "on", "the", "road"]
CAPTIONS = ["a photo of a cat", "a red car on the road", "blue dog", "the cat", "a photo of the road"]


@pytest.fixture
def tiny_clip(tmp_path):
    """The tiny random CLIPModel (tests/tiny_models.py) and its CLIPProcessor, with a tokenizer
    that reads each of ``WORDS`` as one token (as CLIP's own reads common words)."""
    tokenizer, vocab_size = make_tokenizer(tmp_path, words=WORDS)
    assert tokenizer.convert_ids_to_tokens(tokenizer("a photo of a cat")["input_ids"]) == [
        "<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "<|endoftext|>",
    ]
    return make_tiny_clip(tokenizer, vocab_size)


def _clip_score_package_cosines(model, tokenizer, images: torch.Tensor, captions) -> torch.Tensor:
    """The clip-score package's computation written out: each image as its 8-bit PNG, PIL bicubic
    resize of the shortest side to 32, centre crop, /255, OpenAI mean / std; each caption tokenized
    on its own (padding=True, truncation=True); L2-normalised projected embeddings, their dot product."""
    cosines = []
    for image, caption in zip(images, captions):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        height, width = array.shape[:2]
        new = (32, int(32 * width / height)) if height <= width else (int(32 * height / width), 32)
        resized = np.asarray(Image.fromarray(array).resize((new[1], new[0]), Image.BICUBIC)).astype(np.float64)
        top, left = (new[0] - 32) // 2, (new[1] - 32) // 2
        pixels = (resized[top : top + 32, left : left + 32] / 255.0 - OPENAI_MEAN) / OPENAI_STD
        pixel_values = torch.from_numpy(pixels.transpose(2, 0, 1)).float()[None]
        tokens = tokenizer(caption, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            image_embeds = model.get_image_features(pixel_values=pixel_values).pooler_output
            text_embeds = model.get_text_features(**tokens).pooler_output
        image_embeds = image_embeds / image_embeds.norm(dim=1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(dim=1, keepdim=True)
        cosines.append((image_embeds * text_embeds).sum())
    return torch.stack(cosines)


def test_clip_score_is_the_clip_score_package_computation(tiny_clip):
    model, processor = tiny_clip
    images = _smooth_images(5, 40, 52, seed=22)
    expected_cos = _clip_score_package_cosines(model, processor.tokenizer, images, CAPTIONS)
    assert (expected_cos.abs() > 1e-3).all()
    # A twin whose text projection is negated has exactly the opposite cosines: negative cosines
    # are averaged as they are (the package does not clamp them).
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        flipped.text_projection.weight.neg_()
    means = []
    for clip_model, sign in ((model, 1.0), (flipped, -1.0)):
        scorer = CLIPScorer(model=clip_model, processor=processor)
        torch.testing.assert_close(scorer.cosine_similarity(images, CAPTIONS), sign * expected_cos, atol=1e-5, rtol=0)
        scores = torch.cat([scorer.update(images[:2], CAPTIONS[:2]), scorer.update(images[2:], CAPTIONS[2:])])
        torch.testing.assert_close(scores, 100 * sign * expected_cos, atol=1e-3, rtol=0)
        assert scorer.compute() == pytest.approx(100 * sign * float(expected_cos.mean()), abs=1e-3)
        means.append(scorer.compute())
    assert min(means) < 0  # one of the twins has a negative mean: averaged as it is, not clamped
    scorer.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        scorer.compute()
    scorer.train()  # must not switch the CLIP model out of evaluation mode
    assert not flipped.training


def test_clip_scorer_loads_clip_processor_with_the_pil_backend(tiny_clip, tmp_path):
    from transformers import CLIPImageProcessorPil

    model, processor = tiny_clip
    folder = tmp_path / "tiny-clip"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    loaded = CLIPScorer(model_id=str(folder))
    assert isinstance(loaded.processor.image_processor, CLIPImageProcessorPil) and loaded.max_length == 16
    images = _smooth_images(2, 48, 32, seed=23)  # portrait: crops vertically
    expected = _clip_score_package_cosines(model, processor.tokenizer, images, CAPTIONS[:2])
    torch.testing.assert_close(loaded.cosine_similarity(images, CAPTIONS[:2]), expected, atol=1e-5, rtol=0)


def test_clip_scorer_default_is_the_papers_model(monkeypatch):
    from transformers import CLIPModel, CLIPProcessor

    from evaluation.metrics.image_metrics import CLIP_MODEL_ID

    calls = []
    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(lambda cls, name, **kw: calls.append(("model", name, kw)) or 1 / 0))
    with pytest.raises(ZeroDivisionError):
        CLIPScorer()
    assert calls == [("model", CLIP_MODEL_ID, {})] and CLIP_MODEL_ID == "openai/clip-vit-base-patch32"
    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(lambda cls, name, **kw: nn.Linear(1, 1)))
    monkeypatch.setattr(CLIPProcessor, "from_pretrained", classmethod(lambda cls, name, **kw: calls.append(("processor", name, kw)) or 1 / 0))
    with pytest.raises(ZeroDivisionError):
        CLIPScorer()
    assert calls[-1] == ("processor", CLIP_MODEL_ID, {"backend": "pil"})


def test_clip_long_captions_are_truncated_with_a_warning_or_refused(tiny_clip):
    model, processor = tiny_clip
    long_caption = " ".join(["a red car on the road"] * 4)  # 24 words > 16 positions
    images = _smooth_images(1, 32, 32, seed=24)
    with pytest.warns(UserWarning, match="truncated to 16 tokens"):
        cos = CLIPScorer(model=model, processor=processor).cosine_similarity(images, [long_caption])
    assert torch.isfinite(cos).all()
    strict = CLIPScorer(model=model, processor=processor, truncate_captions=False)
    with pytest.raises(ValueError, match="more than the text encoder's 16"):
        strict.cosine_similarity(images, [long_caption])


def test_clip_scorer_rejects_bad_inputs(tiny_clip):
    model, processor = tiny_clip
    with pytest.raises(ValueError, match="model and processor together"):
        CLIPScorer(model=model)
    scorer = CLIPScorer(model=model, processor=processor)
    images = _smooth_images(2, 32, 32, seed=25)
    with pytest.raises(ValueError, match="2 images"):
        scorer.update(images, ["a cat"])
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        scorer.update(images * 255, CAPTIONS[:2])


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------
_GOOD = _smooth_images(2, 16, 16, seed=27)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: psnr(_GOOD, _GOOD[:1]), "same shape"),
        (lambda: psnr(_GOOD[0], _GOOD[0]), "must have shape B x 3 x H x W"),
        (lambda: psnr(_GOOD[:, :1], _GOOD[:, :1]), "must have 3 channels"),
        (lambda: psnr((_GOOD * 255).to(torch.uint8), _GOOD), "floating-point"),
        (lambda: psnr(_GOOD * 2, _GOOD), r"values in \[0, 1\]"),
        (lambda: psnr(_GOOD.clone().fill_(float("nan")), _GOOD), "NaN"),
        (lambda: psnr(_GOOD.numpy(), _GOOD), "torch.Tensor"),
        (lambda: ssim(_GOOD[..., :10, :10], _GOOD[..., :10, :10]), "at least 11 x 11"),
        (lambda: to_uint8(_GOOD - 0.5), r"values in \[0, 1\]"),
        (lambda: random_patch_anchors(100, 60, patch=64), "patch=64 is larger than the 100 x 60"),
        (lambda: PatchFID(FIDAccumulator(feature_extractor=TinyFeatures()), patch=8).update(_GOOD, _GOOD[..., :12, :12]), "same shape"),
        (lambda: PatchFID(FIDAccumulator(feature_extractor=TinyFeatures()), patch=32).update(_GOOD, _GOOD), "patch=32 is larger"),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_kept_features_give_the_same_fid_and_patch_boxes_follow_per_image_seeds():
    """What makes per-image results keepable (resumed evaluations): features taken image by image
    and added later give the FID of feeding the batch at once, and with per-image seeds an image's
    patch boxes do not depend on its batch."""
    from evaluation.metrics.metric_setup import TinyRandomFeatures, build_fid, build_patch_fid

    generator = torch.Generator().manual_seed(0)
    real, fake = torch.rand(4, 3, 40, 40, generator=generator), torch.rand(4, 3, 40, 40, generator=generator)
    direct, kept = build_fid(TinyRandomFeatures(), "cpu"), build_fid(TinyRandomFeatures(), "cpu")
    direct.update(real, real=True)
    direct.update(fake, real=False)
    for index in range(4):  # one image at a time, as kept per image
        kept.add_features(kept.features(real[index : index + 1]), real=True)
        kept.add_features(kept.features(fake[index : index + 1]), real=False)
    assert kept.compute()["fid"] == pytest.approx(direct.compute()["fid"], rel=1e-9)

    patches = build_patch_fid(TinyRandomFeatures(), "cpu", 16, 3, seed=7)
    seeds = [7 + i for i in range(4)]
    together = patches.anchors(fake, real, seeds)
    alone = torch.cat([patches.anchors(fake[i : i + 1], real[i : i + 1], seeds[i : i + 1]) for i in (2, 0, 3, 1)])
    assert torch.equal(together[[2, 0, 3, 1]], alone) and not torch.equal(together[0], together[1])
    fake_features, real_features = patches.features(fake, real, seeds)
    assert fake_features.shape[0] == real_features.shape[0] == 12
    patches.add_features(fake_features, real_features)
    reference = build_patch_fid(TinyRandomFeatures(), "cpu", 16, 3, seed=7)
    reference.update(fake, real, seeds=seeds)
    assert patches.compute()["fid"] == pytest.approx(reference.compute()["fid"], rel=1e-9)
    with pytest.raises(ValueError, match="seeds has 2 entries for a batch of 4 images"):
        patches.anchors(fake, real, seeds[:2])


def test_metric_flags_below_their_least_value_are_named():
    """check_metric_arguments refuses patch-FID flags below 1 by name and value (evaluation.arguments.check_at_least,
    the one wording of every evaluation script's numeric flags); an unset flag passes."""
    import argparse

    from evaluation.arguments import check_at_least
    from evaluation.metrics.metric_setup import add_clip_arguments, add_fid_arguments, check_metric_arguments

    parser = argparse.ArgumentParser()
    add_fid_arguments(parser)
    add_clip_arguments(parser)
    check_metric_arguments(parser.parse_args([]))
    with pytest.raises(ValueError, match=r"^--num-patches must be >= 1, got 0\.$"):
        check_metric_arguments(parser.parse_args(["--num-patches", "0"]))
    with pytest.raises(ValueError, match=r"^--patch-size must be >= 1, got -3\.$"):
        check_metric_arguments(parser.parse_args(["--patch-size", "-3", "--num-patches", "0"]))  # the first flag listed
    args = argparse.Namespace(warmup=0, oversample=-0.5, threads=None)
    check_at_least(args, {"warmup": 0, "threads": 1})
    with pytest.raises(ValueError, match=r"^--oversample must be >= 0, got -0\.5\.$"):
        check_at_least(args, {"warmup": 0, "oversample": 0})
