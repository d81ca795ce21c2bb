"""UPLiFT on FLUX.2 pipelines through the decode hook (tiny components, offline).

FLUX.2 pipelines decode with ``self.vae.decode(latents)`` on raw ``B x 32 x H/8 x W/8`` latents,
after undoing their batch-norm normalisation and 2x2 patchify: UPLiFT's input space, so
``apply_uplift`` applies unchanged to the unmodified diffusers classes.
"""
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import Flux2KleinInpaintPipeline, Flux2KleinPipeline, Flux2Pipeline

from tiny_models import FLUX2_TEXT_HIDDEN, FLUX2_TEXT_LAYERS, build_flux2_components, make_upscaler
from uplift_diffusers import apply_uplift, remove_uplift

KINDS = ("dev", "klein", "klein_inpaint")


@pytest.fixture(scope="module")
def flux2_pipes():
    klein = build_flux2_components(klein=True)
    pipes = {
        "dev": Flux2Pipeline(**build_flux2_components(klein=False)),
        "klein": Flux2KleinPipeline(**klein),
        "klein_inpaint": Flux2KleinInpaintPipeline(**klein),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


@pytest.fixture(scope="module")
def flux2_upscaler():
    return make_upscaler(latent_channels=32, noise_scale=1.0)


def picture(seed: int, size=(64, 64)) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def arguments(kind: str, seed: int = 0, height: int = 64, width: int = 64) -> dict:
    """The pipeline's own arguments: 2 steps, a seeded generator, short prompts."""
    kwargs = dict(height=height, width=width, num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="np")
    if kind == "dev":
        embeds = torch.randn(1, 8, len(FLUX2_TEXT_LAYERS) * FLUX2_TEXT_HIDDEN, generator=torch.Generator().manual_seed(11))
        kwargs.update(prompt_embeds=embeds, text_encoder_out_layers=FLUX2_TEXT_LAYERS)
    else:
        kwargs.update(prompt="a red cat", max_sequence_length=16, text_encoder_out_layers=FLUX2_TEXT_LAYERS)
    if kind == "klein_inpaint":
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
        kwargs.update(image=picture(1, (height, width)), mask_image=PIL.Image.fromarray(mask), strength=1.0)
    return kwargs


@pytest.mark.parametrize("kind", KINDS)
def test_exact_sizes_reproducible_and_removed(flux2_pipes, flux2_upscaler, kind):
    pipe = flux2_pipes[kind]
    base = pipe(**arguments(kind, height=64, width=96)).images
    assert base.shape == (1, 64, 96, 3)
    apply_uplift(pipe, flux2_upscaler)
    try:
        first = pipe(**arguments(kind, height=64, width=96)).images
        again = pipe(**arguments(kind, height=64, width=96)).images
        other = pipe(**arguments(kind, seed=1, height=64, width=96)).images
        apply_uplift(pipe, flux2_upscaler, upscale_factor=1.5)
        odd = pipe(**arguments(kind, height=64, width=96)).images
    finally:
        remove_uplift(pipe)
    assert first.shape == (1, 128, 192, 3) and odd.shape == (1, 96, 144, 3)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4
    # the upscaled image is the base image enlarged: close to it at low resolution
    downsized = torch.nn.functional.avg_pool2d(torch.from_numpy(first).permute(0, 3, 1, 2), 2)
    assert (downsized - torch.from_numpy(base).permute(0, 3, 1, 2)).abs().mean() < 0.2
    np.testing.assert_array_equal(pipe(**arguments(kind, height=64, width=96)).images, base)


@pytest.mark.parametrize("kind", ["dev", "klein"])
def test_factor_one_is_the_base_output(flux2_pipes, flux2_upscaler, kind):
    pipe = flux2_pipes[kind]
    base = pipe(**arguments(kind, seed=2)).images
    apply_uplift(pipe, flux2_upscaler, upscale_factor=1)
    try:
        np.testing.assert_array_equal(pipe(**arguments(kind, seed=2)).images, base)
    finally:
        remove_uplift(pipe)


def test_an_sd15_upscaler_is_refused(flux2_pipes):
    with pytest.raises(ValueError, match="latent_channels=4 but the VAE .*AutoencoderKLFlux2.* has 32"):
        apply_uplift(flux2_pipes["klein"], make_upscaler(latent_channels=4))
