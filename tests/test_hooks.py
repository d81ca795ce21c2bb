"""apply_uplift / remove_uplift: UPLiFT on any SD1.5-family diffusers pipeline (tiny components, offline).

The hooked pipelines: text-to-image (with and without a LoRA), img2img, inpainting, ControlNet
and perturbed-attention guidance (PAG), all on ``tiny_sd_components`` (conftest.py; 64 px base images, 8 x 8 latents).
"""
import copy

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPAGPipeline,
    StableDiffusionPipeline,
)
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPImageProcessor

from tiny_models import make_kl_vae, make_unet, make_upscaler, offload, save_unet_lora
from uplift_diffusers import apply_uplift, remove_uplift
from uplift_diffusers.constants import UPSCALER_SUBFOLDER
from uplift_diffusers.models.tiled_upscaling import count_tiles

PROMPT = "a red cat"
KINDS = ("text2img", "img2img", "inpaint", "controlnet", "pag")
NO_SAFETY = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


# ------------------------------------------------------------------------------- tiny builders
def make_controlnet(unet):
    """A tiny ``ControlNetModel.from_unet`` (3 stride-2 steps: 64 px control images for 8 x 8
    latents) whose zero convolutions are made random, so the control image changes the result."""
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 4, 4, 4)).eval()
    with torch.no_grad():
        for parameter in [*controlnet.controlnet_down_blocks.parameters(), *controlnet.controlnet_mid_block.parameters()]:
            parameter.normal_(std=0.1)
    return controlnet


@pytest.fixture(scope="module")
def base_pipes(tiny_sd_components):
    """One tiny pipeline of each kind, all sharing ``tiny_sd_components`` (the inpainting one with
    its own 9-channel UNet: latents, mask and masked-image latents)."""
    torch.manual_seed(1)
    shared = {k: v for k, v in tiny_sd_components.items() if k != UPSCALER_SUBFOLDER}
    pipes = {
        "text2img": StableDiffusionPipeline(**shared, **NO_SAFETY),
        "img2img": StableDiffusionImg2ImgPipeline(**shared, **NO_SAFETY),
        "inpaint": StableDiffusionInpaintPipeline(**{**shared, "unet": make_unet(in_channels=9)}, **NO_SAFETY),
        "controlnet": StableDiffusionControlNetPipeline(**shared, controlnet=make_controlnet(shared["unet"]), **NO_SAFETY),
        "pag": StableDiffusionPAGPipeline(**shared, **NO_SAFETY, pag_applied_layers=["mid"]),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def picture(seed: int, size=(64, 64)) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def base_arguments(kind: str, seed: int = 0) -> dict:
    """The base pipeline's own arguments for ``kind`` (2 denoising steps, seeded generator)."""
    kwargs = dict(prompt=PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(seed))
    if kind == "img2img":
        kwargs.update(image=picture(1), strength=1.0)
    elif kind == "inpaint":
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[16:48, 16:48] = 255
        kwargs.update(image=picture(1), mask_image=PIL.Image.fromarray(mask), strength=1.0)
    elif kind == "controlnet":
        kwargs.update(image=picture(2))
    elif kind == "pag":
        kwargs.update(pag_scale=3.0)
    return kwargs


def assert_same_weights(model, expected):
    state = model.state_dict()
    assert state.keys() == expected.state_dict().keys()
    for key, value in expected.state_dict().items():
        assert torch.equal(state[key], value), key


@pytest.fixture
def hooked(base_pipes):
    """``hooked(kind, upscaler, **settings)``: the base pipeline of ``kind`` with UPLiFT applied;
    the hook is removed after the test (the pipelines are shared by the module)."""
    applied = []

    def apply(kind, upscaler, **settings):
        pipe = base_pipes[kind]
        apply_uplift(pipe, upscaler, **settings)
        applied.append(pipe)
        return pipe

    yield apply
    for pipe in applied:
        remove_uplift(pipe)


class CallList(list):
    """Grows by one on every forward call of a module (:func:`count_calls`); ``handle.remove()`` stops it."""

    handle = None


def count_calls(module) -> CallList:
    calls = CallList()
    calls.handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls


# ------------------------------------------------------------------------------- every kind
@pytest.mark.parametrize("kind", KINDS)
def test_applies_to_pipeline_kind(base_pipes, hooked, tiny_sd_components, kind):
    """2x output of the unmodified pipeline class; the result is the base image enlarged."""
    expected = base_pipes[kind](**base_arguments(kind), output_type="np").images
    pipe = hooked(kind, tiny_sd_components["upscaler"])
    out = pipe(**base_arguments(kind), output_type="np")
    assert type(pipe) is type(base_pipes[kind])
    assert out.images.shape == (1, 128, 128, 3)
    assert out.images.dtype == np.float32 and 0 <= out.images.min() and out.images.max() <= 1
    assert out.nsfw_content_detected is None
    # the upscaled image is the base image enlarged, not something else: close to it at low resolution
    downsized = torch.nn.functional.avg_pool2d(torch.from_numpy(out.images).permute(0, 3, 1, 2), 2)
    assert (downsized - torch.from_numpy(expected).permute(0, 3, 1, 2)).abs().mean() < 0.2


@pytest.mark.parametrize("kind,output_type", [(kind, "np") for kind in KINDS] + [("controlnet", "pil"), ("text2img", "latent")])
def test_factor_one_is_exactly_the_base_output(base_pipes, hooked, tiny_sd_components, kind, output_type):
    expected = base_pipes[kind](**base_arguments(kind, seed=3), output_type=output_type)
    pipe = hooked(kind, tiny_sd_components["upscaler"], upscale_factor=1)
    upscaler_calls = count_calls(tiny_sd_components["upscaler"])
    try:
        ours = pipe(**base_arguments(kind, seed=3), output_type=output_type)
    finally:
        upscaler_calls.handle.remove()
    assert upscaler_calls == []
    if output_type == "pil":
        assert [np.asarray(image).tobytes() for image in ours.images] == [np.asarray(image).tobytes() for image in expected.images]
    elif output_type == "latent":
        assert torch.equal(ours.images, expected.images)
    else:
        np.testing.assert_array_equal(ours.images, expected.images)
    assert ours.nsfw_content_detected == expected.nsfw_content_detected


@pytest.mark.parametrize("kind", KINDS)
def test_remove_uplift_restores_the_exact_decode(base_pipes, tiny_sd_components, kind):
    pipe = base_pipes[kind]
    vae = pipe.vae
    original_decode, attributes = vae.decode, set(vae.__dict__)
    expected = pipe(**base_arguments(kind, seed=4), output_type="np").images
    apply_uplift(pipe, tiny_sd_components["upscaler"], upscale_factor=4)
    apply_uplift(pipe, tiny_sd_components["upscaler"])  # applying again replaces the settings
    assert pipe(**base_arguments(kind, seed=4), output_type="np").images.shape == (1, 128, 128, 3)
    remove_uplift(pipe)
    assert "decode" not in vae.__dict__ and vae.decode == original_decode
    assert set(vae.__dict__) == attributes  # nothing left on the VAE
    np.testing.assert_array_equal(pipe(**base_arguments(kind, seed=4), output_type="np").images, expected)
    remove_uplift(pipe)  # nothing to remove: no error


def test_remove_uplift_keeps_a_decode_set_on_the_instance(base_pipes, tiny_sd_components):
    pipe = base_pipes["text2img"]
    own = pipe.vae.decode  # e.g. another tool's wrapper, set on the instance
    pipe.vae.decode = own
    try:
        apply_uplift(pipe, tiny_sd_components["upscaler"])
        assert pipe.vae.decode is not own
        remove_uplift(pipe)
        assert pipe.vae.__dict__["decode"] is own
    finally:
        del pipe.vae.__dict__["decode"]


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_calls_are_reproducible(hooked, tiny_upscaler, kind):
    pipe = hooked(kind, tiny_upscaler)  # noise scale 1, as the release
    first = pipe(**base_arguments(kind, seed=5), output_type="pt").images
    again = pipe(**base_arguments(kind, seed=5), output_type="pt").images
    other = pipe(**base_arguments(kind, seed=6), output_type="pt").images
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-4


def test_lora_loaded_in_the_hooked_pipeline(tiny_sd_components, tmp_path):
    """A LoRA loaded into a hooked pipeline changes the base images, and UPLiFT upscales exactly those."""
    shared = {k: v for k, v in tiny_sd_components.items() if k != UPSCALER_SUBFOLDER}
    unet = copy.deepcopy(shared["unet"])  # the LoRA goes into a copy: the module's components stay plain
    unet.save_pretrained(tmp_path / "unet")
    lora = save_unet_lora(tmp_path / "lora", tmp_path / "unet")
    pipe = StableDiffusionPipeline(**{**shared, "unet": unet}, **NO_SAFETY)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(**base_arguments("text2img"), output_type="np").images
    apply_uplift(pipe, tiny_sd_components["upscaler"])
    pipe.load_lora_weights(str(lora))
    assert len(pipe.get_active_adapters()) == 1
    out = pipe(**base_arguments("text2img"), output_type="np").images
    assert out.shape == (1, 128, 128, 3)
    apply_uplift(pipe, tiny_sd_components["upscaler"], upscale_factor=1)
    with_lora = pipe(**base_arguments("text2img"), output_type="np").images
    assert np.abs(with_lora - plain).max() > 1e-3
    remove_uplift(pipe)
    np.testing.assert_array_equal(pipe(**base_arguments("text2img"), output_type="np").images, with_lora)


# ------------------------------------------------------------------------------- sizes and types
@pytest.mark.parametrize("factor,size", [(1.5, (96, 144)), (3, (192, 288)), (4, (256, 384))])
def test_any_factor_output_size(hooked, tiny_sd_components, factor, size):
    pipe = hooked("text2img", tiny_sd_components["upscaler"], upscale_factor=factor)
    out = pipe(**base_arguments("text2img"), height=64, width=96, output_type="pt")
    assert tuple(out.images.shape) == (1, 3, *size)
    pil = pipe(**base_arguments("text2img"), height=64, width=96).images[0]
    assert isinstance(pil, PIL.Image.Image) and pil.size == (size[1], size[0])


def test_exact_output_size(hooked, tiny_sd_components):
    pipe = hooked("img2img", tiny_sd_components["upscaler"], output_size=(100, 130))
    assert pipe(**base_arguments("img2img"), output_type="np").images.shape == (1, 100, 130, 3)
    apply_uplift(pipe, tiny_sd_components["upscaler"], output_size=(32, 64))
    with pytest.raises(ValueError, match=r"`output_size height` must be an int of at least the input's 64 pixels.*got 32"):
        pipe(**base_arguments("img2img"), output_type="np")


def test_batch_and_images_per_prompt(hooked, tiny_sd_components):
    """A batch is the single calls stacked (fixed latents per image; the upscaler noise is off)."""
    pipe = hooked("text2img", make_upscaler(noise_scale=0.0))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    batch = pipe(prompt=[PROMPT, "a dog"], latents=latents, num_inference_steps=2, output_type="np").images
    singles = [pipe(prompt=p, latents=latents[i : i + 1], num_inference_steps=2, output_type="np").images for i, p in enumerate([PROMPT, "a dog"])]
    assert batch.shape == (2, 128, 128, 3)
    np.testing.assert_allclose(batch, np.concatenate(singles), atol=1e-5)
    out = pipe(prompt=PROMPT, num_images_per_prompt=3, num_inference_steps=2, output_type="np").images
    assert out.shape == (3, 128, 128, 3)


def test_color_correction_flag(base_pipes, tiny_sd_components):
    pipe = base_pipes["text2img"]
    base = pipe(**base_arguments("text2img"), output_type="pt").images
    try:
        apply_uplift(pipe, tiny_sd_components["upscaler"])
        corrected = pipe(**base_arguments("text2img"), output_type="pt").images
        apply_uplift(pipe, tiny_sd_components["upscaler"], color_correction=False)
        raw = pipe(**base_arguments("text2img"), output_type="pt").images
    finally:
        remove_uplift(pipe)
    base_means = base.mean(dim=(2, 3))
    torch.testing.assert_close(corrected.mean(dim=(2, 3)), base_means, atol=2e-3, rtol=0)
    assert not torch.allclose(raw.mean(dim=(2, 3)), base_means, atol=2e-3)


def test_generator_also_seeds_the_upscaler(hooked, tiny_upscaler):
    """Fixed initial latents and DDIM (eta 0): the base result does not depend on the generator,
    so any difference in the upscaled images comes from the upscaler's noise."""
    pipe = hooked("text2img", tiny_upscaler)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))

    def run(seed, **settings):
        return pipe(**{**base_arguments("text2img", seed), "latents": latents}, output_type="pt").images

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-4
    # a generator given to apply_uplift seeds UPLiFT whatever the pipeline's
    apply_uplift(pipe, tiny_upscaler, generator=torch.Generator().manual_seed(9))
    fixed = run(0)
    apply_uplift(pipe, tiny_upscaler, generator=torch.Generator().manual_seed(9))
    assert torch.equal(fixed, run(1))


def test_callbacks_see_the_denoising_unchanged(hooked, base_pipes, tiny_sd_components):
    """``callback_on_step_end`` with tensor inputs runs as in the base pipeline."""
    seen = {}

    def callback(name):
        def record(pipe, step, timestep, tensors):
            seen.setdefault(name, []).append((step, tuple(tensors["latents"].shape), tensors["prompt_embeds"].shape[0]))
            return tensors
        return record

    arguments = dict(callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], output_type="np")
    base_pipes["text2img"](**base_arguments("text2img"), callback_on_step_end=callback("base"), **arguments)
    pipe = hooked("text2img", tiny_sd_components["upscaler"])
    out = pipe(**base_arguments("text2img"), callback_on_step_end=callback("hooked"), **arguments)
    assert seen["hooked"] == seen["base"] == [(0, (1, 4, 8, 8), 2), (1, (1, 4, 8, 8), 2)]
    assert out.images.shape == (1, 128, 128, 3)


# ------------------------------------------------------------------------------- mismatches
def test_mismatched_vae_or_upscaler_is_refused_at_apply(base_pipes, tiny_sd_components):
    base = base_pipes["text2img"]
    with pytest.raises(ValueError, match="latent_channels=8"):
        apply_uplift(base, make_upscaler(latent_channels=8))
    sdxl_vae = make_kl_vae()
    sdxl_vae.register_to_config(scaling_factor=0.13025)  # SDXL's VAE: the same shapes, another latent space
    sdxl_like = StableDiffusionPipeline(**{**base.components, "vae": sdxl_vae})
    with pytest.raises(ValueError, match=r"trained for the Stable Diffusion 1.5 VAE .*latent_space='sd15'.*is the SDXL VAE.*check_latent_space=False"):
        apply_uplift(sdxl_like, tiny_sd_components["upscaler"])
    assert "decode" not in sdxl_vae.__dict__ and "decode" not in base.vae.__dict__  # nothing applied


def test_bad_arguments(base_pipes, tiny_sd_components):
    pipe, upscaler = base_pipes["inpaint"], tiny_sd_components["upscaler"]
    for factor in (0.5, "2", True, float("nan")):
        with pytest.raises(ValueError, match="`upscale_factor`"):
            apply_uplift(pipe, upscaler, upscale_factor=factor)
    cases = [
        (dict(color_correction="yes"), "`color_correction` must be True or False"),
        (dict(back_projection_steps=-1), "`back_projection_steps` must be an int >= 0"),
        (dict(output_size=(64,)), "`output_size` must be a \\(height, width\\) pair"),
        (dict(upscale_factor=2, output_size=(128, 128)), "either `upscale_factor` or `output_size`, not both"),
        (dict(tiling="yes"), "`tiling` must be None"),
        (dict(tiling=1), "`tiling` must be None"),
        (dict(tiling=(1, 0)), "tile_size"),
        (dict(upscale_method="nearest"), "`upscale_method` must be one of"),
    ]
    for settings, match in cases:
        with pytest.raises(ValueError, match=match):
            apply_uplift(pipe, upscaler, **settings)
    with pytest.raises(ValueError, match="`upscaler` must be an UPLiFTLatentUpscaler"):
        apply_uplift(pipe, torch.nn.Identity())
    with pytest.raises(ValueError, match="has no `vae`"):
        apply_uplift(object(), upscaler)
    assert "decode" not in pipe.vae.__dict__


# ------------------------------------------------------------------------------- safety checker
class FlagFirstImage(ModelMixin):
    """Stand-in safety checker: flags the first image of each batch (blacking it out, as the real
    one does) and records the shape of the images it was shown."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # ModelMixin's device / dtype read it
        self.seen = []

    def forward(self, images, clip_input):
        self.seen.append(tuple(images.shape))
        images = images.clone()
        images[0] = 0
        return images, [index == 0 for index in range(images.shape[0])]


def test_safety_checker_of_the_pipeline_runs_on_the_upscaled_images(tiny_sd_components):
    shared = {k: v for k, v in tiny_sd_components.items() if k != UPSCALER_SUBFOLDER}
    checker = FlagFirstImage()
    extractor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    pipe = StableDiffusionPipeline(**shared, safety_checker=checker, feature_extractor=extractor)
    pipe.set_progress_bar_config(disable=True)
    apply_uplift(pipe, tiny_sd_components["upscaler"])
    out = pipe(**{**base_arguments("text2img"), "prompt": [PROMPT, "a dog"]}, output_type="np")
    assert checker.seen == [(2, 3, 128, 128)]  # once, on the upscaled images
    assert out.nsfw_content_detected == [True, False]
    assert out.images[0].max() == 0 and out.images[1].max() > 0


# ------------------------------------------------------------------------------- pipeline features
def test_progress_bar_counts_the_upscale_stages(base_pipes, hooked, tiny_sd_components, capsys):
    pipe = hooked("controlnet", tiny_sd_components["upscaler"], upscale_factor=4)
    pipe.set_progress_bar_config(disable=False)
    try:
        pipe(**base_arguments("controlnet"), output_type="np")
    finally:
        pipe.set_progress_bar_config(disable=True)
    err = capsys.readouterr().err
    assert "2/2" in err  # the pipeline's denoising steps
    assert "4/4" in err  # decode the base image, two 2x steps, decode


@pytest.mark.parametrize("kind", ["model", "sequential", "group"])
def test_offloading_gives_the_same_images(tiny_sd_components, kind):
    """The pipeline's own offloading runs unchanged under the hook."""
    shared = {k: copy.deepcopy(v) for k, v in tiny_sd_components.items() if k != UPSCALER_SUBFOLDER}
    pipe = StableDiffusionImg2ImgPipeline(**shared, **NO_SAFETY)
    pipe.set_progress_bar_config(disable=True)
    apply_uplift(pipe, tiny_sd_components["upscaler"])
    expected = pipe(**base_arguments("img2img"), output_type="np").images
    offload(pipe, kind)
    np.testing.assert_allclose(pipe(**base_arguments("img2img"), output_type="np").images, expected, atol=1e-5)


def test_tiling_follows_the_vae_or_the_settings(hooked, tiny_sd_components):
    vae, upscaler = tiny_sd_components["vae"], tiny_sd_components["upscaler"]
    pipe = hooked("text2img", upscaler, tiling=(4, 2))
    upscaler_calls = count_calls(upscaler)
    try:
        tiled = pipe(**base_arguments("text2img"), output_type="pt").images
        assert len(upscaler_calls) == count_tiles(8, 8, 4, 2) > 1  # one upscaler call per latent tile
        upscaler_calls.clear()
        apply_uplift(pipe, upscaler)  # tiling=None: follows the VAE's tiling
        pipe(**base_arguments("text2img"), output_type="pt")
        assert len(upscaler_calls) == 1
        vae.enable_tiling()
        upscaler_calls.clear()
        pipe(**base_arguments("text2img"), output_type="pt")
        assert len(upscaler_calls) == count_tiles(8, 8)  # the default tiles (one, for 8 x 8 latents)
    finally:
        vae.disable_tiling()
        upscaler_calls.handle.remove()
    assert tiled.shape == (1, 3, 128, 128)
