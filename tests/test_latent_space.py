"""The latent-space guard: an upscaler records the latent space it was trained for (config
``latent_space``); apply_uplift, hires_fix and the pipelines refuse a VAE of another space, the
channel count alone is not enough (SD1.5 and SDXL both have 4), and ``check_latent_space=False``
is the override for experiments."""
import logging

import pytest
from diffusers import AutoencoderKL, AutoencoderKLFlux2, AutoencoderTiny, StableDiffusionPipeline

from tiny_models import make_kl_vae, make_tiny_autoencoder, make_upscaler
from uplift_diffusers import StableDiffusionUPLiFTPipeline, UPLiFTSuperResolutionPipeline, apply_uplift, hooks, remove_uplift
from uplift_diffusers.hooks import guard_latent_space, vae_latent_space

NO_SAFETY = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def kl_vae(channels=4, scaling=0.18215, shift=None):
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=channels, norm_num_groups=4, scaling_factor=scaling, shift_factor=shift,
    )


def test_each_vae_is_told_apart():
    assert vae_latent_space(make_kl_vae()) == "sd15"
    assert vae_latent_space(kl_vae(scaling=0.13025)) == "sdxl"
    assert vae_latent_space(kl_vae(16, 1.5305, 0.0609)) == "sd3"
    assert vae_latent_space(kl_vae(16, 0.3611, 0.1159)) == "flux1"
    assert vae_latent_space(AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=32, norm_num_groups=4)) == "flux2"
    assert vae_latent_space(make_tiny_autoencoder(latent_channels=32)) == "flux2"  # TAEF2
    assert vae_latent_space(make_tiny_autoencoder()) == "taesd"
    assert vae_latent_space(AutoencoderTiny()) == "taesd"
    assert vae_latent_space(kl_vae(8, 1.0)) is None


def test_an_sd15_upscaler_is_refused_by_another_4_channel_space_and_the_override_warns(caplog):
    upscaler = make_upscaler(latent_space="sd15")
    guard_latent_space(make_kl_vae(), upscaler)
    for vae, name in ((kl_vae(scaling=0.13025), "the SDXL VAE"), (make_tiny_autoencoder(), "a TAESD-family tiny autoencoder"),
                      (kl_vae(scaling=0.5), "of a latent space this package does not know")):
        with pytest.raises(ValueError, match=f"trained for the Stable Diffusion 1.5 VAE.*is {name}.*check_latent_space=False"):
            guard_latent_space(vae, upscaler)
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            guard_latent_space(vae, upscaler, check=False)
        assert "check_latent_space=False" in caplog.text


def test_a_flux2_upscaler_fits_the_flux2_vae_and_taef2():
    upscaler = make_upscaler(latent_channels=32, latent_space="flux2")
    guard_latent_space(AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=32, norm_num_groups=4), upscaler)
    guard_latent_space(make_tiny_autoencoder(latent_channels=32), upscaler)
    with pytest.raises(ValueError, match="latent_channels=32 but the VAE"):
        guard_latent_space(make_kl_vae(), upscaler)


def test_no_latent_space_is_checked_on_channels_with_one_warning(monkeypatch):
    messages = []
    monkeypatch.setattr(hooks.logger, "warning", messages.append)
    upscaler = make_upscaler()
    for vae in (make_kl_vae(), kl_vae(scaling=0.13025), make_tiny_autoencoder()):
        guard_latent_space(vae, upscaler)
    assert len(messages) == 1 and "names no `latent_space`" in messages[0] and "\n" not in messages[0]
    with pytest.raises(ValueError, match="latent_channels=4 but the VAE"):
        guard_latent_space(kl_vae(16, 1.0), upscaler)


def test_latent_space_is_validated_and_saved(tmp_path):
    with pytest.raises(ValueError, match="`latent_space` must be None or one of"):
        make_upscaler(latent_space="sd1.5")
    make_upscaler(latent_space="flux2", latent_channels=32).save_pretrained(tmp_path)
    from uplift_diffusers import UPLiFTLatentUpscaler

    assert UPLiFTLatentUpscaler.from_pretrained(tmp_path).config.latent_space == "flux2"


def test_apply_uplift_and_the_pipelines_refuse_and_accept_the_override(tiny_sd_components):
    sdxl_vae = kl_vae(scaling=0.13025)
    upscaler = tiny_sd_components["upscaler"]  # latent_space="sd15"
    shared = {k: v for k, v in tiny_sd_components.items() if k not in ("upscaler", "vae")}
    pipe = StableDiffusionPipeline(**shared, vae=make_kl_vae(), **NO_SAFETY)
    sdxl_pipe = StableDiffusionPipeline(**shared, vae=sdxl_vae, **NO_SAFETY)
    with pytest.raises(ValueError, match="is the SDXL VAE"):
        apply_uplift(sdxl_pipe, upscaler)
    apply_uplift(sdxl_pipe, upscaler, check_latent_space=False)
    remove_uplift(sdxl_pipe)
    apply_uplift(pipe, upscaler)
    remove_uplift(pipe)
    with pytest.raises(ValueError, match="is the SDXL VAE"):
        StableDiffusionUPLiFTPipeline(**shared, vae=sdxl_vae, upscaler=upscaler)
    assert StableDiffusionUPLiFTPipeline(**shared, vae=sdxl_vae, upscaler=upscaler, check_latent_space=False).config.check_latent_space is False
    with pytest.raises(ValueError, match="is a TAESD-family tiny autoencoder"):
        UPLiFTSuperResolutionPipeline(vae=make_tiny_autoencoder(), upscaler=upscaler)
    UPLiFTSuperResolutionPipeline(vae=make_tiny_autoencoder(), upscaler=upscaler, check_latent_space=False)
    with pytest.raises(ValueError, match="`check_latent_space` must be True or False"):
        apply_uplift(pipe, upscaler, check_latent_space="no")
