"""UPLiFTSuperResolutionPipeline with the real TAEF2 autoencoder and a small random upscaler."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tiny_models import make_upscaler
from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.models.autoencoder_tiny import TinyAutoencoder
from uplift_diffusers.image_processor import pad_to_multiple, pil_to_tensor, size_groups, split_images
from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline, UPLiFTSuperResolutionPipelineOutput

TAEF2_CHANNELS = 32  # latent channels of the TAEF2 autoencoder


@pytest.fixture
def pipe(taef2):
    pipeline = UPLiFTSuperResolutionPipeline(vae=taef2, upscaler=make_upscaler(TAEF2_CHANNELS))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def gradient_image(width, height, mode="RGB"):
    """A smooth colour image (values away from 0 and 1) in the given PIL mode."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([60 + 120 * x / max(width - 1, 1), 80 + 100 * y / max(height - 1, 1), np.full_like(x, 128.0)], -1)
    image = PIL.Image.fromarray(rgb.astype(np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


# ------------------------------------------------------------------------------- sizes
def test_odd_size_exact_output(pipe):
    out = pipe(gradient_image(121, 81), upscale_factor=4)
    assert isinstance(out, UPLiFTSuperResolutionPipelineOutput)
    assert len(out.images) == 1 and out.images[0].size == (484, 324) and out.images[0].mode == "RGB"


@pytest.mark.parametrize("width, height", [(1, 1), (3, 5), (8, 8), (17, 9)])
def test_tiny_and_unaligned_sizes(pipe, width, height):
    out = pipe(gradient_image(width, height), upscale_factor=2, output_type="np")
    assert out.images.shape == (1, 2 * height, 2 * width, 3)
    assert np.isfinite(out.images).all() and out.images.min() >= 0 and out.images.max() <= 1


def test_factor_eight_and_pt_output(pipe):
    out = pipe(torch.rand(3, 10, 12), upscale_factor=8, output_type="pt")
    assert out.images.shape == (1, 3, 80, 96) and out.images.dtype == torch.float32


def test_color_correction_matches_input_means(pipe):
    image = gradient_image(24, 16)
    corrected = pipe(image, upscale_factor=2, output_type="pt", back_projection_steps=0).images
    raw = pipe(image, upscale_factor=2, output_type="pt", color_correction=False, back_projection_steps=0).images
    target = pil_to_tensor(image).mean(dim=(2, 3))
    clipped = ((corrected <= 0) | (corrected >= 1)).float().mean()
    assert clipped < 1e-3
    torch.testing.assert_close(corrected.mean(dim=(2, 3)), target, atol=1e-4, rtol=0)
    assert (raw.mean(dim=(2, 3)) - target).abs().max() > 1e-3


def test_matches_manual_computation(pipe, taef2):
    """encode (padded, posterior mode) -> upscaler(latents, padded image) -> decode -> crop -> correct
    -> back-project (5 rounds, the default)."""
    from uplift_diffusers.utils.color_correction import back_project
    from uplift_diffusers.utils.color_correction import color_correct

    image = torch.rand(1, 3, 12, 20)
    padded = pad_to_multiple(image, 8)
    assert padded.shape == (1, 3, 16, 24)
    with torch.no_grad():
        latents = taef2.encode(padded * 2 - 1).latents
        upscaled = pipe.upscaler(latents, padded, num_steps=1).sample
        decoded = (taef2.decode(upscaled).sample / 2 + 0.5).clamp(0, 1)[:, :, :24, :40]
    expected = color_correct(decoded, image)
    out = pipe(image, upscale_factor=2, output_type="pt", back_projection_steps=0).images
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    out = pipe(image, upscale_factor=2, output_type="pt").images
    torch.testing.assert_close(out, back_project(expected, image, 5), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------- input kinds
ALL_MODES = ["1", "L", "LA", "RGB", "RGBA", "P", "PA", "I;16", "I", "F", "CMYK", "YCbCr", "LAB", "HSV", "RGBa", "La"]


def test_every_pil_mode(pipe):
    images = [gradient_image(13, 9, mode) for mode in ALL_MODES]
    assert [im.mode for im in images] == ALL_MODES
    out = pipe(images, upscale_factor=2)
    assert len(out.images) == len(ALL_MODES)
    # the input's mode is kept: gray -> L, gray + alpha -> LA, transparent colour -> RGBA (#12)
    expected = ["L", "L", "LA", "RGB", "RGBA", "RGB", "RGBA", "L", "L", "L", "RGB", "RGB", "RGB", "RGB", "RGBA", "LA"]
    assert [im.mode for im in out.images] == expected
    assert all(im.size == (26, 18) for im in out.images)


def test_mode_conversion_numbers():
    def value(image):
        (item,) = split_images(image)
        rgb = item.rgb if item.alpha is None else item.rgb * item.alpha + 1 - item.alpha  # over white
        return rgb[0, :, 0, 0].tolist()

    assert value(PIL.Image.new("L", (2, 2), 51)) == pytest.approx([0.2] * 3)
    assert value(PIL.Image.new("I;16", (2, 2), 65535)) == pytest.approx([1.0] * 3)
    assert value(PIL.Image.new("I", (2, 2), 32768)) == pytest.approx([32768 / 65535] * 3)
    assert value(PIL.Image.new("F", (2, 2), 127.5)) == pytest.approx([0.5] * 3)
    assert value(PIL.Image.new("CMYK", (2, 2), (0, 255, 255, 0))) == pytest.approx([1.0, 0.0, 0.0])
    # alpha is composited on white: half-transparent black -> light gray, transparent red -> white
    assert value(PIL.Image.new("RGBA", (2, 2), (0, 0, 0, 128))) == pytest.approx([1 - 128 / 255] * 3)
    assert value(PIL.Image.new("LA", (2, 2), (0, 0))) == pytest.approx([1.0] * 3)
    premultiplied = PIL.Image.new("RGBa", (2, 2), (100, 50, 25, 128))  # (200, 100, 50) at alpha 128
    assert value(premultiplied) == pytest.approx([(100 + 127) / 255, (50 + 127) / 255, (25 + 127) / 255])
    palette = PIL.Image.new("P", (2, 2), 0)
    palette.info["transparency"] = 0
    assert value(palette) == pytest.approx([1.0] * 3)


def test_numpy_and_tensor_inputs_agree(pipe):
    rgb = np.array(gradient_image(16, 8))
    as_float = rgb.astype(np.float32) / 255.0
    inputs = [
        rgb,  # H x W x 3 uint8
        as_float,  # H x W x 3 float
        torch.from_numpy(as_float).permute(2, 0, 1),  # C x H x W
        torch.from_numpy(as_float).permute(2, 0, 1)[None],  # B x C x H x W
        torch.from_numpy(rgb).permute(2, 0, 1),  # uint8 tensor
        PIL.Image.fromarray(rgb),
    ]
    out = pipe(inputs, upscale_factor=2, output_type="np").images
    assert out.shape == (len(inputs), 16, 32, 3)
    for other in out[1:]:
        np.testing.assert_allclose(other, out[0], atol=1e-5)
    gray = pipe(np.full((8, 8), 0.5, dtype=np.float32), upscale_factor=2, output_type="np").images
    assert gray.shape == (1, 16, 16, 1)  # gray in, gray out (#12)
    assert pipe(np.zeros((8, 8, 3), dtype=np.uint16), upscale_factor=2, output_type="np").images.shape == (1, 16, 16, 3)


def test_batched_inputs_expand_to_images(pipe):
    batch = torch.rand(3, 3, 8, 8)
    out = pipe([batch, torch.rand(1, 3, 8, 16)], upscale_factor=2, output_type="pt").images
    assert isinstance(out, list) and [tuple(o.shape) for o in out] == [(3, 16, 16)] * 3 + [(3, 16, 32)]


def test_mixed_sizes_keep_order_and_batch_equal_sizes(pipe, monkeypatch):
    sizes = [(13, 9), (20, 16), (13, 9), (7, 30)]
    images = [gradient_image(w, h) for w, h in sizes]
    batches = []
    original = pipe.upscale_batch

    def spy(batch, *args, **kwargs):
        batches.append(tuple(batch.shape))
        return original(batch, *args, **kwargs)

    monkeypatch.setattr(pipe, "upscale_batch", spy)
    out = pipe(images, upscale_factor=2, output_type="np").images
    assert isinstance(out, list) and [o.shape for o in out] == [(2 * h, 2 * w, 3) for w, h in sizes]
    assert batches == [(2, 3, 9, 13), (1, 3, 16, 20), (1, 3, 30, 7)]
    # batching does not change the result
    alone = pipe(images[2], upscale_factor=2, output_type="np").images[0]
    np.testing.assert_allclose(out[2], alone, atol=1e-5)


def test_pad_to_multiple_modes():
    row = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 8, 5)
    padded = pad_to_multiple(row, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert padded[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]  # reflection
    single = pad_to_multiple(torch.full((1, 1, 1, 1), 0.7), 8)
    assert single.shape == (1, 1, 8, 8) and torch.all(single == 0.7)  # replication (too small to reflect)
    narrow = pad_to_multiple(torch.arange(3.0).view(1, 1, 1, 3).expand(1, 1, 8, 3), 8)
    assert narrow[0, 0, 0].tolist() == [0, 1, 2, 2, 2, 2, 2, 2]  # 5 > 3 - 1: replication


def test_size_groups_order():
    tensors = [torch.zeros(1, 3, 4, 6), torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 6), torch.zeros(1, 3, 6, 4)]
    assert size_groups(tensors) == [[0, 2], [1], [3]]


def test_pil_to_tensor_agrees_with_split_images_on_rgb():
    image = gradient_image(13, 9)
    converted = pil_to_tensor(image)
    assert converted.shape == (1, 3, 9, 13) and converted.dtype == torch.float32 and converted.is_contiguous()
    assert torch.equal(converted, split_images(image)[0].rgb)
    # pil_to_tensor drops alpha (PIL's convert), the pipeline keeps it
    rgba = PIL.Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert pil_to_tensor(rgba)[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert split_images(rgba)[0].alpha.flatten().tolist() == [0.0] * 4


@pytest.mark.slow  # a new interpreter importing diffusers: 5.7 s (measured)
def test_shared_modules_import_no_stable_diffusion_or_clip():
    """pipeline_utils, image_io and the SR pipeline import neither the SD pipeline nor CLIP classes."""
    script = (
        "import sys, uplift_diffusers.pipelines.pipeline_utils, uplift_diffusers.image_processor\n"
        "import uplift_diffusers.pipelines.pipeline_uplift_super_resolution\n"
        "print(sorted(m for m in sys.modules if 'stable_diffusion' in m or m.startswith('transformers.models.clip')))"
    )
    repo_root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------- determinism / saving
def test_seeded_reproducibility(taef2):
    noisy = UPLiFTSuperResolutionPipeline(vae=taef2, upscaler=make_upscaler(TAEF2_CHANNELS, noise_scale=1.0))
    noisy.set_progress_bar_config(disable=True)
    image = gradient_image(16, 16)
    first = noisy(image, upscale_factor=2, generator=torch.Generator().manual_seed(1), output_type="np").images
    second = noisy(image, upscale_factor=2, generator=torch.Generator().manual_seed(1), output_type="np").images
    other = noisy(image, upscale_factor=2, generator=torch.Generator().manual_seed(2), output_type="np").images
    assert np.array_equal(first, second) and not np.array_equal(first, other)
    per_image = noisy([image, image], upscale_factor=2, output_type="np",
                      generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)]).images
    np.testing.assert_array_equal(per_image[0], per_image[1])


def test_save_pretrained_round_trip(pipe, tmp_path):
    """diffusers' own saving and loading (no hook needed in a local folder), after reassigning the
    upscaler; from_pipe shares the components."""
    pipe.upscaler = make_upscaler(TAEF2_CHANNELS, seed=3)
    image = gradient_image(16, 8)
    expected = pipe(image, upscale_factor=2, output_type="np").images
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["upscaler"] == [UPLiFTLatentUpscaler.__module__, "UPLiFTLatentUpscaler"]
    assert index["vae"] == [TinyAutoencoder.__module__, "TinyAutoencoder"]
    loaded = UPLiFTSuperResolutionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.vae, TinyAutoencoder) and isinstance(loaded.upscaler, UPLiFTLatentUpscaler)
    np.testing.assert_array_equal(loaded(image, upscale_factor=2, output_type="np").images, expected)
    shared = UPLiFTSuperResolutionPipeline.from_pipe(loaded)
    assert shared.vae is loaded.vae and shared.upscaler is loaded.upscaler


# ------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(upscale_factor=0.5), r"`upscale_factor` must be a finite real number >= 1"),
        (dict(upscale_factor=float("nan")), r"`upscale_factor` must be a finite real number >= 1"),
        (dict(upscale_factor=float("inf")), r"`upscale_factor` must be a finite real number >= 1"),
        (dict(upscale_factor=True), r"`upscale_factor` must be a finite real number >= 1"),
        (dict(upscale_factor="4"), r"`upscale_factor` must be a finite real number >= 1"),
        (dict(upscale_factor=2, height=32), r"either `upscale_factor` or `height` / `width`, not both"),
        (dict(height=7), r"`height` must be an int of at least the input's 8 pixels.*got 7"),
        (dict(width=8, height=4), r"`height` must be an int of at least.*got 4"),
        (dict(width=20.0), r"`width` must be an int.*got 20.0"),
        (dict(height=0), r"`height` must be an int of at least.*got 0"),
    ],
)
def test_bad_factor_or_size(tiny_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(gradient_image(8, 8), **kwargs)


@pytest.mark.parametrize(
    "image, match",
    [
        ([], "empty list"),
        (np.zeros((0, 5, 3), dtype=np.uint8), r"`image` has shape \(0, 5, 3\)"),
        (torch.zeros(3, 4, 0), r"`image` has shape \(3, 4, 0\)"),
        (torch.zeros(0, 3, 4, 4), r"`image` has shape \(0, 3, 4, 4\)"),
        (PIL.Image.new("RGB", (0, 0)), r"`image` has shape \(0, 0, 3\)"),
        ("image.png", "type str"),
        (np.full((4, 4, 3), 2.0), r"\[0, 1\]"),
        (torch.full((3, 4, 4), -0.5), r"\[0, 1\]"),
        (torch.zeros(5, 4, 4), r"`image` has shape \(5, 4, 4\).* C = 1 \(gray\)"),
        (np.zeros((4, 4, 3), dtype=np.int32), "dtype int32"),
        (PIL.Image.new("F", (2, 2), 300.0), r"\[0, 255\]"),
        (PIL.Image.new("I", (2, 2), 70000), r"\[0, 65535\]"),
    ],
)
def test_bad_images(pipe, image, match):
    with pytest.raises(ValueError, match=match):
        pipe(image, upscale_factor=2)


@pytest.mark.parametrize(
    "image, name",
    [
        (torch.full((1, 3, 8, 8), float("nan")), "image"),
        ([torch.rand(3, 8, 8), torch.full((3, 8, 8), float("inf"))], r"image\[1\]"),
        (np.full((8, 8, 3), np.nan, dtype=np.float32), "image"),
    ],
)
def test_nan_images_are_refused_at_entry(pipe, image, name):
    with pytest.raises(ValueError, match=f"`{name}` contains NaN or infinite values"):
        pipe(image, upscale_factor=2)


def test_bad_generator_and_output_type(pipe):
    with pytest.raises(ValueError, match="generator"):
        pipe([gradient_image(8, 8)] * 2, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="output_type"):
        pipe(gradient_image(8, 8), output_type="latent")


def test_latent_channel_mismatch(taef2):
    with pytest.raises(ValueError, match="latent_channels=4 but the VAE"):
        UPLiFTSuperResolutionPipeline(vae=taef2, upscaler=make_upscaler(latent_channels=4))
    pipeline = UPLiFTSuperResolutionPipeline(vae=taef2, upscaler=make_upscaler(TAEF2_CHANNELS))
    pipeline.upscaler = make_upscaler(latent_channels=16)
    with pytest.raises(ValueError, match="latent_channels=16"):
        pipeline(gradient_image(8, 8), upscale_factor=2)


# ------------------------------------------------------------------------------- any output size (#13.1)
from uplift_diffusers.models.fast_inference import apply_fast_inference, remove_fast_inference  # noqa: E402
from uplift_diffusers.pipelines.upscale_decode import UPSCALE_METHODS, upscale_steps  # noqa: E402
from uplift_diffusers.utils.output_size import output_size_for  # noqa: E402


@pytest.fixture
def tiny_pipe(tiny_autoencoder, tiny_upscaler):
    """The pipeline on the tiny 4-channel autoencoder and upscaler (no shared material needed)."""
    pipeline = UPLiFTSuperResolutionPipeline(vae=tiny_autoencoder, upscaler=tiny_upscaler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize("factor", [1, 1.5, 2.5, 3, 6])
@pytest.mark.parametrize("method", UPSCALE_METHODS)
def test_any_factor_gives_the_exact_size(tiny_pipe, factor, method):
    tiny_pipe.upscale_method = method
    images = [gradient_image(13, 9), gradient_image(16, 24)]
    out = tiny_pipe(images, upscale_factor=factor, output_type="pt").images
    expected = [(int(np.floor(factor * h + 0.5)), int(np.floor(factor * w + 0.5))) for w, h in ((13, 9), (16, 24))]
    assert [tuple(o.shape[-2:]) for o in out] == expected
    assert all(torch.isfinite(o).all() and o.min() >= 0 and o.max() <= 1 for o in out)


@pytest.mark.parametrize(
    "height, width, expected",
    [(30, None, [(30, 43), (30, 20)]), (None, 39, [(27, 39), (59, 39)]), (37, 61, [(37, 61), (37, 61)])],
)
def test_exact_height_width(tiny_pipe, height, width, expected):
    """``height`` / ``width`` apply to every image; with one of them each image keeps its aspect ratio."""
    images = [gradient_image(13, 9), gradient_image(16, 24)]  # (width, height)
    out = tiny_pipe(images, height=height, width=width, output_type="np").images
    assert [o.shape[:2] for o in out] == expected


def test_output_size_rule():
    assert output_size_for(9, 13, 1.5) == (14, 20)  # 13.5 -> 14, 19.5 -> 20: halves up
    assert output_size_for(360, 640, out_width=1920) == (1080, 1920)
    assert output_size_for(360, 640, out_height=1080, out_width=1920) == (1080, 1920)
    assert output_size_for(10, 10, 2.0) == output_size_for(10, 10, 2) == (20, 20)
    with pytest.raises(ValueError, match="`--scale` must be a finite real number >= 1"):
        output_size_for(9, 13, 0.9, names=("--scale", "--size height", "--size width"))
    with pytest.raises(ValueError, match="pass `upscale_factor` or an output size"):
        output_size_for(9, 13)
    assert UPSCALE_METHODS == ("auto", "downsample_image", "resample_latents", "upsample_image", "bilinear_latents")
    assert [upscale_steps((3 * 16, 3 * 16), (16, 16), m) for m in UPSCALE_METHODS] == [2, 2, 2, 1, 2]
    assert [upscale_steps((24, 24), (16, 16), m) for m in UPSCALE_METHODS] == [1, 1, 1, 0, 1]
    assert [upscale_steps((64, 64), (16, 16), m) for m in UPSCALE_METHODS] == [2, 2, 2, 2, 2]
    # "auto" never steps past the trained depth for other factors; powers of two keep log2(f) steps
    assert [upscale_steps((6 * 16, 6 * 16), (16, 16), "auto", t) for t in (None, [2, 4], [2, 4, 8])] == [3, 2, 3]
    assert upscale_steps((12 * 16, 12 * 16), (16, 16), "auto", [2]) == 1
    assert upscale_steps((8 * 16, 8 * 16), (16, 16), "auto", [2, 4]) == 3


def test_auto_method_follows_the_trained_factors(tiny_autoencoder, tiny_upscaler, monkeypatch):
    """6x with a model trained for 2x and 4x: two steps, then upsampling of the decoded image."""
    tiny_upscaler.register_to_config(trained_upscale_factors=[2, 4])
    pipe = UPLiFTSuperResolutionPipeline(vae=tiny_autoencoder, upscaler=tiny_upscaler)
    pipe.set_progress_bar_config(disable=True)
    from uplift_diffusers.pipelines import upscale_decode

    steps = []
    original = upscale_decode.upscale_latents
    monkeypatch.setattr(upscale_decode, "upscale_latents", lambda up, latents, guide, num_steps, *a: steps.append(num_steps) or original(up, latents, guide, num_steps, *a))
    out = pipe(gradient_image(16, 8), upscale_factor=6, output_type="pt").images
    assert steps == [2] and out.shape == (1, 3, 48, 96)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_powers_of_two_are_a_direct_model_call(tiny_pipe, tiny_autoencoder, tiny_upscaler, factor):
    """Factors 2, 4, 8 (also as floats or as an exact size) are bit-identical to encode -> UPLiFT
    (log2 f steps) -> decode -> crop -> colour correction -> back-projection, whatever the
    resampling method."""
    from uplift_diffusers.utils.color_correction import back_project
    from uplift_diffusers.utils.color_correction import color_correct

    image = torch.rand(1, 3, 12, 20)
    padded = pad_to_multiple(image, 8)
    with torch.no_grad():
        latents = tiny_autoencoder.encode(padded * 2 - 1).latents
        upscaled = tiny_upscaler(latents, padded, num_steps=int(np.log2(factor)), generator=torch.Generator().manual_seed(1)).sample
        decoded = (tiny_autoencoder.decode(upscaled).sample / 2 + 0.5).clamp(0, 1)[:, :, : 12 * factor, : 20 * factor]
    expected = back_project(color_correct(decoded, image), image, 5)
    for method in UPSCALE_METHODS:
        tiny_pipe.upscale_method = method
        for kwargs in (dict(upscale_factor=factor), dict(upscale_factor=float(factor)), dict(height=12 * factor)):
            out = tiny_pipe(image, generator=torch.Generator().manual_seed(1), output_type="pt", **kwargs).images
            assert torch.equal(out, expected), (method, kwargs)


class CountingBar:
    """A stand-in for ``pipe.progress_bar(total=...)``: records the total and the updates."""

    def __init__(self, total=None, **_):
        self.total, self.n = total, 0

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, text):  # the stage's name
        pass

    set_description = set_postfix_str  # the images'


@pytest.mark.parametrize(
    "sizes, kwargs, updates",
    [
        ([(16, 16)], dict(upscale_factor=4), 1 + 2 + 1),  # encode, two 2x steps, decode
        ([(16, 16)], dict(upscale_factor=3), 1 + 2 + 1),
        ([(16, 16)], dict(upscale_factor=1), 1 + 0 + 1),
        ([(16, 16), (8, 24), (16, 16)], dict(upscale_factor=2), 2 * (1 + 1 + 1)),  # two sizes
    ],
)
def test_progress_bar_counts_stages(tiny_pipe, monkeypatch, sizes, kwargs, updates):
    bars = []
    monkeypatch.setattr(tiny_pipe, "progress_bar", lambda **kw: bars.append(CountingBar(**kw)) or bars[-1])
    tiny_pipe([gradient_image(w, h) for w, h in sizes], **kwargs)
    assert len(bars) == 1 and bars[0].total == updates and bars[0].n == updates


def test_progress_bar_counts_tiles_and_any_size_with_tiling(tiny_pipe, monkeypatch):
    """Tiled: every 2x step of every tile advances the bar; 3x still gives the exact size."""
    tiny_pipe.enable_tiling(tile_size=2, overlap=1)  # 24 x 32 px -> 3 x 4 latents -> 2 x 3 tiles
    bars = []
    monkeypatch.setattr(tiny_pipe, "progress_bar", lambda **kw: bars.append(CountingBar(**kw)) or bars[-1])
    out = tiny_pipe(gradient_image(32, 24), upscale_factor=3, output_type="pt").images
    assert out.shape == (1, 3, 72, 96)
    assert bars[0].total == bars[0].n == 1 + 6 * 2 + 1


def test_progress_bar_real_tqdm_reaches_total(tiny_pipe, capsys):
    tiny_pipe.set_progress_bar_config(disable=False)
    tiny_pipe(gradient_image(16, 16), upscale_factor=8)
    assert "5/5" in capsys.readouterr().err  # encode, three 2x steps, decode


def test_model_step_callback(tiny_upscaler):
    latents, image = torch.randn(1, 4, 3, 5), torch.rand(1, 3, 24, 40)
    calls = []
    with torch.no_grad():
        out = tiny_upscaler(latents, image, num_steps=3, output_intermediate=True, callback=lambda i, z: calls.append((i, z)))
    assert [i for i, _ in calls] == [0, 1, 2]
    assert all(torch.equal(z, step) for (_, z), step in zip(calls, out.intermediate))
    with pytest.raises(ValueError, match="`callback` must be None or a function"):
        tiny_upscaler(latents, image, callback="print")
    apply_fast_inference(tiny_upscaler, dtype=torch.float32, compile=False, channels_last=False)
    fast_calls = []
    tiny_upscaler(latents, image, num_steps=2, callback=lambda i, z: fast_calls.append(i))
    assert fast_calls == [0, 1]
    with pytest.raises(ValueError, match="`callback` must be None or a function"):
        tiny_upscaler(latents, image, callback=3)
    remove_fast_inference(tiny_upscaler)


@pytest.mark.slow
def test_three_x_at_least_bicubic_with_the_committed_taef2_model(taef2, shared_path):
    """Issue #13 bar: 3x through the committed TAEF2 model >= PIL bicubic (PSNR), on the first four
    BSDS500 test images (centre 192 px crops, LR 64 px = PIL bilinear), with the default method."""
    from uplift_diffusers.image_processor import list_images, load_hr_lr
    from evaluation.sr_protocol import bicubic_upscale, psnr

    model_dir = Path(__file__).resolve().parents[1] / "examples" / "models" / "uplift-taef2-bsds500" / "upscaler"
    files = list_images(shared_path("data", "bsds500", "test"))[:4]
    pairs = [load_hr_lr(path, 192, 64) for path in files]
    hr = torch.cat([pil_to_tensor(h) for h, _ in pairs])
    pipeline = UPLiFTSuperResolutionPipeline(vae=taef2, upscaler=UPLiFTLatentUpscaler.from_pretrained(model_dir))
    pipeline.set_progress_bar_config(disable=True)
    ours = pipeline([lr for _, lr in pairs], upscale_factor=3, output_type="pt").images
    bicubic = torch.cat([bicubic_upscale(lr, (192, 192)) for _, lr in pairs])
    assert ours.shape == hr.shape
    assert psnr(ours, hr).mean() >= psnr(bicubic, hr).mean()


def test_any_size_study_script(tmp_path, tiny_autoencoder, tiny_upscaler):
    """The study runs end to end on tiny models and writes its JSON and table; at 2x (a power of
    two) every UPLiFT method is the same computation, so they score the same."""
    from evaluation.benchmarks import any_size_study

    tiny_autoencoder.save_pretrained(tmp_path / "vae")
    tiny_upscaler.save_pretrained(tmp_path / "upscaler")
    (tmp_path / "data").mkdir()
    for index in range(2):
        gradient_image(40 + index, 36).save(tmp_path / "data" / f"{index}.png")
    output = tmp_path / "out" / "study.json"
    argv = ["--model", str(tmp_path / "upscaler"), "--vae", str(tmp_path / "vae"), "--data", str(tmp_path / "data"),
            "--factors", "2", "3", "--hr-size", "24", "--output", str(output)]
    assert any_size_study.main(argv) == 0
    result = json.loads(output.read_text())
    rows = {(row["factor"], row["method"]): row for row in result["rows"]}
    assert len(rows) == 2 * (len(UPSCALE_METHODS) + 1) and all(row["images"] == 2 for row in rows.values())
    assert len({rows[(2.0, method)]["psnr"] for method in UPSCALE_METHODS}) == 1
    assert result["best"]["overall"] in UPSCALE_METHODS
    assert "| `bicubic`: PIL bicubic in pixel space |" in output.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        any_size_study.main(argv[:-4] + ["--factors", "5", "--output", str(output)])  # 24 / 5 is no integer side
