"""Back-projection onto the low-resolution input (uplift_diffusers/utils/color_correction.py): the
operator, its checks, the pipelines' ``back_projection_steps`` and its measured effect on real
photographs through the committed TAEF2 model."""
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from tiny_models import make_upscaler
from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.constants import DEFAULT_BACK_PROJECTION_STEPS
from uplift_diffusers.image_processor import load_hr_lr, pil_to_tensor
from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline
from uplift_diffusers.utils.color_correction import back_project, project_to
from uplift_diffusers.utils.validation import check_back_projection_steps
from evaluation.sr_protocol import bicubic_upscale, psnr

MODEL_DIR = Path(__file__).resolve().parents[1] / "examples" / "models" / "uplift-taef2-bsds500" / "upscaler"


def smooth_image(size: int, seed: int = 0) -> torch.Tensor:
    """A 1 x 3 x size x size image in [0.1, 0.9]: random low-frequency content plus fine noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=generator)
    image = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (0.1 + 0.8 * (image + 0.1 * torch.rand(1, 3, size, size, generator=generator)).clamp(0, 1)).clamp(0, 1)


def downsample(image: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)


# ------------------------------------------------------------------------------- the operator
def test_the_downsampling_is_pils_bilinear_resize():
    """The degradation back-projection inverts is the protocol's LR: PIL bilinear (antialiased)."""
    image = smooth_image(256)
    pil = PIL.Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    ours = downsample(pil_to_tensor(pil), (64, 64)).clamp(0, 1)
    theirs = pil_to_tensor(pil.resize((64, 64), PIL.Image.BILINEAR))
    assert psnr(ours, theirs).item() > 45.0


def test_each_round_brings_the_downsampled_output_closer_to_the_reference():
    high = smooth_image(128, seed=1)
    reference = downsample(smooth_image(128, seed=2), (32, 32)).clamp(0, 1)
    errors = [
        (downsample(back_project(high, reference, steps), (32, 32)) - reference).abs().mean().item() for steps in (0, 1, 2, 5, 10)
    ]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05 * errors[0]


def test_zero_steps_is_the_identity_and_equal_sizes_give_the_reference():
    image = smooth_image(32)
    reference = smooth_image(32, seed=3)
    assert back_project(image, reference, 0) is image
    torch.testing.assert_close(back_project(image, reference, 1), reference, atol=1e-6, rtol=0)


def test_high_frequencies_are_kept():
    """What the downsampling removes (a checkerboard at the high resolution) passes through untouched."""
    reference = torch.full((1, 3, 16, 16), 0.5)
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2
    image = (0.5 + 0.1 * (checker.float() * 2 - 1)).expand(1, 3, 64, 64).contiguous()
    torch.testing.assert_close(back_project(image, reference, 5), image, atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_and_device_are_kept(dtype):
    image, reference = smooth_image(32).to(dtype), smooth_image(8, seed=1).to(dtype)
    out = back_project(image, reference, 2)
    assert out.dtype == dtype and out.shape == image.shape
    assert 0 <= out.min() and out.max() <= 1


def test_any_size_ratio():
    """Non-integer ratios (e.g. 3x of 21 x 13) work: the downsampling goes to the reference's size."""
    image = F.interpolate(torch.cat([smooth_image(64, seed=1), smooth_image(64, seed=2)]), size=(39, 63), mode="bilinear")
    reference = downsample(F.interpolate(torch.cat([smooth_image(64, seed=3), smooth_image(64, seed=4)]), size=(39, 63)), (13, 21))
    before = (downsample(image, (13, 21)) - reference).abs().mean()
    after = (downsample(back_project(image, reference, 5), (13, 21)) - reference).abs().mean()
    assert after < 0.25 * before


def test_project_to_is_differentiable_and_unclamped():
    image = smooth_image(32).requires_grad_(True)
    reference = torch.ones(1, 3, 8, 8)
    out = project_to(image, reference, 3)
    assert out.max() > 1.0  # not clamped, so gradients are not cut
    out.sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=-1), r"`steps` must be an int >= 0 .*got -1"),
        (dict(steps=1.5), r"`steps` must be an int >= 0 .*got 1.5"),
        (dict(steps=True), r"`steps` must be an int >= 0 .*got True"),
        (dict(reference=torch.rand(1, 3, 40, 8)), r"`reference` \(40 x 8\) is larger than `image` \(32 x 32\)"),
        (dict(reference=torch.rand(2, 3, 8, 8)), r"`reference`.*batch"),
        (dict(reference=torch.rand(1, 1, 8, 8)), r"`reference`"),
        (dict(image=torch.rand(1, 3, 32, 32) * 2), r"`image`.*\[0, 1\]"),
        (dict(image=torch.rand(3, 32, 32)), r"`image` must have shape B x 3 x H x W"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    arguments = dict(image=torch.rand(1, 3, 32, 32), reference=torch.rand(1, 3, 8, 8), steps=2)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        back_project(**arguments)


def test_check_steps_names_the_argument():
    check_back_projection_steps(0)
    check_back_projection_steps(7)
    with pytest.raises(ValueError, match=r"`back_projection_steps` must be an int >= 0"):
        check_back_projection_steps("5")


# ------------------------------------------------------------------------------- the pipelines
@pytest.fixture
def tiny_sr(tiny_autoencoder):
    pipe = UPLiFTSuperResolutionPipeline(vae=tiny_autoencoder, upscaler=make_upscaler(4))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("size, kwargs", [((16, 24), dict(upscale_factor=4)), ((13, 21), dict(upscale_factor=3)), ((12, 20), dict(width=50))])
def test_super_resolution_default_is_the_paper_output_back_projected(tiny_sr, size, kwargs):
    """Default 5 rounds = the paper's output (``back_projection_steps=0``) back-projected onto the
    input, for powers of two, other factors and exact sizes (padded inputs: onto the content)."""
    image = torch.rand(1, 3, *size)
    paper = tiny_sr(image, generator=torch.Generator().manual_seed(0), output_type="pt", back_projection_steps=0, **kwargs).images
    default = tiny_sr(image, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images
    assert DEFAULT_BACK_PROJECTION_STEPS == 5
    torch.testing.assert_close(default, back_project(paper, image, 5), atol=1e-6, rtol=0)
    error = lambda out: (downsample(out, size) - image).abs().mean()  # noqa: E731
    assert error(default) < 0.5 * error(paper)


@pytest.mark.parametrize("value", [-1, 2.0, None, True])
def test_super_resolution_refuses_bad_steps(tiny_sr, value):
    with pytest.raises(ValueError, match=r"`back_projection_steps` must be an int >= 0"):
        tiny_sr(torch.rand(1, 3, 8, 8), back_projection_steps=value)


def test_text_to_image_pipeline_back_projects_onto_the_base_image(tiny_sd_components):
    from uplift_diffusers import StableDiffusionUPLiFTPipeline

    pipe = StableDiffusionUPLiFTPipeline(**tiny_sd_components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    arguments = dict(prompt="a cat", num_inference_steps=2, output_type="pt", upscale_factor=2, return_base_images=True)
    paper = pipe(**arguments, generator=torch.Generator().manual_seed(0))
    projected = pipe(**arguments, generator=torch.Generator().manual_seed(0), back_projection_steps=3)
    torch.testing.assert_close(projected.base_images, paper.base_images)
    torch.testing.assert_close(projected.images, back_project(paper.images, paper.base_images, 3), atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match=r"`back_projection_steps` must be an int >= 0"):
        pipe(**arguments, back_projection_steps=-2)


def test_hooked_pipeline_back_projects_onto_the_base_image(tiny_sd_components):
    from diffusers import StableDiffusionPipeline

    from uplift_diffusers import apply_uplift, remove_uplift

    shared = {k: v for k, v in tiny_sd_components.items() if k != "upscaler"}
    pipe = StableDiffusionPipeline(**shared, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    arguments = dict(prompt="a cat", num_inference_steps=2, output_type="pt")
    base = pipe(**arguments, generator=torch.Generator().manual_seed(0)).images
    apply_uplift(pipe, tiny_sd_components["upscaler"])
    paper = pipe(**arguments, generator=torch.Generator().manual_seed(0)).images
    apply_uplift(pipe, tiny_sd_components["upscaler"], back_projection_steps=2)
    projected = pipe(**arguments, generator=torch.Generator().manual_seed(0)).images
    remove_uplift(pipe)
    torch.testing.assert_close(projected, back_project(paper, base, 2), atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match=r"`back_projection_steps` must be an int >= 0"):
        apply_uplift(pipe, tiny_sd_components["upscaler"], back_projection_steps="2")


# ------------------------------------------------------------------------------- real photographs
def bsds_test_pairs(shared_path, taef2, count: int, factor: int):
    """The first ``count`` BSDS500 test images as the protocol's pairs (centre 256 crops, LR = PIL
    bilinear 256 / factor): ``(PIL pairs, HR batch, LR batch, the committed model's pipeline)``."""
    from uplift_diffusers.image_processor import list_images

    pairs = [load_hr_lr(path, 256, 256 // factor) for path in list_images(shared_path("data", "bsds500", "test"))[:count]]
    hr = torch.cat([pil_to_tensor(h) for h, _ in pairs])
    lr = torch.cat([pil_to_tensor(l) for _, l in pairs])
    pipe = UPLiFTSuperResolutionPipeline(vae=taef2, upscaler=UPLiFTLatentUpscaler.from_pretrained(MODEL_DIR))
    pipe.set_progress_bar_config(disable=True)
    return pairs, hr, lr, pipe


@pytest.mark.slow  # the committed model on 8 BSDS500 images, about 6 s
def test_gain_on_bsds500_with_the_committed_model(taef2, shared_path):
    """Measured on the first 8 BSDS500 test images (centre 256 crops, 64 -> 256, PIL bilinear LR):
    back-projection adds > 0.4 dB to UPLiFT (the full 200 images: +0.64 dB) and to bicubic, and
    UPLiFT with it stays > 1 dB above plain bicubic (the issue #16 floor)."""
    pairs, hr, lr, pipe = bsds_test_pairs(shared_path, taef2, 8, factor=4)
    generators = [torch.Generator().manual_seed(i) for i in range(len(pairs))]
    paper = pipe(lr, upscale_factor=4, generator=generators, output_type="pt", back_projection_steps=0).images
    bicubic = torch.cat([bicubic_upscale(l, (256, 256)) for _, l in pairs])
    gains = {
        "uplift": (psnr(back_project(paper, lr, 5), hr) - psnr(paper, hr)).mean().item(),
        "bicubic": (psnr(back_project(bicubic, lr, 5), hr) - psnr(bicubic, hr)).mean().item(),
    }
    assert gains["uplift"] > 0.4 and gains["bicubic"] > 0.4, gains
    assert (psnr(back_project(paper, lr, 5), hr) - psnr(bicubic, hr)).mean() > 1.0


# ------------------------------------------------------------------------------- self-ensemble
@pytest.fixture
def deterministic_sr(tiny_autoencoder):
    pipe = UPLiFTSuperResolutionPipeline(vae=tiny_autoencoder, upscaler=make_upscaler(4, noise_scale=0.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("size, kwargs", [((16, 24), dict(upscale_factor=2)), ((13, 21), dict(upscale_factor=3)), ((12, 20), dict(width=50))])
def test_ensemble_averages_the_flipped_and_rotated_upscales(deterministic_sr, size, kwargs):
    """ensemble=8: the eight mirrored / rotated copies upscaled (the paper's output each), turned
    back, averaged, then back-projected once; ensemble=2 is the image and its mirror."""
    from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import ENSEMBLE_SIZES

    image = torch.rand(1, 3, *size)
    paper = lambda x, **extra: deterministic_sr(x, output_type="pt", back_projection_steps=0, **extra).images  # noqa: E731
    reference = paper(image, **kwargs)
    height, width = reference.shape[-2:]
    copies = []
    for turns in range(4):
        for mirrored in (False, True):
            x = torch.rot90(image.flip(-1) if mirrored else image, turns, dims=(-2, -1))
            extra = dict(kwargs)
            if "width" in extra and turns % 2:
                extra = dict(height=extra["width"])
            y = torch.rot90(paper(x, **extra), -turns, dims=(-2, -1))
            copies.append(y.flip(-1) if mirrored else y)
    assert all(copy.shape == reference.shape for copy in copies)
    eight = deterministic_sr(image, output_type="pt", ensemble=8, **kwargs).images
    torch.testing.assert_close(eight, back_project(torch.stack(copies).mean(0), image, 5), atol=2e-6, rtol=0)
    two = deterministic_sr(image, output_type="pt", ensemble=2, back_projection_steps=0, **kwargs).images
    torch.testing.assert_close(two, (copies[0] + copies[1]) / 2, atol=2e-6, rtol=0)
    assert ENSEMBLE_SIZES == (1, 2, 4, 8) and eight.shape == (1, 3, height, width)


@pytest.mark.parametrize("value", [3, 0, 16, True, 2.0])
def test_ensemble_refuses_other_sizes(deterministic_sr, value):
    with pytest.raises(ValueError, match=r"`ensemble` must be one of \(1, 2, 4, 8\)"):
        deterministic_sr(torch.rand(1, 3, 8, 8), ensemble=value)


def test_ensemble_progress_counts_every_copy(deterministic_sr, monkeypatch):
    updates = []

    class Bar:
        def __init__(self, total=None, **_):
            updates.append(total)

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def update(self, n=1):
            updates.append("step")

        def set_postfix_str(self, text):
            pass

        set_description = set_postfix_str

    monkeypatch.setattr(deterministic_sr, "progress_bar", lambda total=None, **kw: Bar(total))
    deterministic_sr(torch.rand(1, 3, 16, 24), upscale_factor=4, ensemble=4)
    assert updates[0] == 4 * (1 + 2 + 1) and updates.count("step") == updates[0]


@pytest.mark.slow  # TAEF2 on 8 images, 8 + 1 upscales each: about 10 s
def test_ensemble_gain_on_bsds500_with_the_committed_model(taef2, shared_path):
    """Measured: self-ensemble of 8 adds > 0.1 dB after back-projection on the first 8 BSDS500 test
    images at 4x (all 200: +0.18 dB)."""
    pairs, hr, lr, pipe = bsds_test_pairs(shared_path, taef2, 8, factor=4)
    single = pipe(lr, upscale_factor=4, output_type="pt").images
    eight = pipe(lr, upscale_factor=4, output_type="pt", ensemble=8).images
    assert (psnr(eight, hr) - psnr(single, hr)).mean() > 0.1


@pytest.mark.slow  # TAEF2 on 16 images at 4x and 8x: about 10 s
def test_the_example_model_meets_the_issue_16_floors_on_a_subset(taef2, shared_path, caplog):
    """The committed example model, through the pipeline's defaults, on the first 16 BSDS500 test
    images: 4x >= bicubic + 1.0 dB and 8x >= bicubic + 0.3 dB (the issue's floors, measured on all
    200 / the first 50 images in the model card), and it is trained for 8x (no warning)."""
    import logging

    assert UPLiFTLatentUpscaler.load_config(MODEL_DIR)["trained_upscale_factors"] == [2, 4, 8]
    margins = {}
    for factor, floor in ((4, 1.0), (8, 0.3)):
        pairs, hr, lr, pipe = bsds_test_pairs(shared_path, taef2, 16, factor=factor)
        with caplog.at_level(logging.WARNING):
            ours = pipe(lr, upscale_factor=factor, generator=[torch.Generator().manual_seed(i) for i in range(16)], output_type="pt").images
        bicubic = torch.cat([bicubic_upscale(l, (256, 256)) for _, l in pairs])
        margins[factor] = (psnr(ours, hr).mean() - psnr(bicubic, hr).mean()).item()
        assert margins[factor] >= floor, margins
    assert "trained for the factors" not in caplog.text
