"""StableDiffusionUPLiFTPipeline with tiny, randomly initialised SD components (offline)."""
import io
import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPImageProcessor

from tiny_models import make_upscaler
from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.utils.color_correction import color_correct
from uplift_diffusers.models.modeling_uplift import __name__ as UPSCALER_MODULE
from uplift_diffusers.pipelines.pipeline_stable_diffusion_uplift import StableDiffusionUPLiFTPipeline, StableDiffusionUPLiFTPipelineOutput

PROMPT = "a red cat"


def make_pipe(components, **overrides):
    """The UPLiFT pipeline on ``tiny_sd_components`` (conftest.py), any of them replaced by ``overrides``."""
    pipe = StableDiffusionUPLiFTPipeline(**{**components, **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **kwargs)


def unit(images):
    return (images / 2 + 0.5).clamp(0, 1)


# ------------------------------------------------------------------------------- sizes / types
@pytest.mark.parametrize("factor, side", [(1, 64), (2, 128), (4, 256), (1.5, 96), (2.5, 160), (3, 192), (1.01, 65)])
def test_output_size_per_factor(tiny_sd_components, factor, side):
    out = run(make_pipe(tiny_sd_components), upscale_factor=factor, output_type="np")
    assert isinstance(out, StableDiffusionUPLiFTPipelineOutput)
    assert out.images.shape == (1, side, side, 3)
    assert out.images.dtype == np.float32 and 0.0 <= out.images.min() and out.images.max() <= 1.0
    assert out.base_images is None and out.nsfw_content_detected is None


def test_non_square_and_default_factor(tiny_sd_components):
    out = run(make_pipe(tiny_sd_components), height=64, width=96, output_type="pil")
    assert len(out.images) == 1 and isinstance(out.images[0], PIL.Image.Image)
    assert out.images[0].size == (192, 128)  # PIL size is (width, height): 2x by default


def test_without_upscaler(tiny_sd_components):
    """upscaler=None: the default factor is 1 (plain Stable Diffusion); asking for more is an error."""
    pipe = make_pipe(tiny_sd_components, upscaler=None)
    assert run(pipe, output_type="np").images.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match=r"`upscale_factor`=4 needs an upscaler, but this pipeline has none"):
        run(pipe, upscale_factor=4)
    assert run(make_pipe(tiny_sd_components), output_type="np").images.shape == (1, 128, 128, 3)  # with one: 2


def test_factor_one_equals_stable_diffusion(tiny_sd_components):
    """upscale_factor=1 is exactly the parent pipeline's output."""
    sd = StableDiffusionPipeline(**{k: v for k, v in tiny_sd_components.items() if k != "upscaler"},
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    expected = sd(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="pt").images
    ours = run(make_pipe(tiny_sd_components), seed=3, upscale_factor=1, output_type="pt").images
    assert torch.equal(ours, expected)


def test_output_types_and_latent_scaling(tiny_sd_components):
    """'latent' returns the upscaled latents x scaling_factor; 'pt' is their colour-corrected decode."""
    pipe = make_pipe(tiny_sd_components)
    vae, upscaler = tiny_sd_components["vae"], tiny_sd_components["upscaler"]
    scaling = vae.config.scaling_factor
    latent = run(pipe, output_type="latent", return_base_images=True)
    assert latent.images.shape == (1, 4, 16, 16) and latent.base_images.shape == (1, 4, 8, 8)
    with torch.no_grad():
        base_image = vae.decode(latent.base_images / scaling).sample
        expected = upscaler(latent.base_images / scaling, unit(base_image), num_steps=1).sample * scaling
        torch.testing.assert_close(latent.images, expected, rtol=1e-4, atol=1e-5)
        decoded = vae.decode(latent.images / scaling).sample
    expected_pt = color_correct(unit(decoded), unit(base_image))

    pt = run(pipe, output_type="pt", return_base_images=True)
    assert pt.images.shape == (1, 3, 128, 128) and pt.base_images.shape == (1, 3, 64, 64)
    torch.testing.assert_close(pt.images, expected_pt, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pt.base_images, unit(base_image), rtol=1e-4, atol=1e-4)

    np_out = run(pipe, output_type="np", return_base_images=True)
    np.testing.assert_allclose(np_out.images, pt.images.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    pil = run(pipe, output_type="pil", return_base_images=True)
    assert pil.images[0].size == (128, 128) and pil.base_images[0].size == (64, 64)
    assert pil.images[0].mode == "RGB"


def test_color_correction_matches_base_means(tiny_sd_components):
    pipe = make_pipe(tiny_sd_components)
    out = run(pipe, output_type="pt", return_base_images=True)
    raw = run(pipe, output_type="pt", color_correction=False)
    base_means = out.base_images.mean(dim=(2, 3))
    corrected_error = (out.images.mean(dim=(2, 3)) - base_means).abs().max()
    raw_error = (raw.images.mean(dim=(2, 3)) - base_means).abs().max()
    # exact up to the few values the clamp to [0, 1] cuts (about 2% of the pixels here)
    assert corrected_error < 2e-3
    assert raw_error > 5 * corrected_error
    assert not torch.allclose(raw.images, out.images)


def test_batch_and_return_tuple(tiny_sd_components):
    out = run(make_pipe(tiny_sd_components), num_images_per_prompt=2, output_type="np", return_dict=False, return_base_images=True)
    images, nsfw, base = out
    assert images.shape == (2, 128, 128, 3) and base.shape == (2, 64, 64, 3) and nsfw is None
    assert len(run(make_pipe(tiny_sd_components), output_type="np", return_dict=False)) == 2


# ------------------------------------------------------------------------------- determinism
def test_seeded_reproducibility(tiny_sd_components):
    pipe = make_pipe(tiny_sd_components, upscaler=make_upscaler(noise_scale=1.0))
    first = run(pipe, seed=7, output_type="np").images
    second = run(pipe, seed=7, output_type="np").images
    other = run(pipe, seed=8, output_type="np").images
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


# ------------------------------------------------------------------------------- save / load
def test_save_pretrained_round_trip(tiny_sd_components, tmp_path):
    pipe = make_pipe(tiny_sd_components, upscaler=make_upscaler(noise_scale=1.0))
    expected = run(pipe, output_type="np").images
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["upscaler"] == [UPSCALER_MODULE, "UPLiFTLatentUpscaler"]  # what diffusers writes for it
    assert index["_class_name"] == "StableDiffusionUPLiFTPipeline"

    loaded = StableDiffusionUPLiFTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.upscaler, UPLiFTLatentUpscaler)
    assert loaded.upscaler.config.noise_scale == 1.0
    assert np.array_equal(run(loaded, output_type="np").images, expected)

    # passing the upscaler explicitly also works
    other = make_upscaler(noise_scale=0.0)
    with_passed = StableDiffusionUPLiFTPipeline.from_pretrained(tmp_path, upscaler=other)
    assert with_passed.upscaler is other


def test_from_pretrained_sd_directory_with_upscaler(tiny_sd_components, tmp_path):
    sd = StableDiffusionPipeline(**{k: v for k, v in tiny_sd_components.items() if k != "upscaler"},
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(tmp_path)
    upscaler = make_upscaler()
    pipe = StableDiffusionUPLiFTPipeline.from_pretrained(tmp_path, upscaler=upscaler)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.upscaler is upscaler
    assert run(pipe, output_type="np").images.shape == (1, 128, 128, 3)


def cache_with_tree_listing(hub_cache, repo_id, folder):
    """Cache ``folder`` as ``repo_id`` together with the file listing (``trees/<commit>.json``) that
    huggingface_hub's snapshot_download leaves in the cache; diffusers reads it offline."""
    import hashlib

    tree_cache = pytest.importorskip("huggingface_hub._tree_cache", reason="huggingface_hub without a tree cache")
    snapshot = hub_cache.add_folder(repo_id, folder)
    files = {p.relative_to(snapshot).as_posix(): p for p in snapshot.rglob("*") if p.is_file()}
    entries = {
        name: tree_cache.TreeCacheEntry(size=p.stat().st_size, blob_id=hashlib.sha1(p.read_bytes()).hexdigest())
        for name, p in files.items()
    }
    tree_cache.write_tree_cache(str(hub_cache.repo_folder(repo_id)), snapshot.name, entries)
    return snapshot


def test_from_pretrained_hub_cache_offline(tiny_sd_components, tmp_path, hub_cache):
    """A Hub repository holding this package's components, cached as a download leaves it (with
    its file listing), loads offline; diffusers' own download refuses the component's library
    (it looks for its code in the repository): UPLiFTComponentsMixin.download is needed."""
    from diffusers import DiffusionPipeline

    pipe = make_pipe(tiny_sd_components, upscaler=make_upscaler(noise_scale=1.0))
    expected = run(pipe, output_type="np").images
    pipe.save_pretrained(tmp_path / "saved")
    cache_with_tree_listing(hub_cache, "someone/sd-uplift", tmp_path / "saved")
    with pytest.raises(ValueError, match="upscaler/uplift_diffusers.* does not exist in someone/sd-uplift"):
        DiffusionPipeline.download.__func__(StableDiffusionUPLiFTPipeline, "someone/sd-uplift")
    loaded = StableDiffusionUPLiFTPipeline.from_pretrained("someone/sd-uplift")
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(run(loaded, output_type="np").images, expected)
    # components passed as arguments are neither fetched nor loaded
    other = make_upscaler(noise_scale=0.0)
    assert StableDiffusionUPLiFTPipeline.from_pretrained("someone/sd-uplift", upscaler=other).upscaler is other


def test_from_pipe(tiny_sd_components):
    sd = StableDiffusionPipeline(**{k: v for k, v in tiny_sd_components.items() if k != "upscaler"},
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    upscaler = make_upscaler()
    pipe = StableDiffusionUPLiFTPipeline.from_pipe(sd, upscaler=upscaler)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, StableDiffusionUPLiFTPipeline)
    assert pipe.unet is sd.unet and pipe.vae is sd.vae and pipe.upscaler is upscaler
    assert tuple(pipe.config["upscaler"]) == (UPSCALER_MODULE, "UPLiFTLatentUpscaler")
    assert run(pipe, output_type="np").images.shape == (1, 128, 128, 3)


def test_assigned_upscaler_is_saved(tiny_sd_components, tmp_path):
    """`pipe.register_modules(upscaler=model)` on a pipeline built without one is saved and
    reloaded (diffusers' way to add a component that was None)."""
    pipe = make_pipe(tiny_sd_components, upscaler=None)
    pipe.register_modules(upscaler=make_upscaler(noise_scale=1.0))
    assert tuple(pipe.config["upscaler"]) == (UPSCALER_MODULE, "UPLiFTLatentUpscaler")
    pipe.save_pretrained(tmp_path / "assigned")
    loaded = StableDiffusionUPLiFTPipeline.from_pretrained(tmp_path / "assigned")
    assert isinstance(loaded.upscaler, UPLiFTLatentUpscaler) and loaded.upscaler.config.noise_scale == 1.0
    # and back: assigning None saves a pipeline without one
    loaded.upscaler = None
    loaded.save_pretrained(tmp_path / "removed")
    assert StableDiffusionUPLiFTPipeline.from_pretrained(tmp_path / "removed").upscaler is None


# ------------------------------------------------------------------------------- VAE tiling
def test_enable_vae_tiling(tiny_sd_components, monkeypatch):
    pipe = make_pipe(tiny_sd_components)
    vae = tiny_sd_components["vae"]
    calls = []
    original = vae.tiled_decode

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(vae, "tiled_decode", counting)
    pipe.enable_tiling()
    try:
        out = run(pipe, upscale_factor=4, output_type="np")
    finally:
        pipe.disable_tiling()
    assert out.images.shape == (1, 256, 256, 3) and np.isfinite(out.images).all()
    # the base decode (8 x 8 latents) and the upscaled decode (32 x 32) are both larger than
    # the tiny VAE's 4-latent tiles
    assert [tuple(s[-2:]) for s in calls] == [(8, 8), (32, 32)]
    assert vae.use_tiling is False


# ------------------------------------------------------------------------------- safety checker
class FlagEverything(torch.nn.Module):
    """Stand-in safety checker that flags every image (blacks it out, as the real one does)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.dummy.device

    @property
    def dtype(self):
        return self.dummy.dtype

    def forward(self, images, clip_input):
        return torch.zeros_like(images), [True] * images.shape[0]


def test_safety_checker_runs_on_final_images(tiny_sd_components):
    extractor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    pipe = make_pipe(tiny_sd_components, safety_checker=FlagEverything(), feature_extractor=extractor)
    out = run(pipe, output_type="np", return_base_images=True)
    assert out.nsfw_content_detected == [True]
    assert out.images.shape == (1, 128, 128, 3) and out.images.max() == 0
    assert out.base_images.max() == 0


# ------------------------------------------------------------------------------- progress bar
def test_progress_bar_covers_upscaling(tiny_sd_components, capsys):
    pipe = make_pipe(tiny_sd_components)
    pipe.set_progress_bar_config(disable=False)
    run(pipe, output_type="np")
    err = capsys.readouterr().err
    assert "2/2" in err  # denoising steps
    assert "3/3" in err  # decode base, one 2x step, decode


@pytest.mark.parametrize("factor, output_type, stages", [(4, "np", 4), (3, "np", 4), (1, "np", 1), (4, "latent", 3), (1, "latent", 1)])
def test_progress_bar_counts_stages(tiny_sd_components, monkeypatch, factor, output_type, stages):
    """The bar after denoising: decode of the base image, every 2x step, the final decode."""
    pipe = make_pipe(tiny_sd_components)
    pipe.set_progress_bar_config(disable=False, file=io.StringIO())  # a disabled tqdm does not count
    bars = []
    original = pipe.progress_bar

    def spy(iterable=None, total=None):
        bar = original(iterable=iterable, total=total)
        bars.append(bar)
        return bar

    monkeypatch.setattr(pipe, "progress_bar", spy)
    run(pipe, upscale_factor=factor, output_type=output_type)
    upscale_bar = bars[-1]
    assert upscale_bar.total == stages and upscale_bar.n == stages


# ------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("factor", [0, 0.99, float("nan"), float("inf"), True, "2"])
def test_bad_upscale_factor(tiny_sd_components, factor):
    with pytest.raises(ValueError, match="`upscale_factor` must be a"):
        run(make_pipe(tiny_sd_components), upscale_factor=factor)


def test_latent_output_needs_a_power_of_two(tiny_sd_components):
    pipe = make_pipe(tiny_sd_components)
    with pytest.raises(ValueError, match=r"output_type='latent' takes a power-of-two `upscale_factor`.*got upscale_factor=3,"):
        run(pipe, upscale_factor=3, output_type="latent")
    with pytest.raises(ValueError, match=r"output_type='latent' .* and no `output_size`, got .*output_size=\(64, 64\)"):
        run(pipe, output_size=(64, 64), output_type="latent")
    assert run(pipe, upscale_factor=4.0, output_type="latent").images.shape == (1, 4, 32, 32)


def test_non_integer_factor_is_the_shared_upscale_stage(tiny_sd_components, monkeypatch):
    """3x runs the one upscale-and-decode stage (2 steps, then the chosen resampling) on the base
    latents, guided by the base image, and its colour correction."""
    from uplift_diffusers import hooks

    pipe = make_pipe(tiny_sd_components)
    calls = []
    original = hooks.upscale_and_decode

    def spy(upscaler, decode, latents, guide, output_size, *args, **kwargs):
        calls.append((upscaler, tuple(latents.shape), tuple(guide.shape), output_size))
        return original(upscaler, decode, latents, guide, output_size, *args, **kwargs)

    monkeypatch.setattr(hooks, "upscale_and_decode", spy)
    out = run(pipe, upscale_factor=3, output_type="pt", return_base_images=True)
    assert calls == [(pipe.upscaler, (1, 4, 8, 8), (1, 3, 64, 64), (192, 192))]
    torch.testing.assert_close(out.images.mean(dim=(2, 3)), out.base_images.mean(dim=(2, 3)), atol=2e-3, rtol=0)


def test_bad_flags_and_output_type(tiny_sd_components):
    pipe = make_pipe(tiny_sd_components)
    with pytest.raises(ValueError, match="color_correction"):
        run(pipe, color_correction="yes")
    with pytest.raises(ValueError, match="return_base_images"):
        run(pipe, return_base_images=1)
    with pytest.raises(ValueError, match="output_type"):
        run(pipe, output_type="jpeg")


@pytest.mark.parametrize("name", ["latents", "prompt_embeds"])
def test_nan_inputs_are_refused_at_entry(tiny_sd_components, name):
    pipe = make_pipe(tiny_sd_components)
    shapes = {"latents": (1, 4, 8, 8), "prompt_embeds": (1, 16, 16)}
    bad = torch.randn(shapes[name])
    bad[0, 0, 0] = float("nan")
    kwargs = {name: bad, **({"prompt": None} if name == "prompt_embeds" else {})}
    with pytest.raises(ValueError, match=f"`{name}` contains NaN or infinite values"):
        pipe(**{"prompt": PROMPT, **kwargs}, num_inference_steps=2)


def test_upscaler_channels_must_match_vae(tiny_sd_components):
    with pytest.raises(ValueError, match="latent_channels=32"):
        make_pipe(tiny_sd_components, upscaler=make_upscaler(latent_channels=32))
    pipe = make_pipe(tiny_sd_components)
    pipe.upscaler = make_upscaler(latent_channels=16)  # swapped after construction: caught at call
    with pytest.raises(ValueError, match="latent_channels=16"):
        run(pipe)
