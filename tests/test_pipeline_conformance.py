"""What diffusers' common pipeline tests check, for this package's pipelines: save / load round
trips (with ``variant`` and a per-component ``dtype`` dict), model / sequential / group offloading
on the CPU, ``callback_on_step_end`` tensor inputs, a batch equal to its single calls,
``num_images_per_prompt`` and ``from_pipe`` keeping the components (tiny models, offline).

The hooked pipeline (``apply_uplift`` on an unmodified diffusers pipeline) has the same checks in
test_hooks.py.
"""
import copy

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from tiny_models import make_upscaler, offload
from uplift_diffusers import StableDiffusionUPLiFTPipeline, UPLiFTLatentUpscaler, UPLiFTSuperResolutionPipeline

PROMPT = "a red cat"


def sd_pipe(components, **overrides):
    pipe = StableDiffusionUPLiFTPipeline(**{**copy.deepcopy(components), **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(kwargs.pop("prompt", PROMPT), generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.fixture
def sr_pipe(tiny_autoencoder, tiny_upscaler):
    pipe = UPLiFTSuperResolutionPipeline(vae=tiny_autoencoder, upscaler=tiny_upscaler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def upscale(pipe, image, seed=0, **kwargs):
    return pipe(image, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


# ------------------------------------------------------------------------------- save / load
def test_sd_variant_and_dtype_dict_round_trip(tiny_sd_components, tmp_path):
    pipe = sd_pipe(tiny_sd_components, upscaler=make_upscaler(noise_scale=1.0))
    expected = generate(pipe).images
    pipe.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "upscaler" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = StableDiffusionUPLiFTPipeline.from_pretrained(tmp_path, variant="fp16")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(loaded).images, expected)

    mixed = StableDiffusionUPLiFTPipeline.from_pretrained(tmp_path, variant="fp16", dtype={"upscaler": torch.bfloat16, "default": torch.float32})
    assert mixed.upscaler.dtype == torch.bfloat16 and mixed.unet.dtype == torch.float32 and mixed.vae.dtype == torch.float32
    mixed.set_progress_bar_config(disable=True)
    assert generate(mixed).images.shape == (1, 128, 128, 3)


def test_sr_variant_and_dtype_dict_round_trip(sr_pipe, tmp_path):
    image = torch.rand(1, 3, 24, 32)
    expected = upscale(sr_pipe, image)
    sr_pipe.save_pretrained(tmp_path, variant="fp16")
    loaded = UPLiFTSuperResolutionPipeline.from_pretrained(tmp_path, variant="fp16")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(upscale(loaded, image), expected)
    mixed = UPLiFTSuperResolutionPipeline.from_pretrained(tmp_path, variant="fp16", dtype={"upscaler": torch.bfloat16})
    assert mixed.upscaler.dtype == torch.bfloat16 and mixed.vae.dtype == torch.float32
    mixed.set_progress_bar_config(disable=True)
    assert upscale(mixed, image).shape == (1, 96, 128, 3)


# ------------------------------------------------------------------------------- offloading
@pytest.mark.parametrize("kind", ["model", "sequential", "group"])
def test_sd_offloading_gives_the_same_images(tiny_sd_components, kind):
    pipe = sd_pipe(tiny_sd_components)
    expected = generate(pipe).images
    offload(pipe, kind)
    np.testing.assert_allclose(generate(pipe).images, expected, atol=1e-5)
    np.testing.assert_allclose(generate(pipe).images, expected, atol=1e-5)  # the hooks survive a call


@pytest.mark.parametrize("kind", ["model", "sequential", "group"])
def test_sr_offloading_gives_the_same_images(tiny_kl_sr_pipe, kind):
    image = torch.rand(1, 3, 24, 32)
    expected = upscale(tiny_kl_sr_pipe, image)
    offload(tiny_kl_sr_pipe, kind, names=("vae", "upscaler"))
    np.testing.assert_allclose(upscale(tiny_kl_sr_pipe, image), expected, atol=1e-5)


@pytest.fixture
def tiny_kl_sr_pipe(tiny_sd_components):
    """The super-resolution pipeline on the tiny SD components' AutoencoderKL (group offloading
    and accelerate's hooks need a diffusers model) and upscaler."""
    pipe = UPLiFTSuperResolutionPipeline(vae=copy.deepcopy(tiny_sd_components["vae"]), upscaler=copy.deepcopy(tiny_sd_components["upscaler"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------- call arguments
def test_sd_callback_on_step_end_tensor_inputs(tiny_sd_components):
    pipe = sd_pipe(tiny_sd_components)
    assert set(pipe._callback_tensor_inputs) >= {"latents", "prompt_embeds", "negative_prompt_embeds"}
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append({name: tuple(value.shape) for name, value in tensors.items()})
        tensors["latents"] = tensors["latents"] * 0  # what a callback returns is used
        return tensors

    out = generate(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert seen == [{"latents": (1, 4, 8, 8), "prompt_embeds": (2, 16, 16)}] * 2
    assert out.images.shape == (1, 128, 128, 3)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        generate(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["not_a_tensor"])


def test_sd_batch_equals_single_calls_and_images_per_prompt(tiny_sd_components):
    pipe = sd_pipe(tiny_sd_components, upscaler=make_upscaler(noise_scale=0.0))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    prompts = [PROMPT, "a dog"]
    batch = generate(pipe, prompt=prompts, latents=latents).images
    singles = np.concatenate([generate(pipe, prompt=p, latents=latents[i : i + 1]).images for i, p in enumerate(prompts)])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    out = generate(pipe, num_images_per_prompt=3, return_base_images=True)
    assert out.images.shape == (3, 128, 128, 3) and out.base_images.shape == (3, 64, 64, 3)


def test_sr_batch_equals_single_calls(sr_pipe):
    images = torch.rand(3, 3, 24, 32)
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    batch = sr_pipe(images, generator=generators, output_type="np").images
    singles = np.concatenate([upscale(sr_pipe, images[i : i + 1], seed=i) for i in range(3)])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


# ------------------------------------------------------------------------------- from_pipe
def test_from_pipe_keeps_the_components(tiny_sd_components):
    pipe = sd_pipe(tiny_sd_components)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    assert img2img.unet is pipe.unet and img2img.vae is pipe.vae and "upscaler" not in img2img.components
    back = StableDiffusionUPLiFTPipeline.from_pipe(StableDiffusionPipeline.from_pipe(pipe), upscaler=pipe.upscaler)
    assert back.unet is pipe.unet and back.upscaler is pipe.upscaler
    again = StableDiffusionUPLiFTPipeline.from_pipe(pipe)
    assert all(again.components[name] is component for name, component in pipe.components.items())
    half = StableDiffusionUPLiFTPipeline.from_pipe(pipe, dtype=torch.bfloat16)
    assert half.upscaler.dtype == torch.bfloat16 and isinstance(half.upscaler, UPLiFTLatentUpscaler)
