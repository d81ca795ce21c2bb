"""Fast inference (bf16 / channels_last / torch.compile) and the exact encoder savings."""
import os
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file

from tiny_models import make_small_upscaler
from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.models.fast_inference import (
    apply_fast_inference,
    encoder_read_stride,
    last_group_strided,
    remove_fast_inference,
)
from uplift_diffusers.models.modeling_uplift import UPLiFTEncoder


def inputs(batch=1, h=6, w=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, h, w, generator=gen), torch.rand(batch, 3, 8 * h, 8 * w, generator=gen)


def run(model, latents, image, num_steps=1, seed=7, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model(latents, image, num_steps=num_steps, generator=generator, **kwargs).sample


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def dense_forward(model, latents, image, num_steps, seed=7):
    """The upscaler's own blocks with every encoder map dense (no savings), same noise stream."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        features = model.encoder(image)
        z = latents
        for _ in range(num_steps):
            z = model.upscale_step(z, features, model.step_noise(z, generator))
    return z


def weights(model):
    return {name: (t.dtype, t.data_ptr(), t.is_contiguous()) for name, t in model.state_dict().items()}


# ----------------------------------------------------------------------------- fast mode
@pytest.mark.parametrize("num_steps", [1, 2])
def test_bf16_fast_inference_within_1e2_of_fp32_eager(num_steps):
    model = make_small_upscaler()
    latents, image = inputs()
    reference = run(model, latents, image, num_steps)
    apply_fast_inference(model, dtype=torch.bfloat16, compile=False)
    fast = run(model, latents, image, num_steps)
    assert fast.dtype == torch.float32 and fast.shape == reference.shape
    assert fast.is_contiguous()
    error = rel_l2(fast, reference)
    assert 0 < error < 1e-2  # really computed in bf16, and close


@pytest.mark.parametrize("num_steps", [1, 2])
def test_official_size_random_model_within_1e2_in_bf16(num_steps):
    """The released architecture (53.5 M parameters) with random weights, the worst case
    for rounding (no training keeps its activations well conditioned): bf16 fast mode
    within 1e-2 relative L2 of float32 eager (measured 0.89% / 0.83%; with the residual
    stream in bf16 everywhere it was 1.13% / 1.04%)."""
    torch.manual_seed(0)
    model = UPLiFTLatentUpscaler().eval()
    latents, image = inputs(h=8, w=8)
    reference = run(model, latents, image, num_steps)
    apply_fast_inference(model, dtype=torch.bfloat16, compile=False)
    fast = run(model, latents, image, num_steps)
    assert 1e-3 < rel_l2(fast, reference) < 1e-2


def test_conv_block_keeps_a_float32_residual_stream_under_autocast():
    """Fast mode's mixed precision: under bf16 autocast the block's convolutions compute in
    bf16 while the sum with a float32 residual stays float32."""
    from uplift_diffusers.models.modeling_uplift import ConvBlock

    torch.manual_seed(0)
    block = ConvBlock(16, 24).eval()
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        reference = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, pure = block(x), block(x.bfloat16())
    assert mixed.dtype == torch.float32 and pure.dtype == torch.bfloat16
    # the first 16 channels carry the exact float32 input through the residual
    assert rel_l2(mixed, reference) < rel_l2(pure.float(), reference)
    update = reference - torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 8))
    assert torch.allclose(mixed - torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 8)), update, atol=0.05 * update.abs().max().item())


def test_output_comes_back_in_the_latents_dtype():
    model = make_small_upscaler()
    latents, image = inputs()
    apply_fast_inference(model, compile=False)
    out = run(model, latents.half(), image.half())
    assert out.dtype == torch.float16
    assert rel_l2(out.float(), run(model, latents, image)) < 1e-2


def test_float32_fast_mode_matches_eager_including_noise():
    """Same generator -> the fast path draws the very same noise as the eager model."""
    model = make_small_upscaler()
    latents, image = inputs(batch=2, h=5, w=7)
    reference = run(model, latents, image, num_steps=2, output_intermediate=False)
    apply_fast_inference(model, dtype=torch.float32, compile=False)
    fast = run(model, latents, image, num_steps=2)
    assert (fast - reference).abs().max().item() < 1e-5
    # noise matters here: another seed gives another output
    assert (run(model, latents, image, num_steps=2, seed=8) - fast).abs().max().item() > 1e-3


def test_fast_mode_with_given_noise_equals_eager():
    """`noise=` reaches the fast path as the eager forward: equal outputs, and equal to the seed that drew it."""
    model = make_small_upscaler()
    latents, image = inputs(batch=2, h=5, w=7)
    generator = torch.Generator().manual_seed(7)
    noise = [model.step_noise(torch.empty(2, 4, 5 * 2**k, 7 * 2**k), generator) for k in range(2)]
    with torch.no_grad():
        eager = model(latents, image, num_steps=2, noise=noise).sample
        apply_fast_inference(model, dtype=torch.float32, compile=False)
        fast = model(latents, image, num_steps=2, noise=noise).sample
        remove_fast_inference(model)
    assert (fast - eager).abs().max().item() < 1e-5
    assert torch.equal(eager, run(model, latents, image, num_steps=2, seed=7))


def test_intermediate_and_tuple_output_in_fast_mode():
    model = make_small_upscaler()
    latents, image = inputs()
    apply_fast_inference(model, compile=False)
    with torch.no_grad():
        sample, steps = model(latents, image, num_steps=2, output_intermediate=True, return_dict=False, noise_scale=0.0)
    assert [tuple(s.shape) for s in steps] == [(1, 4, 12, 16), (1, 4, 24, 32)]
    assert torch.equal(steps[-1], sample) and sample.dtype == torch.float32


def test_fast_mode_leaves_the_weights_alone_and_disable_gives_the_eager_model_back():
    """No weight is converted, moved or swapped (same tensors, dtype and layout while fast
    mode is on); after disabling, the output is bit-identical to a model never switched."""
    model, never_switched = make_small_upscaler(), make_small_upscaler()
    latents, image = inputs()
    before = weights(model)
    values = {k: v.clone() for k, v in model.state_dict().items()}
    reference = run(never_switched, latents, image, num_steps=2)
    apply_fast_inference(model, dtype=torch.bfloat16, compile=False)
    fast = run(model, latents, image, num_steps=2)
    assert weights(model) == before
    assert 0 < rel_l2(fast, reference) < 1e-2  # the fast path did run, in bf16
    remove_fast_inference(model)
    assert model._fast_inference is None and "forward" not in vars(model)
    assert weights(model) == before
    assert all(torch.equal(v, values[k]) for k, v in model.state_dict().items())
    assert torch.equal(run(model, latents, image, num_steps=2), reference)
    remove_fast_inference(model)  # a second disable is harmless


def test_enable_twice_replaces_the_settings():
    model = make_small_upscaler()
    latents, image = inputs()
    first = apply_fast_inference(model, dtype=torch.bfloat16, compile=False)
    second = apply_fast_inference(model, dtype=torch.float32, compile=False)
    assert model._fast_inference is second and first.model is model
    reference = dense_forward(model, latents, image, 1)
    assert (run(model, latents, image) - reference).abs().max().item() < 1e-5  # float32 now
    remove_fast_inference(model)
    assert "forward" not in vars(model)


def test_fast_mode_under_an_accelerate_hook():
    """accelerate's CPU offload wraps ``forward`` on the instance: fast mode goes beneath
    the hook (enabled before or after it), so the hook still runs first on every call."""
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    class Counting(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Counting.calls += 1
            return args, kwargs

    latents, image = inputs()
    model = make_small_upscaler()
    reference = run(model, latents, image)
    for enable_first in (True, False):
        Counting.calls = 0
        if enable_first:
            apply_fast_inference(model, dtype=torch.bfloat16, compile=False)
        add_hook_to_module(model, Counting())
        if not enable_first:
            apply_fast_inference(model, dtype=torch.bfloat16, compile=False)
        fast = run(model, latents, image)
        assert Counting.calls == 1 and 0 < rel_l2(fast, reference) < 1e-2
        remove_fast_inference(model)
        assert torch.equal(run(model, latents, image), reference) and Counting.calls == 2
        remove_hook_from_module(model)
        assert torch.equal(run(model, latents, image), reference)


@pytest.mark.parametrize("bad", [torch.int8, torch.float64, "bf16", None, 16])
def test_bad_dtype_raises_value_error(bad):
    model = make_small_upscaler()
    with pytest.raises(ValueError, match="dtype"):
        apply_fast_inference(model, dtype=bad, compile=False)
    assert getattr(model, "_fast_inference", None) is None


def test_bad_flags_raise_value_error():
    model = make_small_upscaler()
    with pytest.raises(ValueError, match="compile"):
        apply_fast_inference(model, compile="yes")
    with pytest.raises(ValueError, match="channels_last"):
        apply_fast_inference(model, compile=False, channels_last=1)


def test_compile_failure_at_enable_warns_and_runs_eagerly(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = make_small_upscaler()
    latents, image = inputs()
    reference = run(model, latents, image)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no C compiler"):
        state = apply_fast_inference(model, dtype=torch.float32, compile=True)
    assert not state.compiled
    assert (run(model, latents, image) - reference).abs().max().item() < 1e-5


def test_compile_failure_at_first_call_warns_and_runs_eagerly(monkeypatch):
    """torch.compile is lazy: a backend failure shows at the first call."""

    def lazy_broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("InductorError: C++ compile error")

        return compiled

    monkeypatch.setattr(torch, "compile", lazy_broken_compile)
    model = make_small_upscaler()
    latents, image = inputs()
    reference = run(model, latents, image, num_steps=2)
    state = apply_fast_inference(model, dtype=torch.float32, compile=True)
    assert state.compiled
    with pytest.warns(RuntimeWarning, match="could not compile"):
        out = run(model, latents, image, num_steps=2)
    assert not state.compiled
    assert (out - reference).abs().max().item() < 1e-5
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*UPLiFT.*", category=RuntimeWarning)  # warned once only
        run(model, latents, image)


@pytest.mark.parametrize("mode, frozen", [(None, True), ("max-autotune-no-cudagraphs", False)])
def test_compiled_passes_run_with_inductor_freezing(monkeypatch, mode, frozen):
    """Dynamo decides whether weights become graph constants (freezing: pre-packed for
    oneDNN, residual adds fused) from Inductor's flag at call time, so the default mode
    sets it around every compiled call; an explicit mode is left as torch.compile has it."""
    import torch._inductor.config as inductor_config

    seen = []

    def recording_compile(fn, **kwargs):
        def compiled(*args):
            seen.append(inductor_config.freezing)
            return fn(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", recording_compile)
    model = make_small_upscaler()
    latents, image = inputs()
    reference = run(model, latents, image, num_steps=2)
    state = apply_fast_inference(model, dtype=torch.float32, compile=True, compile_mode=mode)
    assert state.freezing is frozen
    out = run(model, latents, image, num_steps=2)
    assert seen == [frozen] * 3  # the encoder, then two steps
    assert inductor_config.freezing is False  # switched back after each call
    assert (out - reference).abs().max().item() < 1e-5


def test_compile_unavailable_warns(monkeypatch):
    monkeypatch.delattr(torch, "compile")
    model = make_small_upscaler()
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        state = apply_fast_inference(model, compile=True)
    assert not state.compiled


@pytest.mark.slow  # about 35 s of compiling on a shared 2-core CPU (measured)
@pytest.mark.skipif(os.environ.get("UPLIFT_SKIP_COMPILE_TESTS") == "1", reason="UPLIFT_SKIP_COMPILE_TESTS=1")
def test_compiled_bf16_matches_eager():
    model = make_small_upscaler()
    latents, image = inputs()
    reference = run(model, latents, image)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*UPLiFT.*", category=RuntimeWarning)  # no fallback allowed
        state = apply_fast_inference(model, dtype=torch.bfloat16, compile=True)
        start = time.perf_counter()
        out = run(model, latents, image)
    assert state.compiled, f"compile fell back to eager after {time.perf_counter() - start:.0f} s"
    assert rel_l2(out, reference) < 1e-2


# ----------------------------------------------------------------------- encoder savings
def random_encoder():
    torch.manual_seed(3)
    encoder = UPLiFTEncoder([[width, width] for width in (8, 16, 24, 32, 40)]).eval()
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0, 0.3)
    return encoder


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("size", [(32, 48), (33, 29)])
def test_strided_last_map_equals_dense_subsampling(stride, size):
    encoder = random_encoder()
    image = torch.rand(2, 3, *size)
    with torch.no_grad():
        dense = encoder(image)
        strided = last_group_strided(encoder.groups[-1], dense[-2], stride)
    expected = dense[-1][..., ::stride, ::stride]
    assert strided.shape == expected.shape
    assert (strided - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())


def test_encoder_read_stride():
    model = make_small_upscaler()
    assert [encoder_read_stride(model, n) for n in (1, 2, 3, 4)] == [4, 2, 1, 1]
    no_refiner_link = make_small_upscaler(refiner_encoder_group=None)
    assert [encoder_read_stride(no_refiner_link, n) for n in (1, 2, 3, 4)] == [8, 4, 2, 1]
    other_group = make_small_upscaler(refiner_encoder_group=2)
    assert encoder_read_stride(other_group, 1) == 8


@pytest.mark.parametrize("num_steps", [1, 2, 3])
def test_upscaler_with_savings_equals_dense_encoder(num_steps):
    """float32 fast mode (strided last encoder map, no autocast) equals the dense eager model."""
    model = make_small_upscaler(encoder_blocks_per_group=2)
    latents, image = inputs(batch=2, h=3, w=5)
    dense = run(model, latents, image, num_steps)
    assert torch.equal(dense, dense_forward(model, latents, image, num_steps))  # the step reused as is
    apply_fast_inference(model, dtype=torch.float32, compile=False)
    saved = run(model, latents, image, num_steps)
    assert (saved - dense).abs().max().item() < 1e-5


@pytest.mark.parametrize("num_steps", [1, 2, 3])
def test_savings_exact_on_the_reference_fixture(shared_path, num_steps):
    folder = shared_path("fixtures", "uplift-reference", "sd15vae-mini")
    model = UPLiFTLatentUpscaler.from_single_file(folder / "uplift_original.safetensors", folder / "uplift_original.yaml")
    cases = load_file(str(folder / "cases.safetensors"))
    apply_fast_inference(model, dtype=torch.float32, compile=False, channels_last=False)
    for case in ("square", "batch2_nonsquare") if num_steps < 3 else ("batch2_nonsquare",):
        latents, image = cases[f"{case}.latents"], cases[f"{case}.image"]
        saved = run(model, latents, image, num_steps)
        dense = dense_forward(model, latents, image, num_steps)
        assert (saved - dense).abs().max().item() < 1e-5
        if num_steps <= 2:  # and still the authors' output
            assert (saved - cases[f"{case}.iters{num_steps}.step{num_steps}"]).abs().max().item() < 1e-4


def test_trained_model_stays_within_one_percent_in_bf16(shared_path):
    """The model trained in this repository, on a real photo's TAEF2 latents: bf16 fast mode
    (first encoder group kept in float32) within 1e-2 relative L2 of float32 eager."""
    from pathlib import Path

    from uplift_diffusers import load_vae
    from uplift_diffusers.image_processor import load_hr_lr, pil_to_tensor
    from uplift_diffusers.loaders.vae import encode_latents

    model_dir = Path(__file__).resolve().parents[1] / "examples" / "models" / "uplift-taef2-bsds500" / "upscaler"
    model = UPLiFTLatentUpscaler.from_pretrained(model_dir).eval()
    vae = load_vae(shared_path("models", "taef2"))
    photo = sorted(shared_path("data", "bsds500", "test").glob("*.jpg"))[0]
    _, low = load_hr_lr(photo, 256, 64)
    image = pil_to_tensor(low)
    with torch.no_grad():
        latents = encode_latents(vae, image * 2 - 1)
    reference = run(model, latents, image, num_steps=2)
    apply_fast_inference(model, dtype=torch.bfloat16, compile=False)
    fast = run(model, latents, image, num_steps=2)
    remove_fast_inference(model)
    assert rel_l2(fast, reference) < 1e-2


def test_fast_encoder_precision_by_group():
    """The fast encoder pass: maps stored in bf16; the first group in float32 (no autocast);
    a float32 stream through the narrower groups; a bf16 stream in the widest ones."""
    model = make_small_upscaler(encoder_blocks_per_group=2)
    _, image = inputs()
    state = apply_fast_inference(model, dtype=torch.bfloat16, compile=False, channels_last=False)
    assert state.half_stream_from == 3  # widths (8, 16, 16, 32, 32): the first 32-wide group
    with torch.no_grad():
        reference = model.encoder(image)
        maps = state.encode(image, 1)
        group0 = model.encoder.groups[0](image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            group1 = model.encoder.groups[1](group0)
            group3 = model.encoder.groups[3](model.encoder.groups[2](group1).bfloat16())
    assert all(f.dtype == torch.bfloat16 for f in maps)
    assert torch.equal(maps[0], reference[0].bfloat16())  # float32 computation, rounded once
    assert group1.dtype == torch.float32 and torch.equal(maps[1], group1.bfloat16())
    assert group3.dtype == torch.bfloat16 and torch.equal(maps[3], group3)
    assert all(0 < rel_l2(m.float(), r) < 2e-2 for m, r in zip(maps[1:], reference[1:]))
