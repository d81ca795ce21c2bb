"""Tests of evaluation/metrics.py (offline, CPU, small).

The real Inception / CLIP networks are never loaded: FID gets small random conv extractors and
the CLIP score a tiny random ``CLIPModel`` with a tokenizer whose vocabulary the test writes.
Reference numbers come from independent implementations: scipy.linalg.sqrtm for the Frechet
distance, scikit-image for PSNR / SSIM, PIL for the CLIP resize, and the ``CLIPModel`` forward
pass (its own normalised embeddings) for the CLIP cosine.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import nn

from evaluation import metrics
from evaluation.metrics import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPScorer,
    FIDAccumulator,
    PatchFID,
    clip_preprocess,
    extract_patches,
    frechet_distance,
    psnr,
    random_patch_anchors,
    ssim,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
class TinyFeatures(nn.Module):
    """Small random conv feature extractor: B x 3 x H x W -> B x 12."""

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
        return self.net(images)


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


def _skimage_reference(pred: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnrs, ssims = [], []
    for p, t in zip(pred.double().numpy(), target.double().numpy()):
        p_hwc, t_hwc = p.transpose(1, 2, 0), t.transpose(1, 2, 0)
        psnrs.append(peak_signal_noise_ratio(t_hwc, p_hwc, data_range=1.0))
        ssims.append(
            structural_similarity(
                t_hwc,
                p_hwc,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=2,
            )
        )
    return np.array(psnrs), np.array(ssims)


def _scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# --------------------------------------------------------------------------------------------
# import hygiene
# --------------------------------------------------------------------------------------------
def test_import_does_not_load_torchvision(tmp_path):
    # A fake, importable torchvision (with package metadata, so availability checks such as
    # torchmetrics' RequirementCache report it installed) that fails loudly when imported.
    fake = tmp_path / "site"
    (fake / "torchvision").mkdir(parents=True)
    (fake / "torchvision" / "__init__.py").write_text("raise ImportError('fake torchvision was imported')\n")
    (fake / "torchvision-0.99.0.dist-info").mkdir()
    (fake / "torchvision-0.99.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: torchvision\nVersion: 0.99.0\n"
    )
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        assert importlib.util.find_spec("torchvision").origin.startswith({str(fake)!r})
        import evaluation.metrics
        print(sorted(m for m in ("torchvision", "torchmetrics", "transformers") if m in sys.modules))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), str(REPO_ROOT)]))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# PSNR / SSIM
# --------------------------------------------------------------------------------------------
def test_psnr_ssim_match_skimage_on_synthetic_images():
    target = _smooth_images(3, 40, 56, seed=1)
    pred = _degrade(target, seed=2)
    ref_psnr, ref_ssim = _skimage_reference(pred, target)
    ours_psnr, ours_ssim = psnr(pred, target), ssim(pred, target)
    assert ours_psnr.shape == (3,) and ours_ssim.shape == (3,)
    np.testing.assert_allclose(ours_psnr.double().numpy(), ref_psnr, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours_ssim.double().numpy(), ref_ssim, rtol=0, atol=1e-4)
    # sanity of the numbers themselves: noise of std 0.05 plus a blur -> PSNR in the 20s dB
    assert np.all((ref_psnr > 20) & (ref_psnr < 30))
    assert np.all((ref_ssim > 0.2) & (ref_ssim < 0.95))


def test_psnr_ssim_match_skimage_on_photos(shared_path):
    folder = shared_path("data", "bsds500", "test")
    files = sorted(folder.glob("*.jpg"))[:2]
    assert len(files) == 2
    crops = []
    for file in files:
        with Image.open(file) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32)[:96, :128] / 255.0
        crops.append(torch.from_numpy(array).permute(2, 0, 1))
    target = torch.stack(crops)
    pred = _degrade(target, seed=3)
    ref_psnr, ref_ssim = _skimage_reference(pred, target)
    np.testing.assert_allclose(psnr(pred, target).double().numpy(), ref_psnr, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ssim(pred, target).double().numpy(), ref_ssim, rtol=0, atol=1e-4)


def test_psnr_ssim_identity_and_known_mse():
    target = _smooth_images(2, 32, 32, seed=4)
    assert torch.isinf(psnr(target, target)).all()
    torch.testing.assert_close(ssim(target, target), torch.ones(2), atol=1e-6, rtol=0)
    shifted = (target * 0.5 + 0.1).clamp(0, 1)
    mse = (shifted - target).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(psnr(shifted, target), 10 * torch.log10(1 / mse), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# Frechet distance / FID
# --------------------------------------------------------------------------------------------
def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    dim = 16
    mixing1, mixing2 = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    feats1 = rng.normal(size=(300, dim)) @ mixing1 + 0.5
    feats2 = rng.normal(size=(300, dim)) @ mixing2 - 0.3
    mu1, sigma1 = feats1.mean(0), np.cov(feats1, rowvar=False)
    mu2, sigma2 = feats2.mean(0), np.cov(feats2, rowvar=False)
    expected = _scipy_frechet(mu1, sigma1, mu2, sigma2)
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert expected > 1.0
    assert ours == pytest.approx(expected, rel=1e-6)
    # tensors (any float dtype) give the same number, and the distance is symmetric
    as_tensors = [torch.from_numpy(x).float() for x in (mu1, sigma1, mu2, sigma2)]
    assert frechet_distance(*as_tensors) == pytest.approx(expected, rel=1e-5)
    assert frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(ours, rel=1e-9)


def test_frechet_distance_of_singular_covariances_is_finite():
    rng = np.random.default_rng(1)
    feats1, feats2 = rng.normal(size=(10, 32)), rng.normal(size=(10, 32))  # 10 samples < 32 dims
    value = frechet_distance(feats1.mean(0), np.cov(feats1, rowvar=False), feats2.mean(0), np.cov(feats2, rowvar=False))
    assert np.isfinite(value) and value > 0
    same = frechet_distance(feats1.mean(0), np.cov(feats1, rowvar=False), feats1.mean(0), np.cov(feats1, rowvar=False))
    assert abs(same) < 1e-9


def test_fid_of_a_set_against_itself_is_zero():
    images = _smooth_images(24, 32, 32, seed=5)
    fid = FIDAccumulator(feature_extractor=TinyFeatures())
    fid.update(images[:10], real=True)
    fid.update(images[10:], real=True)
    fid.update(images, real=False)
    assert (fid.num_real, fid.num_fake) == (24, 24)
    value = fid.compute()
    mu, sigma = fid.statistics(real=True)
    assert abs(value) < 1e-9 * max(1.0, float(sigma.trace()))


def test_fid_equals_frechet_distance_of_extracted_features():
    extractor = TinyFeatures()
    real, fake = _smooth_images(30, 32, 32, seed=6), _smooth_images(30, 32, 32, seed=7).pow(2)
    fid = FIDAccumulator(feature_extractor=extractor)
    for start in range(0, 30, 8):  # uneven batches: accumulation must not depend on batching
        fid.update(real[start : start + 8], real=True)
        fid.update(fake[start : start + 8], real=False)
    with torch.no_grad():
        feats_real = extractor(real).double().numpy()
        feats_fake = extractor(fake).double().numpy()
    mu_r, sigma_r = fid.statistics(real=True)
    np.testing.assert_allclose(mu_r.numpy(), feats_real.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sigma_r.numpy(), np.cov(feats_real, rowvar=False), rtol=1e-6, atol=1e-12)
    expected = _scipy_frechet(feats_fake.mean(0), np.cov(feats_fake, rowvar=False), feats_real.mean(0), np.cov(feats_real, rowvar=False))
    value = fid.compute()
    assert value > 0
    assert value == pytest.approx(expected, rel=1e-5)
    # reset forgets both sets (reset_real_features=True by default)
    fid.reset()
    assert (fid.num_real, fid.num_fake) == (0, 0)


_DISTRIBUTED_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from torch import nn
from evaluation.metrics import FIDAccumulator


def extractor():
    torch.manual_seed(0)  # identical weights on every rank
    return nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())


rank, store = int(sys.argv[1]), sys.argv[2]
generator = torch.Generator().manual_seed(1)
real, fake = torch.rand(16, 3, 16, 16, generator=generator), torch.rand(16, 3, 16, 16, generator=generator) ** 2
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
fid = FIDAccumulator(feature_extractor=extractor(), num_features=6)
fid.update(real[rank * 8 : rank * 8 + 8], real=True)  # each rank sees only its shard
fid.update(fake[rank * 8 : rank * 8 + 8], real=False)
value = fid.compute()  # collective
dist.destroy_process_group()
single = FIDAccumulator(feature_extractor=extractor(), num_features=6)  # one process, all images
single.update(real, real=True)
single.update(fake, real=False)
print(repr((value, single.compute(), fid.num_real)))
"""


@pytest.mark.slow  # two extra interpreters importing torch + torchmetrics: ~10 CPU-seconds
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
    outputs = [process.communicate(timeout=180) for process in ranks]
    for process, (_, stderr) in zip(ranks, outputs):
        assert process.returncode == 0, stderr[-3000:]
    for stdout, _ in outputs:
        gathered, single, local_real = eval(stdout.strip().splitlines()[-1])
        assert single > 0
        assert gathered == pytest.approx(single, rel=1e-9)  # both ranks get the FID of all 16 + 16 images
        assert local_real == 8  # compute() restores the local (unsynced) states afterwards


def test_fid_keeps_real_features_when_asked():
    fid = FIDAccumulator(feature_extractor=TinyFeatures(), reset_real_features=False)
    images = _smooth_images(6, 32, 32, seed=8)
    fid.update(images, real=True)
    fid.update(images, real=False)
    fid.reset()
    assert (fid.num_real, fid.num_fake) == (6, 0)


def test_fid_infers_num_features_by_probing():
    class NoAttribute(nn.Module):
        def forward(self, images):
            return images.mean(dim=(2, 3))  # 3 features

    fid = FIDAccumulator(feature_extractor=NoAttribute())
    images = _smooth_images(5, 16, 16, seed=9)
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert fid.statistics(real=True)[0].shape == (3,)
    assert abs(fid.compute()) < 1e-12


def test_default_inception_without_torch_fidelity_says_how_to_install(monkeypatch):
    real_find_spec = metrics.importlib.util.find_spec
    monkeypatch.setattr(
        metrics.importlib.util, "find_spec", lambda name, *a: None if name == "torch_fidelity" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r'pip install "uplift-diffusers\[eval\]"'):
        FIDAccumulator()


def test_fid_compute_needs_two_images_per_set():
    fid = FIDAccumulator(feature_extractor=TinyFeatures())
    fid.update(_smooth_images(1, 32, 32, seed=10), real=True)
    fid.update(_smooth_images(3, 32, 32, seed=11), real=False)
    with pytest.raises(RuntimeError, match="at least 2 real images, got 1"):
        fid.compute()


# --------------------------------------------------------------------------------------------
# patch-FID
# --------------------------------------------------------------------------------------------
def test_random_patch_anchors_are_deterministic_and_inside():
    anchors = random_patch_anchors(100, 70, patch=32, num_patches=500, generator=torch.Generator().manual_seed(3))
    again = random_patch_anchors(100, 70, patch=32, num_patches=500, generator=torch.Generator().manual_seed(3))
    other = random_patch_anchors(100, 70, patch=32, num_patches=500, generator=torch.Generator().manual_seed(4))
    assert anchors.shape == (500, 2) and anchors.dtype == torch.int64
    assert torch.equal(anchors, again) and not torch.equal(anchors, other)
    tops, lefts = anchors[:, 0], anchors[:, 1]
    assert tops.min() >= 0 and tops.max() <= 100 - 32 and lefts.min() >= 0 and lefts.max() <= 70 - 32
    # the whole valid range is used (both extremes are reached with 500 draws)
    assert tops.min() == 0 and tops.max() == 68 and lefts.min() == 0 and lefts.max() == 38
    # a patch as large as the image has a single possible anchor
    assert torch.equal(random_patch_anchors(32, 32, patch=32, num_patches=2), torch.zeros(2, 2, dtype=torch.int64))


def test_extract_patches_matches_slicing():
    images = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    anchors = torch.tensor([[0, 0], [6, 8], [3, 5]])
    crops = extract_patches(images, anchors, patch=4)
    assert crops.shape == (6, 3, 4, 4)
    for index in range(2):
        for k, (top, left) in enumerate(anchors.tolist()):
            assert torch.equal(crops[index * 3 + k], images[index, :, top : top + 4, left : left + 4])
    per_image = torch.tensor([[[1, 1]], [[2, 3]]])
    crops = extract_patches(images, per_image, patch=4)
    assert torch.equal(crops[1], images[1, :, 2:6, 3:7])


def test_patch_fid_uses_the_same_anchors_for_real_and_generated():
    extractor = RecordingFeatures()
    patch_fid = PatchFID(feature_extractor=extractor, patch=16, num_patches=4, seed=7)
    generated, real = _smooth_images(3, 40, 48, seed=12), _smooth_images(3, 40, 48, seed=13)
    anchors = patch_fid.update(generated, real)
    assert anchors.shape == (3, 4, 2)
    assert not torch.equal(anchors[0], anchors[1])  # fresh anchors per image pair
    fake_batch, real_batch = extractor.seen
    assert fake_batch.shape == real_batch.shape == (12, 3, 16, 16)
    for index in range(3):
        for k, (top, left) in enumerate(anchors[index].tolist()):
            assert torch.equal(fake_batch[index * 4 + k], generated[index, :, top : top + 16, left : left + 16])
            assert torch.equal(real_batch[index * 4 + k], real[index, :, top : top + 16, left : left + 16])
    # deterministic per seed, and reset() restarts the sequence
    twin = PatchFID(feature_extractor=TinyFeatures(), patch=16, num_patches=4, seed=7)
    assert torch.equal(twin.update(generated, real), anchors)
    patch_fid.reset()
    assert torch.equal(patch_fid.update(generated, real), anchors)
    different = PatchFID(feature_extractor=TinyFeatures(), patch=16, num_patches=4, seed=8)
    assert not torch.equal(different.update(generated, real), anchors)


def test_patch_fid_of_identical_pairs_is_zero_and_positive_otherwise():
    images = _smooth_images(6, 48, 48, seed=14)
    same = PatchFID(feature_extractor=TinyFeatures(), patch=24, num_patches=4, seed=0)
    same.update(images, images)
    assert abs(same.compute()) < 1e-9
    different = PatchFID(feature_extractor=TinyFeatures(), patch=24, num_patches=4, seed=0)
    different.update(images.pow(3), images)
    assert different.compute() > 1e-6


# --------------------------------------------------------------------------------------------
# CLIP score
# --------------------------------------------------------------------------------------------
WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "car", "on", "the", "road"]


@pytest.fixture
def tiny_clip(tmp_path):
    """A tiny random CLIPModel and a CLIPTokenizer whose BPE vocabulary the test writes."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab: dict[str, int] = {}
    for char in sorted(set("".join(WORDS))):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges = ["#version: 0.2"]
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    vocab.setdefault("<|startoftext|>", len(vocab))
    vocab.setdefault("<|endoftext|>", len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer.convert_ids_to_tokens(tokenizer("a photo of a cat")["input_ids"]) == [
        "<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "<|endoftext|>",
    ]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    return CLIPModel(config).eval(), tokenizer


CAPTIONS = ["a photo of a cat", "a red car on the road", "blue dog", "the cat", "a photo of the road"]


def _manual_cosines(model, tokenizer, images, captions):
    """Cosines from CLIPModel.forward's own normalised embeddings (images already 32 x 32)."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    tokens = tokenizer(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=(images - mean) / std
        )
    return (out.image_embeds * out.text_embeds).sum(-1)


def test_clip_score_equals_manual_cosine(tiny_clip):
    model, tokenizer = tiny_clip
    images = _smooth_images(5, 32, 32, seed=15)
    expected_cos = _manual_cosines(model, tokenizer, images, CAPTIONS)
    assert (expected_cos.abs() > 1e-3).all()
    # A twin whose text projection is negated has exactly the opposite cosines, so between the
    # two models both signs occur whatever the random weights are (negatives are clamped to 0).
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        flipped.text_projection.weight.neg_()
    for clip_model, sign in ((model, 1.0), (flipped, -1.0)):
        scorer = CLIPScorer(model=clip_model, tokenizer=tokenizer)
        torch.testing.assert_close(scorer.cosine_similarity(images, CAPTIONS), sign * expected_cos, atol=1e-5, rtol=0)
        expected_scores = 100 * (sign * expected_cos).clamp(min=0)
        scores = scorer.update(images[:2], CAPTIONS[:2])
        scores = torch.cat([scores, scorer.update(images[2:], CAPTIONS[2:])])
        torch.testing.assert_close(scores, expected_scores, atol=1e-3, rtol=0)
        assert scorer.compute() == pytest.approx(float(expected_scores.mean()), abs=1e-3)
    assert float(expected_scores.mean()) > 1.0  # the flipped model's scores are not all zero
    scorer.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        scorer.compute()
    # train() must not switch the CLIP model out of evaluation mode
    scorer.train()
    assert not flipped.training


def test_clip_preprocess_matches_pil_bicubic_and_centre_crop():
    height, width, size = 48, 64, 32
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([0.5 + 0.4 * np.sin(cols / 5.0 + c) * np.cos(rows / 7.0) for c in range(3)]).astype(np.float32)
    ours = clip_preprocess(torch.from_numpy(image)[None], size=size)
    # reference: shorter side -> 32 (so 32 x 42), PIL bicubic on float planes, centre crop, normalise
    resized = np.stack([np.asarray(Image.fromarray(plane, mode="F").resize((42, 32), Image.BICUBIC)) for plane in image])
    cropped = np.clip(resized, 0, 1)[:, :, 5:37]
    expected = (cropped - np.array(CLIP_MEAN)[:, None, None]) / np.array(CLIP_STD)[:, None, None]
    assert ours.shape == (1, 3, size, size)
    np.testing.assert_allclose(ours[0].numpy(), expected, atol=1e-5)
    # a portrait image crops vertically; an image of the target size is only normalised
    assert clip_preprocess(torch.rand(2, 3, 64, 40), size=size).shape == (2, 3, size, size)
    flat = torch.full((1, 3, size, size), 0.25)
    torch.testing.assert_close(clip_preprocess(flat, size=size)[0, :, 0, 0], (0.25 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))


def test_clip_scorer_resizes_large_images_like_clip_preprocess(tiny_clip):
    model, tokenizer = tiny_clip
    images = _smooth_images(2, 80, 96, seed=16)
    scorer = CLIPScorer(model=model, tokenizer=tokenizer)
    small = clip_preprocess(images, size=32) * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    expected = _manual_cosines(model, tokenizer, small, CAPTIONS[:2])
    torch.testing.assert_close(scorer.cosine_similarity(images, CAPTIONS[:2]), expected, atol=1e-5, rtol=0)


def test_clip_scorer_loads_model_and_tokenizer_from_a_folder(tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    folder = tmp_path / "tiny-clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    images = _smooth_images(2, 32, 32, seed=20)
    loaded = CLIPScorer(model_id=str(folder))
    assert loaded.image_size == 32 and loaded.max_length == 16
    expected = _manual_cosines(model, tokenizer, images, CAPTIONS[:2])
    torch.testing.assert_close(loaded.cosine_similarity(images, CAPTIONS[:2]), expected, atol=1e-5, rtol=0)


def test_clip_long_captions_warn_or_raise(tiny_clip):
    model, tokenizer = tiny_clip
    long_caption = " ".join(["a red car on the road"] * 4)  # 24 words > 16 positions
    images = _smooth_images(1, 32, 32, seed=17)
    with pytest.warns(UserWarning, match="truncated to 16 tokens"):
        cos = CLIPScorer(model=model, tokenizer=tokenizer).cosine_similarity(images, [long_caption])
    assert torch.isfinite(cos).all()
    strict = CLIPScorer(model=model, tokenizer=tokenizer, truncate_captions=False)
    with pytest.raises(ValueError, match="more than the text encoder's 16"):
        strict.cosine_similarity(images, [long_caption])


def test_clip_scorer_rejects_bad_inputs(tiny_clip):
    model, tokenizer = tiny_clip
    with pytest.raises(ValueError, match="model and tokenizer together"):
        CLIPScorer(model=model)
    scorer = CLIPScorer(model=model, tokenizer=tokenizer)
    images = _smooth_images(2, 32, 32, seed=18)
    with pytest.raises(ValueError, match="2 images"):
        scorer.update(images, ["a cat"])
    with pytest.raises(ValueError, match="list of strings"):
        scorer.update(images, "a cat")
    with pytest.raises(ValueError, match="empty or not strings"):
        scorer.update(images, ["a cat", "  "])
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        scorer.update(images * 255, CAPTIONS[:2])


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------
_GOOD = _smooth_images(2, 16, 16, seed=19)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: psnr(_GOOD, _GOOD[:1]), "same shape"),
        (lambda: psnr(_GOOD[0], _GOOD[0]), "4 dimensions"),
        (lambda: psnr(_GOOD[:, :1], _GOOD[:, :1]), "3 \\(RGB\\) channels"),
        (lambda: psnr((_GOOD * 255).to(torch.uint8), _GOOD), "floating-point"),
        (lambda: psnr(_GOOD * 2, _GOOD), r"values in \[0, 1\]"),
        (lambda: psnr(_GOOD.clone().fill_(float("nan")), _GOOD), "NaN"),
        (lambda: psnr(_GOOD.numpy(), _GOOD), "torch.Tensor"),
        (lambda: ssim(_GOOD[..., :10, :10], _GOOD[..., :10, :10]), "at least 11 x 11"),
        (lambda: frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "mu2 must have shape"),
        (lambda: frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), "sigma1 must be a \\(3, 3\\)"),
        (lambda: frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2)), "symmetric"),
        (lambda: frechet_distance([0.0], np.eye(1), np.zeros(1), np.eye(1)), "mu1 must be a torch.Tensor"),
        (lambda: random_patch_anchors(100, 60, patch=64), "patch=64 is larger than the 100 x 60"),
        (lambda: random_patch_anchors(100, 100, patch=0), "patch must be a positive integer"),
        (lambda: random_patch_anchors(100, 100, patch=8, num_patches=2.0), "num_patches must be a positive integer"),
        (lambda: extract_patches(_GOOD, torch.tensor([[10, 0]]), patch=8), "outside the 16 x 16"),
        (lambda: extract_patches(_GOOD, torch.tensor([[0.0, 0.0]]), patch=8), "integer tensor"),
        (lambda: extract_patches(_GOOD, torch.zeros(3, 1, 2, dtype=torch.long), patch=8), r"\(2, K, 2\)"),
        (lambda: PatchFID(feature_extractor=TinyFeatures(), patch=8).update(_GOOD, _GOOD[..., :12, :12]), "same shape"),
        (lambda: PatchFID(feature_extractor=TinyFeatures(), patch=32).update(_GOOD, _GOOD), "patch=32 is larger"),
        (lambda: FIDAccumulator(feature_extractor=TinyFeatures()).update(_GOOD, real=1), "real must be True"),
        (lambda: FIDAccumulator(feature_extractor=lambda x: x), "nn.Module"),
        (lambda: FIDAccumulator(feature_extractor=TinyFeatures(), num_features=5).update(_GOOD, real=True), r"shape \(N, 5\)"),
        (lambda: FIDAccumulator(feature_extractor=nn.Identity(), num_features=3).update(_GOOD, real=True), "flatten"),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
