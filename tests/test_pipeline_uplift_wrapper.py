"""UPLiFTPipeline: UPLiFT after any SD1.5-family diffusers pipeline (tiny components, offline).

The wrapped pipelines: text-to-image (with and without a LoRA), img2img, inpainting, ControlNet
and perturbed-attention guidance (PAG), all on ``tiny_sd_components`` (conftest.py; 64 px base images, 8 x 8 latents).
"""
import copy
import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPAGPipeline,
    StableDiffusionPipeline,
)
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPImageProcessor

from tiny_models import make_kl_vae, make_unet, make_upscaler, save_unet_lora
from uplift_diffusers import StableDiffusionUPLiFTPipeline, UPLiFTPipeline, UPLiFTPipelineOutput
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


def wrap(base, upscaler):
    pipe = UPLiFTPipeline.from_pipe(base, upscaler=upscaler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class CallList(list):
    """Grows by one on every forward call of a module (:func:`count_calls`); ``handle.remove()`` stops it."""

    handle = None


def count_calls(module) -> CallList:
    calls = CallList()
    calls.handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls


# ------------------------------------------------------------------------------- every kind
@pytest.mark.parametrize("kind", KINDS)
def test_wraps_pipeline_kind(base_pipes, tiny_sd_components, kind):
    """2x output; the base images are exactly the base pipeline's own output for the same seed."""
    base = base_pipes[kind]
    pipe = wrap(base, tiny_sd_components["upscaler"])
    out = pipe(**base_arguments(kind), output_type="np", return_base_images=True)
    assert isinstance(out, UPLiFTPipelineOutput)
    assert out.images.shape == (1, 128, 128, 3) and out.base_images.shape == (1, 64, 64, 3)
    assert out.images.dtype == np.float32 and 0 <= out.images.min() and out.images.max() <= 1
    assert out.nsfw_content_detected is None
    expected = base(**base_arguments(kind), output_type="np").images
    np.testing.assert_array_equal(out.base_images, expected)
    # the upscaled image is the base image enlarged, not something else: close to it at low resolution
    downsized = torch.nn.functional.avg_pool2d(torch.from_numpy(out.images).permute(0, 3, 1, 2), 2)
    assert (downsized - torch.from_numpy(expected).permute(0, 3, 1, 2)).abs().mean() < 0.2


@pytest.mark.parametrize("kind,output_type", [(kind, "np") for kind in KINDS] + [("controlnet", "pil"), ("text2img", "latent")])
def test_factor_one_is_exactly_the_base_output(base_pipes, tiny_sd_components, kind, output_type):
    base = base_pipes[kind]
    pipe = wrap(base, tiny_sd_components["upscaler"])
    upscaler_calls = count_calls(tiny_sd_components["upscaler"])
    try:
        ours = pipe(**base_arguments(kind, seed=3), upscale_factor=1, output_type=output_type)
    finally:
        upscaler_calls.handle.remove()
    expected = base(**base_arguments(kind, seed=3), output_type=output_type)
    assert upscaler_calls == []
    if output_type == "pil":
        assert [np.asarray(image).tobytes() for image in ours.images] == [np.asarray(image).tobytes() for image in expected.images]
    elif output_type == "latent":
        assert torch.equal(ours.images, expected.images)
    else:
        np.testing.assert_array_equal(ours.images, expected.images)
    assert ours.nsfw_content_detected == expected.nsfw_content_detected


def test_lora_loaded_in_the_base_pipeline(tiny_sd_components, tmp_path):
    """A LoRA loaded into the base (through the wrapper: its methods are the base's) changes the
    base images, and the wrapper upscales exactly those."""
    shared = {k: v for k, v in tiny_sd_components.items() if k != UPSCALER_SUBFOLDER}
    unet = copy.deepcopy(shared["unet"])  # the LoRA goes into a copy: the module's components stay plain
    unet.save_pretrained(tmp_path / "unet")
    lora = save_unet_lora(tmp_path / "lora", tmp_path / "unet")
    base = StableDiffusionPipeline(**{**shared, "unet": unet}, **NO_SAFETY)
    base.set_progress_bar_config(disable=True)
    pipe = wrap(base, tiny_sd_components["upscaler"])
    plain = base(**base_arguments("text2img"), output_type="np").images

    pipe.load_lora_weights(str(lora))  # the base pipeline's LoraLoaderMixin, on the shared UNet
    assert base.get_active_adapters() == pipe.get_active_adapters() and len(base.get_active_adapters()) == 1
    with_lora = base(**base_arguments("text2img"), output_type="np").images
    assert np.abs(with_lora - plain).max() > 1e-3
    out = pipe(**base_arguments("text2img"), output_type="np", return_base_images=True)
    np.testing.assert_array_equal(out.base_images, with_lora)
    assert out.images.shape == (1, 128, 128, 3)
    np.testing.assert_array_equal(pipe(**base_arguments("text2img"), upscale_factor=1, output_type="np").images, with_lora)


# ------------------------------------------------------------------------------- sizes and types
@pytest.mark.parametrize("factor,size", [(1.5, (96, 144)), (3, (192, 288)), (4, (256, 384))])
def test_any_factor_output_size(base_pipes, tiny_sd_components, factor, size):
    pipe = wrap(base_pipes["text2img"], tiny_sd_components["upscaler"])
    out = pipe(**base_arguments("text2img"), height=64, width=96, upscale_factor=factor, output_type="pt")
    assert tuple(out.images.shape) == (1, 3, *size)
    pil = pipe(**base_arguments("text2img"), height=64, width=96, upscale_factor=factor).images[0]
    assert isinstance(pil, PIL.Image.Image) and pil.size == (size[1], size[0])


def test_latent_output_and_batch(base_pipes, tiny_sd_components):
    pipe = wrap(base_pipes["text2img"], tiny_sd_components["upscaler"])
    vae, upscaler = tiny_sd_components["vae"], tiny_sd_components["upscaler"]
    scaling = vae.config.scaling_factor
    images, nsfw, base_latents = pipe(
        **{**base_arguments("text2img"), "prompt": [PROMPT, "a dog"]}, upscale_factor=4, output_type="latent",
        return_dict=False, return_base_images=True,
    )
    assert images.shape == (2, 4, 32, 32) and base_latents.shape == (2, 4, 8, 8) and nsfw is None
    with torch.no_grad():
        guide = (vae.decode(base_latents / scaling).sample / 2 + 0.5).clamp(0, 1)
        expected = upscaler(base_latents / scaling, guide, num_steps=2).sample * scaling
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"`upscale_factor`=3 with output_type='latent'"):
        pipe(**base_arguments("text2img"), upscale_factor=3, output_type="latent")


def test_color_correction_flag(base_pipes, tiny_sd_components):
    pipe = wrap(base_pipes["text2img"], tiny_sd_components["upscaler"])
    corrected = pipe(**base_arguments("text2img"), output_type="pt", return_base_images=True)
    raw = pipe(**base_arguments("text2img"), output_type="pt", color_correction=False)
    base_means = corrected.base_images.mean(dim=(2, 3))
    torch.testing.assert_close(corrected.images.mean(dim=(2, 3)), base_means, atol=2e-3, rtol=0)
    assert not torch.allclose(raw.images.mean(dim=(2, 3)), base_means, atol=2e-3)


# ------------------------------------------------------------------------------- sharing
def test_components_are_the_base_pipelines(base_pipes, tiny_sd_components):
    base = base_pipes["controlnet"]
    upscaler = tiny_sd_components["upscaler"]
    pipe = wrap(base, upscaler)
    assert pipe.base_pipeline is base and pipe.upscaler is upscaler
    assert set(pipe.components) == set(base.components) | {UPSCALER_SUBFOLDER}
    for name, component in base.components.items():
        assert pipe.components[name] is component and getattr(pipe, name) is component
    assert pipe.image_processor is base.image_processor
    # replacing a component through the wrapper replaces it in the base pipeline (they stay one)
    scheduler = type(base.scheduler).from_config(base.scheduler.config)
    pipe.scheduler = scheduler
    try:
        assert base.scheduler is scheduler and pipe.scheduler is scheduler
        assert base.config["scheduler"][1] == type(scheduler).__name__
    finally:
        base.scheduler = tiny_sd_components["scheduler"]
    # wrapping the wrapper keeps the one base pipeline and its upscaler
    again = UPLiFTPipeline.from_pipe(pipe)
    assert again.base_pipeline is base and again.upscaler is upscaler


def test_from_pipe_rebuilds_the_base_with_replaced_components(base_pipes, tiny_sd_components):
    base = base_pipes["text2img"]
    vae = make_kl_vae()
    pipe = UPLiFTPipeline.from_pipe(base, upscaler=tiny_sd_components["upscaler"], vae=vae)
    assert isinstance(pipe.base_pipeline, StableDiffusionPipeline) and pipe.base_pipeline is not base
    assert pipe.vae is vae and pipe.unet is base.unet and base.vae is tiny_sd_components["vae"]


def test_from_pipe_loads_the_authors_release_by_default(base_pipes, tiny_upscaler, release_cached):
    pipe = UPLiFTPipeline.from_pipe(base_pipes["img2img"])
    assert isinstance(pipe.upscaler, type(tiny_upscaler)) and pipe.upscaler is not tiny_upscaler
    assert_same_weights(pipe.upscaler, tiny_upscaler)
    with pytest.raises(ValueError, match="`upscaler_revision`='v1' applies only to the default UPLiFT model"):
        UPLiFTPipeline.from_pipe(base_pipes["img2img"], upscaler=tiny_upscaler, upscaler_revision="v1")


def test_generator_also_seeds_the_upscaler(base_pipes, tiny_upscaler):
    """Fixed initial latents and DDIM (eta 0): the base result does not depend on the generator,
    so any difference in the upscaled images comes from the upscaler's noise."""
    pipe = wrap(base_pipes["text2img"], tiny_upscaler)  # noise scale 1, as the release
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))

    def run(seed):
        kwargs = {**base_arguments("text2img", seed), "latents": latents}
        return pipe(**kwargs, output_type="pt", return_base_images=True)

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first.images, again.images)
    assert torch.equal(first.base_images, other.base_images)
    assert (first.images - other.images).abs().max() > 1e-4


# ------------------------------------------------------------------------------- mismatches
def test_mismatched_vae_or_upscaler_fails_before_generating(base_pipes, tiny_sd_components):
    base = base_pipes["text2img"]
    with pytest.raises(ValueError, match="latent_channels=8"):
        UPLiFTPipeline.from_pipe(base, upscaler=make_upscaler(latent_channels=8))
    sdxl_vae = make_kl_vae()
    sdxl_vae.register_to_config(scaling_factor=0.13025)  # SDXL's VAE: the same shapes, another latent space
    sdxl_like = StableDiffusionPipeline(**{**base.components, "vae": sdxl_vae})
    with pytest.raises(ValueError, match=r"scaling_factor=0.13025.*Stable Diffusion 1.5 VAE's latent space"):
        UPLiFTPipeline.from_pipe(sdxl_like, upscaler=tiny_sd_components["upscaler"])

    # swapped after construction: refused at the call, before the UNet runs
    pipe = wrap(StableDiffusionPipeline(**base.components), tiny_sd_components["upscaler"])
    unet_calls = count_calls(base.unet)
    try:
        pipe.vae = sdxl_vae
        with pytest.raises(ValueError, match="scaling_factor=0.13025"):
            pipe(**base_arguments("text2img"))
        pipe.vae = tiny_sd_components["vae"]
        pipe.upscaler = make_upscaler(latent_channels=16)
        with pytest.raises(ValueError, match="latent_channels=16"):
            pipe(**base_arguments("text2img"))
    finally:
        unet_calls.handle.remove()
    assert unet_calls == []


def test_pipelines_that_cannot_be_wrapped(base_pipes, tiny_sd_components):
    components = {k: v for k, v in tiny_sd_components.items()}
    with pytest.raises(ValueError, match="already has an `upscaler`"):
        UPLiFTPipeline.from_pipe(StableDiffusionUPLiFTPipeline(**components))
    with pytest.raises(ValueError, match="`upscaler` is None"):
        UPLiFTPipeline.from_pipe(base_pipes["text2img"], upscaler=None)
    with pytest.raises(ValueError, match="must be a diffusers DiffusionPipeline"):
        UPLiFTPipeline.from_pipe(lambda prompt: None, upscaler=components["upscaler"])


def test_bad_arguments(base_pipes, tiny_sd_components):
    pipe = wrap(base_pipes["inpaint"], tiny_sd_components["upscaler"])
    arguments = base_arguments("inpaint")
    for factor in (0.5, "2", True, float("nan")):
        with pytest.raises(ValueError, match="`upscale_factor`"):
            pipe(**arguments, upscale_factor=factor)
    with pytest.raises(ValueError, match="`color_correction` must be True or False"):
        pipe(**arguments, color_correction="yes")
    with pytest.raises(ValueError, match="`return_base_images` must be True or False"):
        pipe(**arguments, return_base_images=1)
    with pytest.raises(ValueError, match="`output_type` must be one of"):
        pipe(**arguments, output_type="jpeg")
    with pytest.raises(ValueError, match="`padding_mask_crop`"):
        pipe(**arguments, padding_mask_crop=8)


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


def test_safety_checker_of_the_base_runs_on_the_upscaled_images(tiny_sd_components):
    shared = {k: v for k, v in tiny_sd_components.items() if k != UPSCALER_SUBFOLDER}
    checker = FlagFirstImage()
    extractor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    base = StableDiffusionPipeline(**shared, safety_checker=checker, feature_extractor=extractor)
    pipe = wrap(base, tiny_sd_components["upscaler"])
    out = pipe(**{**base_arguments("text2img"), "prompt": [PROMPT, "a dog"]}, output_type="np", return_base_images=True)
    assert checker.seen == [(2, 3, 128, 128)]  # once, on the upscaled images
    assert out.nsfw_content_detected == [True, False]
    assert out.images[0].max() == 0 and out.images[1].max() > 0
    assert out.base_images[0].max() == 0 and out.base_images[1].max() > 0


# ------------------------------------------------------------------------------- pipeline features
def test_progress_bar_and_offload_order(base_pipes, tiny_sd_components, capsys):
    base = base_pipes["controlnet"]
    pipe = wrap(base, tiny_sd_components["upscaler"])
    assert base._progress_bar_config == {"disable": True}
    assert pipe.model_cpu_offload_seq == base.model_cpu_offload_seq + "->upscaler"
    pipe.set_progress_bar_config(disable=False)
    try:
        assert base._progress_bar_config == {"disable": False}
        pipe(**base_arguments("controlnet"), upscale_factor=4, output_type="np")
    finally:
        pipe.set_progress_bar_config(disable=True)
    err = capsys.readouterr().err
    assert "2/2" in err  # the base pipeline's denoising steps
    assert "4/4" in err  # decode the base image, two 2x steps, decode


def test_model_cpu_offload_covers_the_upscaler(base_pipes, tiny_sd_components):
    """``enable_model_cpu_offload`` hooks the base pipeline's models and the upscaler (on the CPU
    here: no accelerator) and gives the same images; the hooks are removed afterwards."""
    base = base_pipes["img2img"]
    pipe = wrap(base, tiny_sd_components["upscaler"])
    expected = pipe(**base_arguments("img2img"), output_type="np").images
    pipe.enable_model_cpu_offload(device="cpu")
    try:
        hooked = {name for name, module in pipe.components.items() if hasattr(module, "_hf_hook")}
        assert {"unet", "vae", "text_encoder", UPSCALER_SUBFOLDER} <= hooked
        np.testing.assert_array_equal(pipe(**base_arguments("img2img"), output_type="np").images, expected)
    finally:
        pipe.remove_all_hooks()
    assert not any(hasattr(module, "_hf_hook") for module in pipe.components.values())


def test_enable_tiling_acts_on_the_upscaler_and_the_shared_vae(base_pipes, tiny_sd_components):
    pipe = wrap(base_pipes["text2img"], tiny_sd_components["upscaler"])
    vae, upscaler = tiny_sd_components["vae"], tiny_sd_components["upscaler"]
    pipe.enable_tiling(tile_size=4, overlap=2)
    upscaler_calls = count_calls(upscaler)
    try:
        assert vae.use_tiling and pipe.tiling_settings == (4, 2)
        tiled = pipe(**base_arguments("text2img"), output_type="pt").images
    finally:
        upscaler_calls.handle.remove()
        pipe.disable_tiling()
    assert not vae.use_tiling and pipe.tiling_settings is None
    assert tiled.shape == (1, 3, 128, 128)
    assert len(upscaler_calls) == count_tiles(8, 8, 4, 2) > 1  # one upscaler call per latent tile


def test_save_pretrained_round_trip(base_pipes, tiny_sd_components, tmp_path, caplog):
    pipe = wrap(base_pipes["img2img"], tiny_sd_components["upscaler"])
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionImg2ImgPipeline"
    assert index[UPSCALER_SUBFOLDER][1] == "UPLiFTLatentUpscaler"
    assert (tmp_path / "saved" / UPSCALER_SUBFOLDER / "config.json").is_file()

    diffusers_logger = logging.getLogger("diffusers")  # it does not propagate to the root logger
    diffusers_logger.addHandler(caplog.handler)
    try:
        loaded = UPLiFTPipeline.from_pretrained(tmp_path / "saved")
    finally:
        diffusers_logger.removeHandler(caplog.handler)
    assert "not expected" not in caplog.text  # no diffusers notice about the `upscaler` entry
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.base_pipeline) is StableDiffusionImg2ImgPipeline
    expected = pipe(**base_arguments("img2img"), output_type="np").images
    np.testing.assert_array_equal(loaded(**base_arguments("img2img"), output_type="np").images, expected)
    # diffusers itself reads the folder as the base pipeline
    assert type(DiffusionPipeline.from_pretrained(tmp_path / "saved")) is StableDiffusionImg2ImgPipeline
    with pytest.raises(ValueError, match="does not push to the Hub"):
        pipe.save_pretrained(tmp_path / "pushed", push_to_hub=True)
    with pytest.raises(ValueError, match="`upscaler_revision`='v1' applies only to the default UPLiFT model"):
        UPLiFTPipeline.from_pretrained(tmp_path / "saved", upscaler_revision="v1")


def test_from_pretrained_plain_pipeline_from_the_hub_cache(sd15_cached, release_cached, tiny_upscaler):
    """A plain SD1.5 repository (offline, from the Hub cache) plus the authors' release."""
    from uplift_diffusers.constants import SD15_MODEL_ID

    pipe = UPLiFTPipeline.from_pretrained(SD15_MODEL_ID)
    assert type(pipe.base_pipeline) is StableDiffusionPipeline
    assert_same_weights(pipe.upscaler, tiny_upscaler)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(**base_arguments("text2img"), output_type="np").images.shape == (1, 128, 128, 3)


# ------------------------------------------------------------------------------- the example script
def run_example(monkeypatch, *argv):
    """``examples/controlnet_uplift.py`` with ``argv``, in this process."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "controlnet_uplift.py"
    monkeypatch.setattr("sys.argv", [str(script), *argv])
    runpy.run_path(str(script), run_name="__main__")


def test_example_runs_on_local_tiny_models(monkeypatch, tiny_dirs, tmp_path, capsys):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        make_controlnet(make_unet()).save_pretrained(tmp_path / "controlnet")
    picture(5, size=(48, 80)).save(tmp_path / "photo.png")
    output = tmp_path / "out.png"
    run_example(
        monkeypatch, str(tmp_path / "photo.png"), "a red cat", "--model", str(tiny_dirs.sd_pipeline()),
        "--controlnet", str(tmp_path / "controlnet"), "--upscaler", str(tiny_dirs.upscaler()),
        "--size", "64", "--scale", "2", "--steps", "2", "--output", str(output),
    )
    assert PIL.Image.open(output).size == (128, 128)
    assert PIL.Image.open(tmp_path / "out_base.png").size == (64, 64)
    edges = np.asarray(PIL.Image.open(tmp_path / "out_edges.png"))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) <= {0, 255}
    assert "saved" in capsys.readouterr().out


def test_example_names_every_missing_model_in_one_line(monkeypatch, hub_cache, tmp_path):
    picture(5).save(tmp_path / "photo.png")
    with pytest.raises(SystemExit) as exit_info:
        run_example(monkeypatch, str(tmp_path / "photo.png"), "a red cat")
    message = str(exit_info.value.code)
    assert "\n" not in message and message.startswith("controlnet_uplift: HF_HUB_OFFLINE is set")
    for name in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/control_v11p_sd15_canny", "UPLiFT release"):
        assert name in message
