"""Latency of latent upscaling (commands and outputs: ``docs/evaluation.md``).

``text-to-image`` (the time columns of Tables 2-3): each stage of an SD1.5 + upscaling batch timed
separately; text encoding is left out (random prompt embeddings of the real shape) since it does
not depend on the method. Latency does not depend on the weights, hence ``--random-weights``
(models of the real sizes, nothing downloaded).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from evaluation.arguments import attempt, check_at_least, load_upscaler, loading
from evaluation.benchmarks import common
from evaluation.benchmarks.sd15_sizes import SD15_SCHEDULER_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG
from evaluation.reports.tables import write_report
from evaluation.sharding import require_one_process
from evaluation.smoke import add_smoke_test_argument, use_one_thread
from evaluation.tasks.latent_baseline import LATENT_BASELINES, LatentInterpolationUpscaler
from uplift_diffusers.constants import SD15_MODEL_ID
from uplift_diffusers.utils.color_correction import color_correct

TEXT_TOKENS = 77  # CLIP context of SD1.5
STAGES = ("unet", "vae_decode_base", "uplift", "bilinear", "nearest", "vae_decode_upscaled", "color_correction")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Latency of latent upscaling: the text-to-image stages (Tables 2-3).")
    modes = parser.add_subparsers(dest="mode", required=True, metavar="{text-to-image}")
    t2i = modes.add_parser("text-to-image", help="stage breakdown of SD1.5 + UPLiFT (the time columns of Tables 2-3)")
    t2i.add_argument("--output-dir", default=None, help="results.json and results.md go here (required unless --smoke-test)")
    t2i.add_argument("--dataset-name", default="coco", help="column label in the tables (coco: batch 4, relaion: batch 1)")
    t2i.add_argument("--model", default=SD15_MODEL_ID, help="Stable Diffusion folder or Hub id (UNet, VAE, scheduler)")
    t2i.add_argument("--upscaler", default=None, help="UPLiFT folder / Hub id / official checkpoint file (default: the authors' model)")
    t2i.add_argument("--upscaler-config", default=None, help="official YAML for an official checkpoint file")
    t2i.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    t2i.add_argument("--size", type=int, default=512, help="base image side (default 512)")
    t2i.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale")
    t2i.add_argument("--random-weights", action="store_true", help="do not load weights: random models of the real sizes")
    t2i.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    t2i.add_argument("--upscale-factor", type=int, default=2, choices=(2, 4, 8), help="upscaling factor (default 2)")
    t2i.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3; compiling happens there)")
    t2i.add_argument("--iters", type=int, default=10, help="timed batches (default 10)")
    t2i.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                     help="torch.compile the models (default on, as the paper; --no-compile: eager)")
    t2i.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="model dtype (default float32)")
    t2i.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    t2i.add_argument("--seed", type=int, default=0, help="seed of the inputs and of random weights")
    add_smoke_test_argument(t2i)
    return parser


def _check_args(args) -> None:
    if not args.output_dir:
        raise ValueError("--output-dir is required (or pass --smoke-test to check the installation).")
    check_at_least(args, {"batch_size": 1, "iters": 1, "warmup": 0, "steps": 1, "size": 1})
    if args.size % 8:
        raise ValueError(f"--size must be a multiple of 8 (the VAE factor), got {args.size}.")


def prepare_smoke_test(args) -> None:
    """``--smoke-test``: the tiny random models, 1 warm-up and 2 timed batches of 1, eager, at 64 px with 2 steps."""
    use_one_thread()
    args.warmup, args.iters, args.batch_size, args.compile, args.dtype = 1, 2, 1, False, "float32"
    args.output_dir = args.output_dir or tempfile.mkdtemp(prefix="uplift-smoke-latency-")
    args.size, args.steps, args.upscale_factor = 64, 2, 2


def random_models(device: torch.device, dtype: torch.dtype, tiny: bool, seed: int):
    """(unet, vae, scheduler, upscaler) with random weights, built directly on ``device``: of the real
    SD1.5 / UPLiFT sizes, or (``tiny``, ``--smoke-test``) the tiny models of
    :mod:`uplift_diffusers.utils.testing_utils`."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    from uplift_diffusers import UPLiFTLatentUpscaler
    from uplift_diffusers.utils import testing_utils

    torch.manual_seed(seed)
    with torch.device(device):
        if tiny:
            unet, vae, upscaler = testing_utils.make_unet(), testing_utils.make_kl_vae(), testing_utils.make_upscaler(seed=None)
        else:
            unet, vae, upscaler = UNet2DConditionModel(**SD15_UNET_CONFIG), AutoencoderKL(**SD15_VAE_CONFIG), UPLiFTLatentUpscaler()
    scheduler = PNDMScheduler(**SD15_SCHEDULER_CONFIG)
    if dtype != torch.float32:
        unet, vae, upscaler = unet.to(dtype=dtype), vae.to(dtype=dtype), upscaler.to(dtype=dtype)
    return unet.eval(), vae.eval(), scheduler, upscaler.eval()


def pretrained_models(args, device: torch.device, dtype: torch.dtype):
    """(unet, vae, scheduler, upscaler) loaded from ``--model`` / ``--upscaler``; FileNotFoundError
    when one cannot be loaded (offline and not cached, a wrong path)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    def load():
        unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae", torch_dtype=dtype)
        scheduler = PNDMScheduler.from_pretrained(args.model, subfolder="scheduler")
        return unet, vae, scheduler

    unet, vae, scheduler = loading("the Stable Diffusion model", args.model, "--model DIR or --random-weights", load)
    upscaler = load_upscaler(args.upscaler, args.upscaler_config, dtype, "--upscaler DIR|FILE or --random-weights")
    return unet.to(device).eval(), vae.to(device).eval(), scheduler, upscaler.to(device).eval()


def _unit(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def run_batch(models, args, device, dtype, generator: torch.Generator, random_weights: bool) -> Dict[str, float]:
    """One batch through every stage (denoise, base decode, each upscaler, upscaled decode, colour
    correction); returns the wall-clock seconds of each stage."""
    times = {}

    def timed(stage: str, function: Callable[[], torch.Tensor]) -> torch.Tensor:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # work queued before the stage stays out of its time
        result = []
        times[stage] = common.time_call(lambda: result.append(function()), device)[0]
        return result[0]

    unet, vae, scheduler, upscaler, decode = models
    batch, latent_size = args.batch_size, args.size // 8
    latents = torch.randn((batch, 4, latent_size, latent_size), generator=generator).to(device=device, dtype=dtype)
    embeddings = torch.randn((2 * batch, TEXT_TOKENS, unet.config.cross_attention_dim), generator=generator).to(device=device, dtype=dtype)
    scheduler.set_timesteps(args.steps, device=device)
    latents = latents * scheduler.init_noise_sigma

    def denoise():
        x = latents
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
            noise = unet(model_input, t, encoder_hidden_states=embeddings).sample
            uncond, text = noise.chunk(2)
            x = scheduler.step(uncond + args.guidance_scale * (text - uncond), t, x).prev_sample
        return x

    final = timed("unet", denoise)
    if random_weights:  # random weights may overflow; keep later stages on finite values (untimed)
        final = torch.nan_to_num(final).clamp(-10, 10)
    unscaled = final / vae.config.scaling_factor
    base = timed("vae_decode_base", lambda: _unit(decode(unscaled)))
    if random_weights:
        base = torch.nan_to_num(base)
    num_steps = int(math.log2(args.upscale_factor))
    upscaled = timed("uplift", lambda: upscaler(unscaled, base.to(dtype), num_steps=num_steps, generator=generator).sample)
    for mode in LATENT_BASELINES:
        baseline = LatentInterpolationUpscaler(mode)
        timed(mode, lambda: baseline(unscaled, num_steps=num_steps).sample)
    if random_weights:
        upscaled = torch.nan_to_num(upscaled).clamp(-10, 10)
    image = timed("vae_decode_upscaled", lambda: _unit(decode(upscaled)))
    if random_weights:
        image = torch.nan_to_num(image)
    timed("color_correction", lambda: color_correct(image, base))
    return times


def text_to_image(args) -> Dict:
    """The text-to-image mode of parsed ``args``; returns the results (also written to ``--output-dir``)."""
    require_one_process("evaluation.benchmarks.benchmark_latency")
    if args.smoke_test:
        prepare_smoke_test(args)
    _check_args(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    random_weights = args.random_weights or args.smoke_test
    reason = "--smoke-test (tiny models)" if args.smoke_test else "--random-weights"
    if not random_weights:
        try:
            unet, vae, scheduler, upscaler = pretrained_models(args, device, dtype)
        except FileNotFoundError as error:
            random_weights, reason = True, f"weights unavailable ({error})"
            print(f"note: {reason}; timing models of the real SD1.5 / UPLiFT sizes with random weights.", file=sys.stderr)
    if random_weights:
        unet, vae, scheduler, upscaler = random_models(device, dtype, args.smoke_test, args.seed)
    decode = lambda latents: vae.decode(latents).sample  # noqa: E731
    if args.compile:
        unet = torch.compile(unet)
        decode = torch.compile(decode)
        upscaler = torch.compile(upscaler)
    models = (unet, vae, scheduler, upscaler, decode)
    generator = torch.Generator().manual_seed(args.seed)
    samples: Dict[str, List[float]] = {stage: [] for stage in STAGES}
    for iteration in range(args.warmup + args.iters):
        times = run_batch(models, args, device, dtype, generator, random_weights)
        if iteration >= args.warmup:
            for stage in STAGES:
                samples[stage].append(times[stage])

    stages = {stage: statistics.fmean(values) for stage, values in samples.items()}
    base = stages["unet"] + stages["vae_decode_base"]
    upscaled_tail = stages["vae_decode_upscaled"] + stages["color_correction"]
    methods = {"base512": base}
    for method in ("uplift",) + LATENT_BASELINES:
        methods[method] = base + stages[method] + upscaled_tail
    flags = ("batch_size", "steps", "size", "upscale_factor", "guidance_scale", "warmup", "iters", "compile", "dtype")
    note = "pretrained weights"
    if random_weights:
        note = f"random weights of the real model sizes ({reason}); latency does not depend on the weights"
    if args.smoke_test:
        note = "--smoke-test: tiny random models, the times mean nothing"
    settings = {
        **{name: getattr(args, name) for name in flags}, "device": str(device), "device_name": common.device_name(device),
        "torch": torch.__version__, "model": None if random_weights else args.model,
        "upscaler": None if random_weights else args.upscaler, "smoke_test": bool(args.smoke_test),
    }
    result = {
        "task": "latency", "dataset": args.dataset_name, "settings": settings, "random_weights": random_weights, "note": note,
        "parameters": {name: sum(p.numel() for p in model.parameters()) for name, model in (("unet", unet), ("vae", vae), ("upscaler", upscaler))},
        "stages": stages, "stages_std": {stage: statistics.pstdev(values) for stage, values in samples.items()}, "methods": methods,
        "seconds_per_image": {method: value / args.batch_size for method, value in methods.items()},
    }
    write_report(result, args.output_dir)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad argument or missing input)."""
    args = build_parser().parse_args(argv)
    result, status = attempt(lambda: text_to_image(args))
    if status:
        return status
    print((Path(args.output_dir) / "results.md").read_text(encoding="utf-8"))
    print(f"note: {result['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
