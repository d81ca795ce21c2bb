"""Tests of `UPLiFTLatentUpscaler`: size, shapes, noise handling, dtypes, input checks, saving."""
import pytest
import torch

from tiny_models import make_small_upscaler
from uplift_diffusers import UPLiFTLatentUpscaler, UPLiFTOutput
from uplift_diffusers.models.fast_inference import apply_fast_inference, remove_fast_inference


def inputs(batch=1, h=4, w=6, channels=4):
    latents = torch.randn(batch, channels, h, w)
    image = torch.rand(batch, 3, 8 * h, 8 * w)
    return latents, image


@pytest.fixture(scope="module")
def model():
    return make_small_upscaler()


# ----------------------------------------------------------------------------- size and shapes
def test_default_model_has_the_released_parameter_count():
    with torch.device("meta"):
        model = UPLiFTLatentUpscaler()
    assert sum(p.numel() for p in model.parameters()) == 53_487_445
    assert len(model.state_dict()) == 131  # the released checkpoint's tensor count
    assert len(model.attender.offsets) == 17
    assert model.config.latent_channels == 4


@pytest.mark.parametrize("num_steps", [1, 2, 3])
@pytest.mark.parametrize("h, w", [(3, 3), (2, 5)])
def test_output_shapes_and_intermediates(model, num_steps, h, w):
    latents, image = inputs(2, h, w)
    with torch.no_grad():
        out = model(latents, image, num_steps=num_steps, output_intermediate=True)
    assert isinstance(out, UPLiFTOutput)
    factor = 2**num_steps
    assert out.sample.shape == (2, 4, h * factor, w * factor)
    assert out.sample.dtype == torch.float32
    assert torch.isfinite(out.sample).all()
    assert len(out.intermediate) == num_steps
    for k, step in enumerate(out.intermediate, start=1):
        assert step.shape == (2, 4, h * 2**k, w * 2**k)
    assert out.intermediate[-1] is out.sample


def test_no_intermediates_by_default_and_tuple_output(model):
    latents, image = inputs()
    with torch.no_grad():
        out = model(latents, image, noise_scale=0.0)
        sample, intermediate = model(latents, image, noise_scale=0.0, return_dict=False)
    assert out.intermediate is None and intermediate is None
    torch.testing.assert_close(sample, out.sample, rtol=0, atol=0)


def test_other_latent_channels():
    model = make_small_upscaler(latent_channels=16)
    latents, image = inputs(1, 3, 4, channels=16)
    with torch.no_grad():
        out = model(latents, image, num_steps=2)
    assert out.sample.shape == (1, 16, 12, 16)


def test_encoder_runs_once_per_call(model):
    calls = []
    handle = model.encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    try:
        latents, image = inputs(1, 2, 3)
        with torch.no_grad():
            model(latents, image, num_steps=3)
    finally:
        handle.remove()
    assert calls == [torch.Size([1, 3, 16, 24])]


def test_steps_share_weights_and_encoder_maps(model):
    """Two single steps chained through `upscale_step` equal one call with num_steps=2."""
    latents, image = inputs(1, 3, 3)
    with torch.no_grad():
        two = model(latents, image, num_steps=2, noise_scale=0.0).sample
        features = model.encoder(image)
        once = model.upscale_step(latents, features, model.step_noise(latents, noise_scale=0.0))
        chained = model.upscale_step(once, features, model.step_noise(once, noise_scale=0.0))
    torch.testing.assert_close(two, chained, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- noise
def test_same_seed_same_output_different_seed_different_output(model):
    latents, image = inputs(2)
    with torch.no_grad():
        a = model(latents, image, generator=torch.Generator().manual_seed(1)).sample
        b = model(latents, image, generator=torch.Generator().manual_seed(1)).sample
        c = model(latents, image, generator=torch.Generator().manual_seed(2)).sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_generator_list_draws_per_batch_element(model):
    latents, image = inputs(3, 3, 4)
    seeds = [11, 22, 33]
    with torch.no_grad():
        batched = model(latents, image, num_steps=2, generator=[torch.Generator().manual_seed(s) for s in seeds]).sample
        for i, seed in enumerate(seeds):
            single = model(
                latents[i : i + 1], image[i : i + 1], num_steps=2, generator=torch.Generator().manual_seed(seed)
            ).sample
            torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-5, atol=1e-5)
    assert (batched[0] - batched[1]).abs().max() > 1e-3  # elements got different noise


def test_noise_scale_zero_is_deterministic_and_matters(model):
    latents, image = inputs(2)
    with torch.no_grad():
        a = model(latents, image, noise_scale=0.0).sample
        b = model(latents, image, noise_scale=0).sample
        noisy = model(latents, image, generator=torch.Generator().manual_seed(0)).sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - noisy).abs().max() > 1e-3


def test_zero_configured_noise_scale_is_deterministic():
    model = make_small_upscaler(noise_scale=0.0)
    latents, image = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(latents, image).sample, model(latents, image).sample, rtol=0, atol=0)


def drawn_noise(model, latents, num_steps, seed):
    """The noise a ``num_steps`` forward with ``Generator().manual_seed(seed)`` draws, step by step."""
    generator, shape, noise = torch.Generator().manual_seed(seed), latents.shape, []
    for step in range(num_steps):
        noise.append(model.step_noise(torch.empty(shape[0], shape[1], shape[2] * 2**step, shape[3] * 2**step), generator))
    return noise


def test_given_noise_equals_the_generator_that_would_have_drawn_it(model):
    latents, image = inputs(2, 3, 4)
    noise = drawn_noise(model, latents, 2, seed=5)
    assert [tuple(n.shape) for n in noise[1]] == [(2, 4, 6, 8), (2, 4, 12, 16), (2, 4, 12, 16)]
    with torch.no_grad():
        drawn = model(latents, image, num_steps=2, generator=torch.Generator().manual_seed(5), output_intermediate=True)
        given = model(latents, image, num_steps=2, noise=noise, output_intermediate=True)
        other = model(latents, image, num_steps=2, noise=drawn_noise(model, latents, 2, seed=6)).sample
    assert torch.equal(given.sample, drawn.sample)
    assert all(torch.equal(a, b) for a, b in zip(given.intermediate, drawn.intermediate))
    assert (other - drawn.sample).abs().max() > 1e-3  # the given noise is what is used


def test_no_noise_channels_take_none():
    model = make_small_upscaler(noise_channels=0)
    latents, image = inputs()
    assert model.step_noise(latents) == (None, None, None)
    with torch.no_grad():
        given = model(latents, image, noise=[(None, None, None)]).sample
        torch.testing.assert_close(given, model(latents, image).sample, rtol=0, atol=0)


def _bad_noise_cases():
    model = make_small_upscaler()
    latents = torch.randn(2, 4, 4, 6)
    good = drawn_noise(model, latents, 2, seed=0)
    wrong_size = [good[0], (good[1][0], good[1][1][:, :, :-1], good[1][2])]
    return [
        ("too few steps", dict(noise=good[:1]), r"`noise` must hold one tuple of 3 tensors per 2x step \(num_steps=2\).*; got \[\[[^]]*\]\]\.$"),
        ("too many steps", dict(noise=good + good[:1]), r"`noise` must hold .*\(num_steps=2\).*; got \[(\[[^]]*\], ){2}\[[^]]*\]\]\.$"),
        ("not a list", dict(noise=good[0][0]), r"`noise` must hold .*\(num_steps=2\).*; got \(2, 4, 4, 6\) torch.float32 cpu\.$"),
        ("wrong size", dict(noise=wrong_size), r"`noise` must hold .*\[\(2, 4, 8, 12\) torch.float32 cpu, \(2, 4, 16, 24\) torch.float32 cpu, \(2, 4, 16, 24\) torch.float32 cpu\]\]; got .*\[\(2, 4, 8, 12\) torch.float32 cpu, \(2, 4, 15, 24\)"),
        ("two tensors", dict(noise=[good[0][:2], good[1]]), r"`noise` must hold one tuple of 3 tensors per 2x step.*; got \[\[\(2, 4, 4, 6\) torch.float32 cpu, \(2, 4, 8, 12\) torch.float32 cpu\], "),
        ("None for channels", dict(noise=[(None, None, None), good[1]]), r"`noise` must hold one tuple of 3 tensors per 2x step.*; got \[\[None, None, None\], "),
        ("not a tuple", dict(noise=[good[0][0], good[1]]), r"`noise` must hold .*; got \[\(2, 4, 4, 6\) torch.float32 cpu, \["),
        ("dtype", dict(noise=[tuple(n.double() for n in good[0]), good[1]]), r"`noise` must hold .*in the model's dtype on the latents' device: \[\[\(2, 4, 4, 6\) torch.float32 cpu.*; got \[\[\(2, 4, 4, 6\) torch.float64 cpu"),
        ("with generator", dict(noise=good, generator=torch.Generator()), r"`noise` is given, so `generator` and `noise_scale` must be None"),
        ("with noise_scale", dict(noise=good, noise_scale=0.0), r"`noise` is given.*noise_scale=0.0"),
    ]


_NOISE_CASES = _bad_noise_cases()


@pytest.mark.parametrize("name, override, match", _NOISE_CASES, ids=[c[0] for c in _NOISE_CASES])
@pytest.mark.parametrize("fast", [False, True])
def test_bad_noise_raises_value_error_naming_the_argument(model, name, override, match, fast):
    kwargs = dict(latents=torch.randn(2, 4, 4, 6), image=torch.rand(2, 3, 32, 48), num_steps=2)
    kwargs.update(override)
    if fast:
        apply_fast_inference(model, dtype=torch.float32, compile=False)
    try:
        with pytest.raises(ValueError, match=match):
            model(**kwargs)
    finally:
        remove_fast_inference(model)


# ----------------------------------------------------------------------------- dtypes
def test_bfloat16_on_cpu_stays_close_to_float32():
    model = make_small_upscaler()
    latents, image = inputs(2, 4, 4)
    with torch.no_grad():
        reference = model(latents, image, num_steps=2, noise_scale=0.0).sample
        model_bf16 = model.to(torch.bfloat16)
        out = model_bf16(latents, image, num_steps=2, noise_scale=0.0).sample
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    relative_l2 = (out.float() - reference).norm() / reference.norm()
    assert relative_l2 < 3e-2, f"relative L2 error {relative_l2:.4f}"


def test_float64_model_accepts_float32_inputs():
    model = make_small_upscaler().double()
    latents, image = inputs()
    with torch.no_grad():
        out = model(latents, image, noise_scale=0.0).sample
    assert out.dtype == torch.float64


# ----------------------------------------------------------------------------- bad inputs
def _bad_cases():
    latents, image = torch.randn(2, 4, 4, 6), torch.rand(2, 3, 32, 48)
    gens = [torch.Generator().manual_seed(0)]
    return [
        ("latents 3-D", dict(latents=latents[0]), r"`latents` must be a floating-point 4-D tensor B x 4 x h x w .*got \(4, 4, 6\) torch.float32 cpu\.$"),
        ("latents not a tensor", dict(latents=[[1.0]]), r"`latents` must be a floating-point 4-D tensor .*got \[\[float\]\]\.$"),
        ("latents channels", dict(latents=torch.randn(2, 3, 4, 6)), r"`latents` must be a floating-point 4-D tensor B x 4 x h x w \(latent_channels=4.*got \(2, 3, 4, 6\)"),
        ("image size", dict(image=torch.rand(2, 3, 32, 40)), r"`image` must be a floating-point tensor \(2, 3, 32, 48\).*got \(2, 3, 32, 40\)"),
        ("image channels", dict(image=torch.rand(2, 4, 32, 48)), r"`image` must be a floating-point tensor \(2, 3, 32, 48\).*got \(2, 4, 32, 48\)"),
        ("image 3-D", dict(image=torch.rand(3, 32, 48)), r"`image` must be a floating-point tensor \(2, 3, 32, 48\).*got \(3, 32, 48\)"),
        ("image batch", dict(image=torch.rand(3, 3, 32, 48)), r"`image` must be a floating-point tensor \(2, 3, 32, 48\): per latent.*got \(3, 3, 32, 48\)"),
        ("integer latents", dict(latents=torch.zeros(2, 4, 4, 6, dtype=torch.int64)), r"`latents` must be a floating-point .*got \(2, 4, 4, 6\) torch.int64 cpu\.$"),
        ("num_steps 0", dict(num_steps=0), r"`num_steps` must be an int >= 1.*got 0"),
        ("num_steps negative", dict(num_steps=-1), r"`num_steps` must be an int >= 1"),
        ("num_steps float", dict(num_steps=2.0), r"`num_steps` must be an int >= 1.*got 2.0"),
        ("num_steps bool", dict(num_steps=True), r"`num_steps` must be an int >= 1.*got True"),
        ("generator list length", dict(generator=gens), r"`generator` is a list of 1 generators but the batch has 2"),
        ("noise_scale negative", dict(noise_scale=-1.0), r"`noise_scale` must be a number >= 0"),
    ], latents, image


_CASES, _LATENTS, _IMAGE = _bad_cases()


@pytest.mark.parametrize("name, override, match", _CASES, ids=[c[0] for c in _CASES])
def test_bad_inputs_raise_value_error_naming_the_argument(model, name, override, match):
    kwargs = dict(latents=_LATENTS, image=_IMAGE, num_steps=1)
    kwargs.update(override)
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


def test_forward_reads_no_tensor_values():
    """The checks look at shapes, dtypes and devices only: the whole forward runs on the meta
    device, where no value can be read (no host synchronisation per call, no graph break
    under torch.compile). Value checks (NaN, range) belong where data enters."""
    with torch.device("meta"):
        model = make_small_upscaler()
        latents, image = torch.empty(2, 4, 3, 5), torch.empty(2, 3, 24, 40)
        with torch.no_grad():
            out = model(latents, image, num_steps=2, output_intermediate=True)
    assert out.sample.device.type == "meta" and out.sample.shape == (2, 4, 12, 20)
    nan_latents = torch.full((1, 4, 2, 2), float("nan"))
    with torch.no_grad():
        assert torch.isnan(make_small_upscaler()(nan_latents, torch.rand(1, 3, 16, 16)).sample).all()  # passed through, not checked


def test_bad_config_values():
    with pytest.raises(ValueError, match="`encoder_channels` needs at least 2 groups"):
        UPLiFTLatentUpscaler(encoder_channels=(8,), decoder_channels=8, refiner_channels=8)
    with pytest.raises(ValueError, match="`refiner_blocks` must be >= 1"):
        make_small_upscaler(refiner_blocks=0)
    with pytest.raises(ValueError, match="`neighborhood` must be one of"):
        make_small_upscaler(neighborhood=7)


# ----------------------------------------------------------------------------- saving and loading
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"neighborhood": [[0, 0], [-1, 0], [0, 1], [1, -1], [2, 2]], "refiner_encoder_group": None},
        {"encoder_channels": [[4, 6], [6, 8, 8]], "latent_channels": 8, "noise_channels": 2, "refiner_noise_channels": 0},
    ],
    ids=["default-small", "offsets-no-refiner-skip", "per-block-widths"],
)
def test_save_pretrained_round_trip(tmp_path, overrides):
    model = make_small_upscaler(**overrides)
    channels = model.config.latent_channels
    latents, image = inputs(2, 3, 4, channels=channels)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "config.json").is_file()
    loaded = UPLiFTLatentUpscaler.from_pretrained(tmp_path).eval()
    assert loaded.attender.offsets == model.attender.offsets
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    with torch.no_grad():
        expected = model(latents, image, num_steps=2, noise_scale=0.0).sample
        got = loaded(latents, image, num_steps=2, noise_scale=0.0).sample
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        expected = model(latents, image, num_steps=2, generator=torch.Generator().manual_seed(5)).sample
        got = loaded(latents, image, num_steps=2, generator=torch.Generator().manual_seed(5)).sample
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
