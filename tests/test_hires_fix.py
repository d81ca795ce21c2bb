"""hires_fix: generate, UPLiFT, then re-run the last `strength` of the schedule at the new size
(tiny SD1.5 and FLUX.2 pipelines, offline)."""
import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline, StableDiffusionPipeline

from tiny_models import FLUX2_TEXT_HIDDEN, FLUX2_TEXT_LAYERS, build_flux2_components, make_upscaler
from uplift_diffusers import apply_uplift, hires_fix, remove_uplift

NO_SAFETY = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def pipes(tiny_sd_components):
    sd = StableDiffusionPipeline(**{k: v for k, v in tiny_sd_components.items() if k != "upscaler"}, **NO_SAFETY)
    built = {"sd": sd, "klein": Flux2KleinPipeline(**build_flux2_components(klein=True)), "dev": Flux2Pipeline(**build_flux2_components(klein=False))}
    for pipe in built.values():
        pipe.set_progress_bar_config(disable=True)
    return built


@pytest.fixture(scope="module")
def upscalers(tiny_sd_components):
    return {"sd": tiny_sd_components["upscaler"], "klein": make_upscaler(latent_channels=32, noise_scale=1.0),
            "dev": make_upscaler(latent_channels=32, noise_scale=1.0)}


def call_kwargs(family: str) -> dict:
    kwargs = dict(height=64, width=64, num_inference_steps=4, output_type="np")
    if family == "sd":
        kwargs.update(prompt="a red cat")
    elif family == "klein":
        kwargs.update(prompt="a red cat", max_sequence_length=16, text_encoder_out_layers=FLUX2_TEXT_LAYERS)
    else:
        embeds = torch.randn(1, 8, len(FLUX2_TEXT_LAYERS) * FLUX2_TEXT_HIDDEN, generator=torch.Generator().manual_seed(11))
        kwargs.update(prompt_embeds=embeds, text_encoder_out_layers=FLUX2_TEXT_LAYERS)
    return kwargs


def seeded(seed: int = 0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family", ["sd", "klein", "dev"])
def test_strength_zero_is_exactly_apply_uplift(pipes, upscalers, family):
    pipe, upscaler = pipes[family], upscalers[family]
    out = hires_fix(pipe, upscaler, strength=0, generator=seeded(), **call_kwargs(family)).images
    apply_uplift(pipe, upscaler)
    try:
        expected = pipe(generator=seeded(), **call_kwargs(family)).images
    finally:
        remove_uplift(pipe)
    assert out.shape == (1, 128, 128, 3)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("family", ["sd", "klein", "dev"])
def test_refined_sizes_and_seeded_reproducibility(pipes, upscalers, family):
    pipe, upscaler = pipes[family], upscalers[family]
    first = hires_fix(pipe, upscaler, strength=0.3, generator=seeded(), **call_kwargs(family)).images
    again = hires_fix(pipe, upscaler, strength=0.3, generator=seeded(), **call_kwargs(family)).images
    plain = hires_fix(pipe, upscaler, strength=0, generator=seeded(), **call_kwargs(family)).images
    four = hires_fix(pipe, upscaler, upscale_factor=4, strength=0.3, refine_steps=1, generator=seeded(), **call_kwargs(family)).images
    assert first.shape == (1, 128, 128, 3) and four.shape == (1, 256, 256, 3)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - plain).max() > 1e-3  # the second pass changed the image
    assert pipe.vae.decode.__func__ is type(pipe.vae).decode  # nothing left applied


def test_flux2_dev_second_pass_runs_exactly_the_asked_sigmas(pipes, upscalers):
    """sigma0 = strength, evenly down, on a schedule without the resolution shift."""
    schedules = []

    def record(pipe, step, timestep, tensors):
        schedules.append([round(float(s), 6) for s in pipe.scheduler.sigmas])
        return tensors

    hires_fix(pipes["dev"], upscalers["dev"], strength=0.3, refine_steps=3, generator=seeded(), callback_on_step_end=record,
              **call_kwargs("dev"))
    assert schedules[-1] == [0.3, 0.2, 0.1, 0.0]
    assert len(schedules) == 4 + 3  # the first pass's 4 steps, then the 3 of the second
    assert pipes["dev"].scheduler.config.use_dynamic_shifting  # the pipeline's own scheduler is untouched


def test_sd_second_pass_steps(pipes, upscalers):
    steps = []
    hires_fix(pipes["sd"], upscalers["sd"], strength=0.5, refine_steps=2, generator=seeded(),
              callback_on_step_end=lambda pipe, step, t, tensors: steps.append(tuple(tensors["latents"].shape)) or tensors,
              **call_kwargs("sd"))
    assert steps == [(1, 4, 8, 8)] * 4 + [(1, 4, 16, 16)] * 2


def test_bad_arguments_and_unsupported_pipelines(pipes, upscalers):
    sd, upscaler = pipes["sd"], upscalers["sd"]
    for value, match in ((3, "`upscale_factor` must be a power of two"), (1, "`upscale_factor`"), (True, "`upscale_factor`")):
        with pytest.raises(ValueError, match=match):
            hires_fix(sd, upscaler, upscale_factor=value, **call_kwargs("sd"))
    for value in (-0.1, 1.0, "0.3", True):
        with pytest.raises(ValueError, match="`strength` must be a number in \\[0, 1\\)"):
            hires_fix(sd, upscaler, strength=value, **call_kwargs("sd"))
    with pytest.raises(ValueError, match="`refine_steps` must be an int >= 1"):
        hires_fix(sd, upscaler, refine_steps=0, **call_kwargs("sd"))
    with pytest.raises(ValueError, match="latent_channels=32 but the VAE"):
        hires_fix(sd, upscalers["klein"], **call_kwargs("sd"))

    class Other:
        vae = sd.vae

    with pytest.raises(ValueError, match=r"no refine path for Other; supported: Stable Diffusion 1.5.*FLUX.2 \[dev\].*FLUX.2 \[klein\]"):
        hires_fix(Other(), upscaler)


def test_offloading_and_vae_tiling_of_the_pipeline_are_honoured(tiny_sd_components, upscalers):
    """The second pass shares the pipeline's components (from_pipe): under model CPU offload the
    result is the same, and a VAE set to tiling decodes in tiles in both passes."""
    import copy

    from tiny_models import offload

    shared = {k: copy.deepcopy(v) for k, v in tiny_sd_components.items() if k != "upscaler"}
    pipe = StableDiffusionPipeline(**shared, **NO_SAFETY)
    pipe.set_progress_bar_config(disable=True)
    expected = hires_fix(pipe, upscalers["sd"], strength=0.5, refine_steps=2, generator=seeded(), **call_kwargs("sd")).images
    offload(pipe, "model")
    np.testing.assert_allclose(
        hires_fix(pipe, upscalers["sd"], strength=0.5, refine_steps=2, generator=seeded(), **call_kwargs("sd")).images, expected, atol=1e-5
    )
    pipe.remove_all_hooks()
    tiled = []
    original = pipe.vae.tiled_decode
    pipe.vae.tiled_decode = lambda z, *a, **k: tiled.append(tuple(z.shape[-2:])) or original(z, *a, **k)
    pipe.vae.enable_tiling()
    out = hires_fix(pipe, upscalers["sd"], strength=0.5, refine_steps=2, generator=seeded(), **call_kwargs("sd")).images
    assert out.shape == (1, 128, 128, 3) and (16, 16) in tiled
