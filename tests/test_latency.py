"""Latency protocols of evaluation.benchmarks.benchmark_latency: the end-to-end super-resolution
timing (the paper's Fig. 11 / Table 4) and the compile default of both modes."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from evaluation.benchmarks import benchmark_latency, common


def _argv(tiny_dirs, out: Path, *extra):
    """The tiny SD pipeline's 8x VAE and a 4-channel upscaler without noise (its output is recomputed below)."""
    vae, upscaler = tiny_dirs.sd_pipeline() / "vae", tiny_dirs.upscaler(4, noise_scale=0.0)
    return ["super-resolution", "--vae", str(vae), "--upscaler", str(upscaler), "--lr-size", "32", "--warmup", "1", "--iters", "3",
            "--no-compile", "--output", str(out), *extra]


def test_compile_is_on_by_default_as_in_the_paper():
    parser = benchmark_latency.build_parser()
    for required in (["super-resolution"], ["text-to-image", "--output-dir", "x"]):
        assert parser.parse_args(required).compile is True
        assert parser.parse_args(required + ["--no-compile"]).compile is False
    defaults = parser.parse_args(["super-resolution"])
    assert (defaults.lr_size, defaults.upscale_factor, defaults.warmup, defaults.iters, defaults.dtype) == (256, 4, 3, 10, "float32")


def test_rounds_alternate_and_each_time_goes_to_the_method_that_ran(monkeypatch):
    order, clock = [], iter([1.0, 2.0, 4.0, 2.0, 1.0, 3.0, 6.0, 2.0])  # uplift, bilinear per round (order below)

    def fake_time_call(fn, device):
        fn()
        wall = next(clock)
        return wall, 10 * wall if order[-1] == "uplift" else wall  # CPU times: UPLiFT 10x its wall time

    monkeypatch.setattr(common, "time_call", fake_time_call)
    calls = {"uplift": lambda: order.append("uplift"), "bilinear": lambda: order.append("bilinear")}
    wall, cpu = common.interleaved(calls, 4, 2, "cpu")
    # 2 untimed rounds, then the timed rounds with the order reversed every other round
    assert order == ["uplift", "bilinear"] * 2 + ["uplift", "bilinear", "bilinear", "uplift"] * 2
    assert wall == {"uplift": [1.0, 2.0, 1.0, 2.0], "bilinear": [2.0, 4.0, 3.0, 6.0]}
    assert cpu == {"uplift": [10.0, 20.0, 10.0, 20.0], "bilinear": [2.0, 4.0, 3.0, 6.0]}


def test_sr_latency_end_to_end_run(tmp_path, tiny_dirs, monkeypatch):
    from uplift_diffusers.utils.color_correction import color_correct
    from uplift_diffusers.loaders import decode_latents, encode_latents

    seen = []
    original = benchmark_latency.super_resolve

    def spy(vae, upscaler, images, num_steps, color_correction):
        output = original(vae, upscaler, images, num_steps, color_correction)
        seen.append((type(upscaler).__name__, tuple(images.shape), num_steps, color_correction, output))
        return output

    monkeypatch.setattr(benchmark_latency, "super_resolve", spy)
    out = tmp_path / "sr" / "latency.json"
    assert benchmark_latency.main(_argv(tiny_dirs, out, "--batch-size", "2", "--threads", "1")) == 0
    result = json.loads(out.read_text())
    for name in ("uplift", "bilinear"):
        assert len(result["methods"][name]["times_s"]) == 3 and all(t > 0 for t in result["methods"][name]["times_s"])
    # the headline ratio is a paired one: the median of the per-round ratios of the interleaved rounds
    ratios = [u / b for u, b in zip(result["methods"]["uplift"]["times_s"], result["methods"]["bilinear"]["times_s"])]
    assert result["uplift_over_bilinear"] == pytest.approx(statistics.median(ratios), rel=1e-3)
    # (1 warm-up + 3 timed) rounds of both methods (the 2nd timed round in reverse order),
    # 2 UPLiFT steps for 4x, 32 -> 128 px
    assert [name[0] for name, *_ in seen] == list("ULULLUUL")
    assert {(shape, steps) for _, shape, steps, _, _ in seen} == {((2, 3, 32, 32), 2)}
    assert all(output.shape == (2, 3, 128, 128) for *_, output in seen)
    # the rows are exactly encode -> UPLiFT (2 steps) -> decode -> colour correction, and
    # encode -> bilinear latents -> decode (no colour correction), on the seeded input
    from diffusers import AutoencoderKL

    from uplift_diffusers import UPLiFTLatentUpscaler

    vae = AutoencoderKL.from_pretrained(str(tiny_dirs.sd_pipeline() / "vae")).eval()
    upscaler = UPLiFTLatentUpscaler.from_pretrained(str(tiny_dirs.upscaler(4, noise_scale=0.0))).eval()
    images = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = encode_latents(vae, images * 2 - 1)
        bilinear = (decode_latents(vae, torch.nn.functional.interpolate(latents, scale_factor=4, mode="bilinear")) / 2 + 0.5).clamp(0, 1)
        uplift = color_correct((decode_latents(vae, upscaler(latents, images, num_steps=2).sample) / 2 + 0.5).clamp(0, 1), images)
    outputs = {name: output for name, *_, output in seen}
    assert torch.allclose(outputs["LatentInterpolationUpscaler"], bilinear, atol=1e-5)
    assert torch.allclose(outputs["UPLiFTLatentUpscaler"], uplift, atol=1e-5)
    assert not torch.allclose(uplift, bilinear, atol=1e-2)


def test_sr_latency_compiles_the_encoder_decoder_and_upscaler(tmp_path, tiny_dirs, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compiled.append((type(self).__name__, kwargs)))
    out = tmp_path / "latency.json"
    argv = [a for a in _argv(tiny_dirs, out, "--compile-mode", "max-autotune", "--iters", "1") if a != "--no-compile"]
    assert benchmark_latency.main(argv) == 0
    assert compiled == [(name, {"mode": "max-autotune", "dynamic": False}) for name in ("Encoder", "Decoder", "UPLiFTLatentUpscaler")]


def test_sr_latency_rejects_bad_inputs(tmp_path, tiny_dirs, capsys):
    out = tmp_path / "latency.json"
    assert benchmark_latency.main(_argv(tiny_dirs, out, "--lr-size", "36")) == 2
    assert "--lr-size must be a multiple of the VAE's factor 8, got 36" in capsys.readouterr().err
    argv = _argv(tiny_dirs, out)
    argv[argv.index("--upscaler") + 1] = str(tiny_dirs.upscaler(32))
    assert benchmark_latency.main(argv) == 2
    assert "latent_channels=32" in capsys.readouterr().err
    assert benchmark_latency.main(_argv(tiny_dirs, out, "--iters", "0")) == 2
    assert "--iters must be >= 1, got 0" in capsys.readouterr().err
    assert benchmark_latency.main(_argv(tiny_dirs, tmp_path / "latency.txt")) == 2
    assert "--output must end in .json" in capsys.readouterr().err
    assert not out.exists()
