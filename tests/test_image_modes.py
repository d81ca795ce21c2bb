"""Image modes in the super-resolution pipeline (issue #12): gray stays gray, transparency
survives (alpha upscaled), white stays white; and the trained-factor record of the upscaler
(``trained_upscale_factors``) with its warning."""
import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tiny_models import make_tiny_autoencoder, make_upscaler
from uplift_diffusers import UPLiFTLatentUpscaler, UPLiFTSuperResolutionPipeline
from uplift_diffusers.image_processor import (
    OUTPUT_MODES,
    fill_transparent,
    restore_mode,
    split_images,
    upscale_alpha,
)

EXAMPLE_MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "uplift-taef2-bsds500" / "upscaler"
MODEL_LOGGER = "uplift_diffusers.models.modeling_uplift"


@pytest.fixture
def pipe():
    """Tiny VAE (4 latent channels) + tiny upscaler: fast, random weights."""
    pipeline = UPLiFTSuperResolutionPipeline(vae=make_tiny_autoencoder(), upscaler=make_upscaler(4))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def photo(width, height):
    """A smooth colour image, values away from 0 and 1, as H x W x 3 uint8."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([40 + 150 * x / max(width - 1, 1), 60 + 120 * y / max(height - 1, 1), 90 + 60 * (x + y) / (width + height)], -1)
    return rgb.astype(np.uint8)


def soft_disc(width, height, radius=0.35, feather=0.15):
    """A soft round mask as H x W float in [0, 1]: 1 inside, 0 outside, a feathered edge."""
    y, x = np.mgrid[0:height, 0:width]
    r = np.hypot((x + 0.5) / width - 0.5, (y + 0.5) / height - 0.5)
    return np.clip((radius + feather / 2 - r) / feather, 0, 1)


# ------------------------------------------------------------------------------- conversion
def _with_transparency(image, value):
    image.info["transparency"] = value
    return image


@pytest.mark.parametrize(
    "image, mode",
    [
        (PIL.Image.new("1", (3, 2), 1), "L"),
        (PIL.Image.new("L", (3, 2), 9), "L"),
        (PIL.Image.new("I;16", (3, 2), 900), "L"),
        (PIL.Image.new("I", (3, 2), 900), "L"),
        (PIL.Image.new("F", (3, 2), 9.0), "L"),
        (PIL.Image.new("LA", (3, 2), (9, 100)), "LA"),
        (PIL.Image.new("La", (3, 2), (9, 100)), "LA"),
        (_with_transparency(PIL.Image.new("L", (3, 2), 9), 9), "LA"),
        (PIL.Image.new("RGB", (3, 2), (1, 2, 3)), "RGB"),
        (PIL.Image.new("P", (3, 2), 0), "RGB"),
        (PIL.Image.new("CMYK", (3, 2), (0, 0, 0, 0)), "RGB"),
        (PIL.Image.new("YCbCr", (3, 2), (9, 9, 9)), "RGB"),
        (PIL.Image.new("RGBA", (3, 2), (1, 2, 3, 4)), "RGBA"),
        (PIL.Image.new("RGBa", (3, 2), (1, 2, 3, 4)), "RGBA"),
        (PIL.Image.new("PA", (3, 2), (0, 9)), "RGBA"),
        (_with_transparency(PIL.Image.new("P", (3, 2), 0), 0), "RGBA"),
        (np.zeros((2, 3), np.uint8), "L"),
        (np.zeros((2, 3, 1), np.float32), "L"),
        (np.zeros((2, 3, 2), np.uint8), "LA"),
        (np.zeros((2, 3, 3), np.uint16), "RGB"),
        (np.zeros((2, 3, 4), np.uint8), "RGBA"),
        (torch.zeros(1, 2, 3), "L"),
        (torch.zeros(2, 2, 3), "LA"),
        (torch.zeros(3, 2, 3), "RGB"),
        (torch.zeros(1, 4, 2, 3), "RGBA"),
    ],
)
def test_split_images_output_modes(image, mode):
    (item,) = split_images(image)
    assert item.mode == mode and item.gray == (mode in ("L", "LA"))
    assert item.rgb.shape == (1, 3, 2, 3) and item.rgb.dtype == torch.float32
    assert (item.alpha is not None) == (mode in ("LA", "RGBA"))
    if item.alpha is not None:
        assert item.alpha.shape == (1, 1, 2, 3)
    if item.gray:  # identical channels into the VAE
        assert torch.equal(item.rgb[:, 0], item.rgb[:, 1]) and torch.equal(item.rgb[:, 0], item.rgb[:, 2])


def test_split_images_values():
    (gray,) = split_images(PIL.Image.new("I;16", (2, 2), 65535))
    assert gray.rgb.unique().tolist() == [1.0]
    (la,) = split_images(PIL.Image.new("LA", (2, 2), (51, 102)))
    assert la.alpha.unique().tolist() == pytest.approx([0.4]) and la.rgb.unique().tolist() == pytest.approx([0.2])
    (premultiplied,) = split_images(PIL.Image.new("RGBa", (2, 2), (100, 50, 25, 128)))  # (200, 100, 50) at alpha 128
    assert premultiplied.rgb[0, :, 0, 0].tolist() == pytest.approx([100 / 128, 50 / 128, 25 / 128], abs=1e-6)
    (palette,) = split_images(_with_transparency(PIL.Image.new("P", (2, 2), 0), 0))
    assert palette.alpha.unique().tolist() == [0.0]
    (clear,) = split_images(np.array([[[0, 0]]], np.uint8))  # gray + alpha, all transparent: its mean colour
    assert clear.rgb.flatten().tolist() == [0.0, 0.0, 0.0] and clear.alpha.flatten().tolist() == [0.0]
    (opaque,) = split_images(PIL.Image.new("LA", (1, 1), (51, 255)))
    assert opaque.rgb.flatten().tolist() == pytest.approx([0.2] * 3) and opaque.alpha.flatten().tolist() == [1.0]


def test_bad_channel_counts_name_the_argument():
    with pytest.raises(ValueError, match=r"`image` has shape \(2, 3, 5\).*1 \(gray\), 2 \(gray \+ alpha\), 3 \(RGB\) or 4 \(RGBA\)"):
        split_images(np.zeros((2, 3, 5), np.uint8))
    with pytest.raises(ValueError, match=r"`image\[1\]` has shape \(1, 5, 2, 2\)"):
        split_images([torch.zeros(3, 2, 2), torch.zeros(1, 5, 2, 2)])


def test_fill_transparent_continues_the_visible_colours():
    colour = torch.zeros(1, 3, 16, 16)
    colour[:, 0, :, :8] = 0.8  # red on the left
    colour[:, :, :, 8:] = 1.0  # white stored under the transparent right half
    alpha = torch.zeros(1, 1, 16, 16)
    alpha[..., :8] = 1.0
    filled = fill_transparent(colour, alpha)
    assert torch.equal(filled[..., :8], colour[..., :8])  # opaque pixels keep their colour
    right = filled[..., 8:]  # transparent: the red continues, no white
    assert torch.allclose(right[:, 0], torch.full_like(right[:, 0], 0.8), atol=1e-5) and right[:, 1:].abs().max() < 1e-5
    # a half-transparent white pixel: a * white + (1 - a) * fill, the fill mostly the red around it
    alpha[..., 0, 8] = 0.5
    half = fill_transparent(colour, alpha)[0, :, 0, 8]
    assert 0.9 <= half[0] <= 1 and 0.5 <= half[1] < 0.6 and half[1] == half[2]
    # completely transparent: its mean colour
    assert torch.allclose(fill_transparent(colour, torch.zeros_like(alpha)), colour.mean(dim=(2, 3), keepdim=True).expand_as(colour))


def test_upscale_alpha_exact_size_and_no_ringing():
    alpha = torch.zeros(1, 1, 16, 16)
    alpha[..., 4:12, 4:12] = 1.0  # a hard-edged opaque square (a logo)
    up = upscale_alpha(alpha, (37, 41))  # not an integer factor
    assert up.shape == (1, 1, 37, 41) and up.min() >= 0 and up.max() <= 1
    big = upscale_alpha(alpha, (64, 64))
    assert big[..., 20:44, 20:44].unique().tolist() == [1.0]  # inside, one input pixel from the edge: exactly opaque
    assert big[..., :12, :].unique().tolist() == [0.0] and big[..., :, 52:].unique().tolist() == [0.0]
    # a soft mask: Lanczos (PIL), only its overshoot clamped
    soft = torch.from_numpy(soft_disc(16, 16, feather=0.6)).float()[None, None]
    reference = np.asarray(PIL.Image.fromarray(soft[0, 0].numpy()).resize((64, 64), PIL.Image.LANCZOS))
    difference = np.abs(upscale_alpha(soft, (64, 64))[0, 0].numpy() - reference)
    assert difference.mean() < 2e-3 and difference.max() < 0.03
    assert upscale_alpha(torch.rand(2, 1, 5, 6), (10, 12)).shape == (2, 1, 10, 12)


def test_restore_mode():
    rgb = torch.rand(3, 8, 10)
    (gray,) = split_images(PIL.Image.new("LA", (5, 4), (10, 200)))
    restored = restore_mode(rgb, gray)
    assert restored.shape == (2, 8, 10)
    assert torch.allclose(restored[0], rgb.mean(dim=0)) and torch.allclose(restored[1], torch.full((8, 10), 200 / 255))
    (opaque,) = split_images(PIL.Image.new("RGB", (5, 4)))
    assert restore_mode(rgb, opaque) is rgb


# ------------------------------------------------------------------------------- the pipeline
def test_gray_in_gray_out(pipe):
    gray = PIL.Image.fromarray(photo(12, 10)).convert("L")
    sixteen = PIL.Image.fromarray((np.asarray(gray).astype(np.uint16) * 257)).convert("I;16")
    out = pipe([gray, sixteen], upscale_factor=2).images
    assert [(im.mode, im.size) for im in out] == [("L", (24, 20))] * 2
    # the 8-bit output is the mean of the three channels of the RGB result
    as_rgb = pipe(gray.convert("RGB"), upscale_factor=2, output_type="np").images[0]
    np.testing.assert_array_equal(np.asarray(out[0]), (as_rgb.mean(-1) * 255).round().astype(np.uint8))
    arrays = pipe(np.asarray(gray), upscale_factor=2, output_type="np").images
    tensors = pipe(torch.from_numpy(np.array(gray))[None], upscale_factor=2, output_type="pt").images
    assert arrays.shape == (1, 20, 24, 1) and tensors.shape == (1, 1, 20, 24)
    np.testing.assert_allclose(arrays[..., 0], tensors[:, 0].numpy(), atol=1e-6)


def test_rgba_in_rgba_out_with_upscaled_alpha(pipe):
    mask = soft_disc(16, 12)
    rgba = np.concatenate([photo(16, 12), (mask * 255).round().astype(np.uint8)[..., None]], -1)
    out = pipe(PIL.Image.fromarray(rgba), upscale_factor=3).images[0]  # a factor that is not a power of two
    assert out.mode == "RGBA" and out.size == (48, 36)
    expected = upscale_alpha(torch.from_numpy(rgba[..., 3] / 255.0).float()[None, None], (36, 48))[0, 0].numpy()
    np.testing.assert_allclose(np.asarray(out)[..., 3] / 255.0, expected, atol=0.5 / 255 + 1e-6)
    # the RGB result is exactly the pipeline's output for the filled colour
    (item,) = split_images(PIL.Image.fromarray(rgba))
    colour = pipe(item.rgb, upscale_factor=3, output_type="np").images[0]
    np.testing.assert_array_equal(np.asarray(out)[..., :3], (colour * 255).round().astype(np.uint8))


def test_la_palette_and_array_alpha(pipe):
    la = PIL.Image.fromarray(np.stack([photo(10, 8)[..., 0], (soft_disc(10, 8) * 255).astype(np.uint8)], -1))
    assert la.mode == "LA"
    palette = PIL.Image.fromarray(photo(10, 8)).convert("P")
    palette.info["transparency"] = 0
    out = pipe([la, palette], upscale_factor=2).images
    assert [(im.mode, im.size) for im in out] == [("LA", (20, 16)), ("RGBA", (20, 16))]
    four = np.concatenate([photo(10, 8) / 255.0, soft_disc(10, 8)[..., None]], -1).astype(np.float32)
    arrays = pipe(four, height=20, output_type="np").images  # an exact size
    tensors = pipe(torch.from_numpy(four).permute(2, 0, 1), height=20, output_type="pt").images
    assert arrays.shape == (1, 20, 25, 4) and tensors.shape == (1, 4, 20, 25)
    expected = upscale_alpha(torch.from_numpy(four[..., 3])[None, None], (20, 25))[0, 0].numpy()
    np.testing.assert_allclose(arrays[0, ..., 3], expected, atol=1e-6)


def test_mixed_modes_in_one_call(pipe):
    images = [PIL.Image.new("L", (8, 8), 90), PIL.Image.new("RGBA", (8, 8), (10, 20, 30, 128)), PIL.Image.new("RGB", (8, 8), "red")]
    assert [im.mode for im in pipe(images, upscale_factor=2).images] == ["L", "RGBA", "RGB"]
    arrays = pipe(images, upscale_factor=2, output_type="np").images  # one size, different channels: a list
    assert [a.shape for a in arrays] == [(16, 16, 1), (16, 16, 4), (16, 16, 3)]
    assert OUTPUT_MODES == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


# ------------------------------------------------------------------------------- white stays white (real TAEF2)
@pytest.fixture(scope="module")
def real_pipe(taef2):
    """The real TAEF2 autoencoder with the example UPLiFT model trained for it."""
    pipeline = UPLiFTSuperResolutionPipeline(vae=taef2, upscaler=UPLiFTLatentUpscaler.from_pretrained(EXAMPLE_MODEL))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def bsds_crop(shared_path, size=64):
    file = sorted(shared_path("data", "bsds500", "test").glob("*.jpg"))[0]
    return np.asarray(PIL.Image.open(file).convert("RGB").resize((size, size), PIL.Image.BICUBIC))


def test_white_stays_white_under_transparency(real_pipe, shared_path):
    """The issue's case: a photo beside a transparent region whose stored colour is white came out
    with the white at 244 (composited on white, colour-corrected, alpha dropped). Now the alpha
    is kept, exactly 0 there, and the image over white is exactly white."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = bsds_crop(shared_path)
    rgba[..., 3] = 255
    rgba[:, 32:] = (255, 255, 255, 0)
    out = np.asarray(real_pipe(PIL.Image.fromarray(rgba), upscale_factor=4).images[0]).astype(np.float64)
    assert out.shape == (256, 256, 4)
    clear = out[:, 140:]  # two input pixels away from the edge
    assert clear[..., 3].max() == 0
    over_white = clear[..., :3] * clear[..., 3:] / 255 + 255 * (1 - clear[..., 3:] / 255)
    assert over_white.min() == 255
    assert out[:, :120, 3].min() == 255  # the photo stays opaque


def test_opaque_white_logo_stays_white(real_pipe):
    """A white logo on a transparent background stored as black (0, 0, 0, 0): opaque white,
    not grey, and no dark fringe from the black under the transparency."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = 255
    out = np.asarray(real_pipe(PIL.Image.fromarray(rgba), upscale_factor=4).images[0])
    inside = out[72:184, 72:184]
    assert inside.min() == 255  # colour and alpha
    assert out[:56, :, 3].max() == 0 and out[200:, :, 3].max() == 0
    edge = out[60:68, 72:184]  # the feathered edge: colour still white where visible
    assert edge[..., :3][edge[..., 3] > 0].min() >= 250


def test_gray_photo_comes_back_gray_with_the_real_model(real_pipe, shared_path):
    gray = PIL.Image.fromarray(bsds_crop(shared_path)).convert("L")
    as_rgb = real_pipe(gray.convert("RGB"), upscale_factor=4, output_type="np").images[0]
    assert (as_rgb.max(-1) - as_rgb.min(-1)).max() * 255 > 1  # the colour noise the issue reported
    out = real_pipe(gray, upscale_factor=4).images[0]
    assert out.mode == "L" and out.size == (256, 256)
    np.testing.assert_array_equal(np.asarray(out), (as_rgb.mean(-1) * 255).round().astype(np.uint8))


# ------------------------------------------------------------------------------- trained factors
def _steps(model, num_steps):
    latents = torch.rand(1, model.config.latent_channels, 2, 2)
    model(latents, torch.rand(1, 3, 16, 16), num_steps=num_steps)


def test_trained_factor_warning_once_per_model(caplog):
    model = make_upscaler(4, trained_upscale_factors=[2, 4])
    with caplog.at_level(logging.WARNING, logger=MODEL_LOGGER):
        _steps(model, 1)
        _steps(model, 2)
        assert caplog.records == []
        _steps(model, 3)
        _steps(model, 3)
        _steps(model, 4)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    for text in ("8x (3 steps of 2x)", "trained for the factors [2, 4]", "grid pattern and doubled edges", "at most 4x per pass",
                 "trained to depth 3"):
        assert text in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=MODEL_LOGGER):
        _steps(make_upscaler(4, trained_upscale_factors=[2, 4]), 3)  # another model instance warns again
        _steps(make_upscaler(4), 4)  # unknown (None): no warning
    assert len(caplog.records) == 1


def test_trained_factor_warning_through_the_pipeline(caplog):
    pipeline = UPLiFTSuperResolutionPipeline(vae=make_tiny_autoencoder(), upscaler=make_upscaler(4, trained_upscale_factors=[2]))
    pipeline.set_progress_bar_config(disable=True)
    with caplog.at_level(logging.WARNING, logger=MODEL_LOGGER):
        pipeline(PIL.Image.new("RGB", (8, 8)), upscale_factor=2)
        assert [r for r in caplog.records if r.name == MODEL_LOGGER] == []
        pipeline(PIL.Image.new("RGB", (8, 8)), upscale_factor=4)
        pipeline(PIL.Image.new("RGB", (8, 8)), upscale_factor=4)
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == MODEL_LOGGER] == [
        "Upscaling the latents 4x (2 steps of 2x), but this UPLiFT model was trained for the factors [2] only"
    ]


@pytest.mark.parametrize("bad", [[], [3], [2, 2], [1], [True], [2.0], "4", 4])
def test_trained_factors_validated(bad):
    with pytest.raises(ValueError, match=r"`trained_upscale_factors` must be None \(unknown\) or a list of distinct powers of two"):
        make_upscaler(4, trained_upscale_factors=bad)


def test_trained_factors_config_round_trip(tmp_path):
    model = make_upscaler(4, trained_upscale_factors=[2, 4, 8])
    model.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["trained_upscale_factors"] == [2, 4, 8]
    assert UPLiFTLatentUpscaler.from_pretrained(tmp_path / "model").config.trained_upscale_factors == [2, 4, 8]
    # an older config without the key: unknown
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    del config["trained_upscale_factors"]
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    assert UPLiFTLatentUpscaler.from_pretrained(tmp_path / "model").config.trained_upscale_factors is None
    # the example model was fine-tuned at depths 1, 2 and 3, with every step supervised: 2x, 4x and 8x
    assert json.loads((EXAMPLE_MODEL / "config.json").read_text())["trained_upscale_factors"] == [2, 4, 8]
