"""Tiled inference (issue #13.3): UPLiFT tiles (models/tiled_upscaling.py), TinyAutoencoder tiles,
and the pipelines' one switch (pipelines/pipeline_utils.py::TilingMixin)."""
from __future__ import annotations

import math

import pytest
import torch
from tiny_models import make_tiny_autoencoder, make_upscaler

from uplift_diffusers import UPLiFTSuperResolutionPipeline
from uplift_diffusers.pipelines.pipeline_utils import TilingMixin
from uplift_diffusers.models.fast_inference import apply_fast_inference, remove_fast_inference
from uplift_diffusers.models.tiled_upscaling import (
    DEFAULT_TILE_OVERLAP,
    DEFAULT_TILE_SIZE,
    axis_weights,
    blend_tiles,
    check_tile_arguments,
    count_tiles,
    tile_starts,
    tiled_upscale,
)


def psnr_db(test: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR with the reference's value range as the peak (latents or images alike)."""
    peak = float(reference.max() - reference.min())
    mse = float(((test.float() - reference.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def inputs(h: int, w: int, seed: int = 1, channels: int = 4):
    """Smooth latents ``1 x channels x h x w`` and their 8x guide in [0, 1] (upsampled noise: an image
    with structure, as a tile border would cut through)."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.nn.functional.interpolate(torch.randn(1, channels, h // 2 + 1, w // 2 + 1, generator=g), size=(h, w), mode="bilinear")
    guide = torch.nn.functional.interpolate(torch.rand(1, 3, h + 1, w + 1, generator=g), size=(8 * h, 8 * w), mode="bilinear")
    return latents, guide


def seeded(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ============================================================================== the tile grid and the blend
def test_tile_starts_cover_the_axis_with_full_tiles():
    assert tile_starts(10, 16, 4) == [0]
    assert tile_starts(16, 16, 4) == [0]
    assert tile_starts(40, 16, 4) == [0, 12, 24]  # exact fit: stride tile - overlap
    assert tile_starts(30, 16, 4) == [0, 7, 14]  # two tiles would share 2 < 4: three, evenly spaced
    for length in (17, 29, 40, 41, 100):
        starts = tile_starts(length, 16, 6)
        assert starts[-1] + 16 == length and starts[0] == 0
        assert all(b - a <= 16 - 6 for a, b in zip(starts, starts[1:]))  # every seam has >= 6 shared latents
        assert len(starts) == math.ceil((length - 6) / 10)  # the fewest tiles that do
    assert count_tiles(40, 30, 16, 4) == 3 * 3


def test_blend_is_a_partition_of_unity_and_has_no_step_at_seams():
    """Constant tiles of different values: the blend reproduces a constant exactly, and across a
    seam it moves by one ramp increment per pixel (a linear cross-fade, not a step)."""
    for width in (33, 41, 32):
        ones = blend_tiles(lambda y0, y1, x0, x1: torch.ones(1, 2, (y1 - y0) * 4, (x1 - x0) * 4), 20, width, 8, 2, out_scale=4)
        torch.testing.assert_close(ones, torch.ones(1, 2, 80, 4 * width))

    # each tile a different constant: 0, 1, 2, ... along the width (32 = 8 + 4 x 6: stride 6, 2 shared)
    starts = tile_starts(32, 8, 2)
    assert starts == [0, 6, 12, 18, 24]
    out = blend_tiles(lambda y0, y1, x0, x1: torch.full((1, 1, (y1 - y0) * 4, (x1 - x0) * 4), float(starts.index(x0))), 6, 32, 8, 2, out_scale=4)
    row = out[0, 0, 0]
    steps = row[1:] - row[:-1]
    assert float(steps.min()) >= 0 and float(steps.max()) == pytest.approx(1.0 / (2 * 4))  # 1 / (overlap * out_scale)
    assert float(row[0]) == 0.0 and float(row[-1]) == len(starts) - 1  # tile values away from seams
    ramp = axis_weights([0, 6, 14], 24, 10, 1)[1]  # the middle tile shares 4 pixels before it, 2 after it
    assert torch.all(ramp > 0) and float(ramp[4]) == 1.0 and float(ramp[0]) == pytest.approx(0.125)
    assert float(ramp[-1]) == pytest.approx(0.25) and float(ramp[-3]) == 1.0


# ============================================================================== UPLiFT tiles
def test_one_tile_equals_untiled_exactly_with_noise():
    model = make_upscaler(4, noise_scale=1.0)
    latents, guide = inputs(12, 10)
    with torch.no_grad():
        untiled = model(latents, guide, num_steps=2, generator=seeded()).sample
        tiled = tiled_upscale(model, latents, guide, 2, generator=seeded(), tile_size=16, overlap=4)
    assert torch.equal(tiled, untiled)


def test_full_size_noise_is_the_untiled_draw_and_tiles_slice_it():
    model = make_upscaler(4, noise_scale=1.0)
    latents, guide = inputs(10, 12)
    generator = seeded()
    predrawn = [model.step_noise(torch.empty(1, 4, 10 * 2**step, 12 * 2**step), generator) for step in range(2)]
    assert len(predrawn) == 2
    for step, noise in enumerate(predrawn):
        assert noise[0].shape[-2:] == (10 * 2**step, 12 * 2**step) and noise[1].shape[-2:] == (20 * 2**step, 24 * 2**step)
    with torch.no_grad():  # the untiled run with the same seed draws exactly this noise
        drawn = model(latents, guide, num_steps=2, generator=seeded()).sample
        given = model(latents, guide, num_steps=2, noise=predrawn).sample
    assert torch.equal(given, drawn)

    # what a tile sees: the slice of the full-size noise, passed as `noise=` (recorded inside a tiled run)
    seen = []

    class Spy:
        config = model.config
        check_inputs = model.check_inputs
        step_noise = model.step_noise

        def __call__(self, tile_latents, tile_image, **kwargs):
            assert "generator" not in kwargs and "noise_scale" not in kwargs
            seen.append(kwargs["noise"])
            return type("Out", (), {"sample": torch.zeros(1, 4, tile_latents.shape[-2] * 4, tile_latents.shape[-1] * 4)})()

    tiled_upscale(Spy(), latents, guide, 2, generator=seeded(), tile_size=8, overlap=4)
    starts_y, starts_x = tile_starts(10, 8, 4), tile_starts(12, 8, 4)
    corners = [(y, x) for y in starts_y for x in starts_x]
    assert len(seen) == len(corners)
    for (y0, x0), steps in zip(corners, seen):
        for step, noise in enumerate(steps):
            s_in, s_out = 2**step, 2 ** (step + 1)
            assert torch.equal(noise[0], predrawn[step][0][:, :, y0 * s_in : (y0 + 8) * s_in, x0 * s_in : (x0 + 8) * s_in])
            for k in (1, 2):
                assert torch.equal(noise[k], predrawn[step][k][:, :, y0 * s_out : (y0 + 8) * s_out, x0 * s_out : (x0 + 8) * s_out])


def test_multi_tile_close_to_untiled_and_noise_shared():
    """Twelve tiles: within the issue's 35 dB of the untiled run (with noise, same seed); a different
    noise seed is much farther, so the closeness comes from slicing the same noise."""
    model = make_upscaler(4, noise_scale=1.0)
    latents, guide = inputs(28, 30)
    calls = []
    with torch.no_grad():
        untiled = model(latents, guide, num_steps=2, generator=seeded()).sample
        tiled = tiled_upscale(model, latents, guide, 2, generator=seeded(), tile_size=12, overlap=4, callback=lambda i, z: calls.append((i, tuple(z.shape))))
        other_noise = model(latents, guide, num_steps=2, generator=seeded(99)).sample
    assert tiled.shape == untiled.shape == (1, 4, 112, 120)
    assert count_tiles(28, 30, 12, 4) == 3 * 4
    assert psnr_db(tiled, untiled) >= 45.0
    assert psnr_db(other_noise, untiled) < psnr_db(tiled, untiled) - 10
    # callback after every step of every tile, with the tile's latents
    assert [i for i, _ in calls] == [0, 1] * 12
    assert calls[0][1] == (1, 4, 24, 24) and calls[1][1] == (1, 4, 48, 48)


def test_no_step_at_tile_borders():
    """The tiled-minus-untiled difference has no jump at the tile borders: its largest change
    between neighbouring output columns near a border is of the same order as anywhere."""
    model = make_upscaler(4, noise_scale=0.0)
    latents, guide = inputs(12, 40)
    with torch.no_grad():
        untiled = model(latents, guide, num_steps=1).sample
        tiled = tiled_upscale(model, latents, guide, 1, tile_size=16, overlap=8)
    error = (tiled - untiled).abs().amax(dim=(0, 1, 2))  # per output column
    jumps = (error[1:] - error[:-1]).abs()
    assert float(error.max()) < 0.05 * float(untiled.abs().max())
    # the tiles start at 0, 8, 16, 24 (latents): borders at output columns 16*k (x2)
    borders = [2 * s for s in tile_starts(40, 16, 8)[1:]] + [2 * (s + 16) for s in tile_starts(40, 16, 8)[:-1]]
    for border in borders:
        assert float(jumps[border - 2 : border + 2].max()) <= 0.02 * float(untiled.abs().max())


def test_tiled_with_fast_inference_matches_eager_tiled():
    """Every tile goes through the model's forward, so the fast-inference forward runs the tiles."""
    model = make_upscaler(4, noise_scale=1.0)
    latents, guide = inputs(20, 12)
    with torch.no_grad():
        eager = tiled_upscale(model, latents, guide, 2, generator=seeded(), tile_size=8, overlap=4)
        apply_fast_inference(model, dtype=torch.float32, compile=False, channels_last=False)
        try:
            fast = tiled_upscale(model, latents, guide, 2, generator=seeded(), tile_size=8, overlap=4)
        finally:
            remove_fast_inference(model)
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fast", [False, True])
def test_tiling_sets_no_attribute_on_the_model(fast):
    """The tiles get their noise through forward's `noise=`: during every step of every tile the
    instance's attributes are the ones it had before the run (no `step_noise` override)."""
    model = make_upscaler(4, noise_scale=1.0)
    if fast:
        apply_fast_inference(model, dtype=torch.float32, compile=False, channels_last=False)
    latents, guide = inputs(12, 12)
    before = dict(model.__dict__)
    seen = []

    def callback(step, tile_latents):
        assert "step_noise" not in model.__dict__
        assert model.__dict__.keys() == before.keys() and all(model.__dict__[k] is v for k, v in before.items())
        seen.append(step)

    with torch.no_grad():
        tiled_upscale(model, latents, guide, 2, generator=seeded(), tile_size=8, overlap=4, callback=callback)
    assert seen == [0, 1] * count_tiles(12, 12, 8, 4) and model.__dict__.keys() == before.keys()


@pytest.mark.parametrize(
    "tile_size, overlap, name",
    [(1, 0, "tile_size"), (0, None, "tile_size"), (8.0, 2, "tile_size"), (True, 0, "tile_size"), (8, 8, "overlap"), (8, -1, "overlap"), (8, 2.5, "overlap")],
)
def test_bad_tile_arguments_name_the_argument(tile_size, overlap, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        check_tile_arguments(tile_size, overlap)
    model = make_upscaler(4)
    latents, guide = inputs(4, 4)
    with pytest.raises(ValueError, match=f"`{name}`"):
        tiled_upscale(model, latents, guide, 1, tile_size=tile_size, overlap=overlap)


def test_defaults():
    assert check_tile_arguments(None, None) == (DEFAULT_TILE_SIZE, DEFAULT_TILE_OVERLAP)
    assert check_tile_arguments(8, None) == (8, 4)  # the default overlap is capped at half a small tile


# ============================================================================== TinyAutoencoder tiles
@pytest.mark.parametrize("pooled", [False, True])
def test_tiny_autoencoder_tiled_encode_decode_close_to_untiled(pooled):
    """Tiled encode / decode (diffusers' switches and tile attributes) close to the untiled pass;
    with TAEF2's pooled blocks (a GroupNorm over the whole map) they run on the whole map."""
    pools = {"encoder_pooled_blocks": [11, 12, 13], "decoder_pooled_blocks": [3, 4, 5]} if pooled else {}
    torch.manual_seed(0)
    vae = make_tiny_autoencoder(**pools).eval()
    image = inputs(16, 24)[1] * 2 - 1  # 128 x 192
    with torch.no_grad():
        latents = vae.encode(image).latents
        decoded = vae.decode(latents).sample
        vae.enable_tiling()
        vae.tile_sample_min_size = 64  # 8 latents, 2 shared: 2 x 3 tiles
        vae.tile_overlap_factor = 0.25
        tiled_latents = vae.encode(image).latents
        tiled_decoded = vae.decode(latents).sample
        vae.disable_tiling()
        assert torch.equal(vae.decode(latents).sample, decoded)
    assert vae.use_tiling is False
    assert tiled_latents.shape == latents.shape and tiled_decoded.shape == decoded.shape
    assert psnr_db(tiled_latents, latents) >= 35.0
    assert psnr_db(tiled_decoded, decoded) >= 35.0


def test_tiny_autoencoder_one_tile_and_slicing_are_exact():
    torch.manual_seed(0)
    vae = make_tiny_autoencoder().eval()
    images = inputs(8, 6)[1].repeat(2, 1, 1, 1) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latents
        decoded = vae.decode(latents).sample
        vae.enable_tiling()  # 512 px tiles: one tile covers 64 x 48
        vae.enable_slicing()
        torch.testing.assert_close(vae.encode(images).latents, latents, rtol=0, atol=1e-6)
        torch.testing.assert_close(vae.decode(latents).sample, decoded, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_taef2_tiled_decode_close_to_untiled(taef2):
    """The real TAEF2: 256 x 320 through 128 px tiles (a quarter shared), encode and decode > 45 dB."""
    image = inputs(32, 40)[1] * 2 - 1
    with torch.no_grad():
        latents = taef2.encode(image).latents
        decoded = taef2.decode(latents).sample
        taef2.enable_tiling()
        taef2.tile_sample_min_size = 128
        try:
            tiled_latents = taef2.encode(image).latents
            tiled_decoded = taef2.decode(latents).sample
        finally:
            taef2.disable_tiling()
            taef2.tile_sample_min_size = 512
        decoded_from_tiled = taef2.decode(tiled_latents).sample
    assert psnr_db(tiled_decoded, decoded) >= 45.0
    assert psnr_db(decoded_from_tiled, decoded) >= 45.0


# ============================================================================== the pipelines' switch
def sr_pipeline(vae=None):
    torch.manual_seed(0)
    pipe = UPLiFTSuperResolutionPipeline(vae=vae or make_tiny_autoencoder().eval(), upscaler=make_upscaler(4, noise_scale=1.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_enable_disable():
    pipe = sr_pipeline()
    assert pipe.tiling_settings is None and pipe.vae.use_tiling is False
    pipe.enable_tiling(tile_size=12, overlap=3)
    assert pipe.tiling_settings == (12, 3) and pipe.vae.use_tiling is True
    pipe.disable_tiling()
    assert pipe.tiling_settings is None and pipe.vae.use_tiling is False
    pipe.enable_tiling()
    assert pipe.tiling_settings == (DEFAULT_TILE_SIZE, DEFAULT_TILE_OVERLAP) and pipe.vae.use_tiling is True
    pipe.disable_tiling()
    assert pipe.tiling_settings is None and pipe.vae.use_tiling is False
    with pytest.raises(ValueError, match="`overlap`"):
        pipe.enable_tiling(tile_size=8, overlap=9)
    assert pipe.tiling_settings is None  # a refused call changes nothing


def test_enable_tiling_refuses_a_vae_without_tiling():
    class Holder(TilingMixin):
        def __init__(self, vae):
            self.vae = vae

    class PlainVAE:
        pass

    holder = Holder(PlainVAE())
    with pytest.raises(ValueError, match="PlainVAE.*does not support tiled"):
        holder.enable_tiling()
    assert holder.tiling_settings is None


def test_upscale_latents_and_progress_count():
    """The stage's one way to run the upscaler: untiled it is the model's call, tiled it is
    ``tiled_upscale``; one progress update per step (per tile when tiling)."""
    from uplift_diffusers.pipelines.upscale_decode import latent_updates, upscale_latents

    pipe = sr_pipeline()
    latents, guide = inputs(20, 12)

    class Count:
        n = 0

        def update(self):
            self.n += 1

    with torch.no_grad():
        progress = Count()
        untiled = upscale_latents(pipe.upscaler, latents, guide, 2, seeded(), None, progress)
        assert torch.equal(untiled, pipe.upscaler(latents, guide, num_steps=2, generator=seeded()).sample)
        assert progress.n == latent_updates((20, 12), 2) == 2
        progress = Count()
        tiled = upscale_latents(pipe.upscaler, latents, guide, 2, seeded(), (8, 4), progress)
    assert torch.equal(tiled, tiled_upscale(pipe.upscaler, latents, guide, 2, generator=seeded(), tile_size=8, overlap=4))
    assert progress.n == latent_updates((20, 12), 2, (8, 4)) == count_tiles(20, 12, 8, 4) * 2 == 4 * 2 * 2


def test_pipeline_tiled_output_close_to_untiled():
    """End to end (encode, UPLiFT, decode, colour correction), 96 x 128 at 4x, several tiles."""
    pipe = sr_pipeline()
    image = inputs(12, 16)[1]
    untiled = pipe(image, upscale_factor=4, generator=seeded(), output_type="pt").images
    pipe.enable_tiling(tile_size=8, overlap=4)
    pipe.vae.tile_sample_min_size = 64
    tiled = pipe(image, upscale_factor=4, generator=seeded(), output_type="pt").images
    assert tiled.shape == untiled.shape == (1, 3, 384, 512)
    assert 10 * math.log10(1 / float(((tiled - untiled) ** 2).mean())) >= 35.0


# ============================================================================== the benchmark
def test_benchmark_settings_are_parsed_and_checked():
    from evaluation.benchmarks.benchmark_tiling_memory import parse_setting

    assert parse_setting("untiled") is None
    assert parse_setting("auto") is None  # the default settings: tiling by itself above the budget
    assert parse_setting("tiled") == {}
    assert parse_setting("tiled:32:8") == {"tile_size": 32, "overlap": 8}
    for bad in ("tiles", "tiled:32", "tiled:a:b"):
        with pytest.raises(ValueError, match="--settings"):
            parse_setting(bad)


@pytest.mark.slow
def test_benchmark_smoke_test_writes_results(tmp_path):
    """Two fresh processes on tiny random models: the results hold a peak RSS per setting and the
    closeness of the tiled output (the numbers mean nothing)."""
    import json

    from evaluation.benchmarks.benchmark_tiling_memory import main

    main(["--smoke-test", "--work-dir", str(tmp_path), "--output", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    rows = {row["setting"]: row for row in result["rows"]}
    assert set(rows) == {"untiled", "tiled:8:2"}
    assert all(row["peak_rss_gb"] > 0 and row["output_size"] == [512, 384] for row in rows.values())
    assert "psnr_vs_untiled_db" in rows["tiled:8:2"] and "| tiled:8:2 |" in (tmp_path / "r.md").read_text()
