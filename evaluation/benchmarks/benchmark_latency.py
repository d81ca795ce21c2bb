"""Latency of latent upscaling (commands and outputs: ``docs/evaluation.md``).

``text-to-image`` (the time columns of Tables 2-3): each stage of an SD1.5 + upscaling batch timed
separately; text encoding is left out (random prompt embeddings of the real shape) since it does
not depend on the method. ``super-resolution`` (Fig. 11 / Table 4, on an A100 UPLiFT takes 271 ms,
13% more than bilinear): encode -> UPLiFT or bilinear latents -> decode, both timed in turn every
round; the ratio is the median of the per-round ratios (why: :func:`common.interleaved`). Latency
does not depend on the weights, hence ``--random-weights`` (models of the real sizes, nothing downloaded).
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

from evaluation.arguments import attempt, check_at_least, load_upscaler, load_vae, loading
from evaluation.benchmarks import common
from evaluation.benchmarks.sd15_sizes import SD15_SCHEDULER_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG
from evaluation.reports.tables import write_report
from evaluation.sharding import require_one_process
from evaluation.smoke import add_smoke_test_argument, use_one_thread
from evaluation.tasks.latent_baseline import LATENT_BASELINES, LatentInterpolationUpscaler, decode_and_correct
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID
from uplift_diffusers.utils.color_correction import color_correct

TEXT_TOKENS = 77  # CLIP context of SD1.5
STAGES = ("unet", "vae_decode_base", "uplift", "bilinear", "nearest", "vae_decode_upscaled", "color_correction")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
#: The paper's numbers (A100, SD1.5 VAE, 256 -> 1024): UPLiFT end to end, and its ratio to bilinear.
PAPER = {"uplift_s_per_image": 0.271, "uplift_over_bilinear": 1.13, "device": "NVIDIA A100"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Latency of latent upscaling: text-to-image stages (Tables 2-3) "
                                     "or end-to-end super-resolution (Fig. 11 / Table 4).")
    modes = parser.add_subparsers(dest="mode", required=True, metavar="{text-to-image,super-resolution}")
    t2i = modes.add_parser("text-to-image", help="stage breakdown of SD1.5 + UPLiFT (the time columns of Tables 2-3)")
    t2i.add_argument("--output-dir", default=None, help="results.json and results.md go here (required unless --smoke-test)")
    t2i.add_argument("--dataset-name", default="coco", help="column label in the tables (coco: batch 4, relaion: batch 1)")
    t2i.add_argument("--model", default=SD15_MODEL_ID, help="Stable Diffusion folder or Hub id (UNet, VAE, scheduler)")
    t2i.add_argument("--upscaler", default=None, help="UPLiFT folder / Hub id / official checkpoint file (default: the authors' model)")
    t2i.add_argument("--upscaler-config", default=None, help="official YAML for an official checkpoint file")
    t2i.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    t2i.add_argument("--size", type=int, default=512, help="base image side (default 512)")
    t2i.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale")
    sr = modes.add_parser("super-resolution", help="end-to-end 4x latent super-resolution, UPLiFT vs bilinear (Fig. 11 / Table 4)")
    sr.add_argument("--vae", default=SD15_MODEL_ID, help=f"VAE folder / Hub id / TAESD-family folder (default {SD15_MODEL_ID})")
    sr.add_argument("--upscaler", default=UPLIFT_SD15_REPO_ID, help=f"UPLiFT folder, Hub id or the authors' file (default {UPLIFT_SD15_REPO_ID})")
    sr.add_argument("--lr-size", type=int, default=256, help="input image side (default 256)")
    sr.add_argument("--color-correct-baselines", action="store_true", help="colour-correct the bilinear row too (the paper does not)")
    sr.add_argument("--compile-mode", default=None, help="torch.compile mode (default: its default; the authors use max-autotune on GPUs)")
    sr.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU; default: torch's)")
    sr.add_argument("--note", default="", help="free text stored in the results")
    sr.add_argument("--output", type=Path, default=None, help="results JSON; the table goes to the same path with .md (default "
                    "evaluation/results/benchmark_sr_latency.json; with --smoke-test a temporary folder)")
    for mode, batch_size, factor in ((t2i, 4, 2), (sr, 1, 4)):
        mode.add_argument("--random-weights", action="store_true", help="do not load weights: random models of the real sizes")
        mode.add_argument("--batch-size", type=int, default=batch_size, help=f"images per batch (default {batch_size})")
        mode.add_argument("--upscale-factor", type=int, default=factor, choices=(2, 4, 8), help=f"upscaling factor (default {factor})")
        mode.add_argument("--warmup", type=int, default=3, help="untimed batches / rounds first (default 3; compiling happens there)")
        mode.add_argument("--iters", type=int, default=10, help="timed batches / rounds (default 10)")
        mode.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                          help="torch.compile the models (default on, as the paper; --no-compile: eager)")
        mode.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="model dtype (default float32)")
        mode.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
        mode.add_argument("--seed", type=int, default=0, help="seed of the inputs and of random weights")
        add_smoke_test_argument(mode)
    return parser


def prepare_smoke_test(args) -> None:
    """``--smoke-test``: the tiny random models, 1 warm-up and 2 timed batches / rounds of 1, eager;
    text-to-image at 64 px with 2 steps, super-resolution 64 -> 256 px."""
    use_one_thread()
    args.warmup, args.iters, args.batch_size, args.compile, args.dtype = 1, 2, 1, False, "float32"
    if args.mode == "super-resolution":
        args.output = args.output or Path(tempfile.mkdtemp(prefix="uplift-smoke-sr-latency-")) / "results.json"
        args.lr_size, args.upscale_factor = 64, 4
        args.note = "--smoke-test: tiny random models, the times mean nothing"
        return
    args.output_dir = args.output_dir or tempfile.mkdtemp(prefix="uplift-smoke-latency-")
    args.size, args.steps, args.upscale_factor = 64, 2, 2


def random_models(device: torch.device, dtype: torch.dtype, tiny: bool, seed: int, unet: bool = True) -> List[torch.nn.Module]:
    """[unet (when ``unet``),] vae and upscaler with random weights, built directly on ``device``: of
    the real SD1.5 / UPLiFT sizes, or (``tiny``, ``--smoke-test``) the tiny models of
    :mod:`uplift_diffusers.utils.testing_utils`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from uplift_diffusers import UPLiFTLatentUpscaler
    from uplift_diffusers.utils import testing_utils

    if tiny:
        builders = [testing_utils.make_unet, testing_utils.make_kl_vae, lambda: testing_utils.make_upscaler(seed=None)]
    else:
        builders = [lambda: UNet2DConditionModel(**SD15_UNET_CONFIG), lambda: AutoencoderKL(**SD15_VAE_CONFIG), UPLiFTLatentUpscaler]
    if not unet:
        builders = builders[1:]
    torch.manual_seed(seed)
    with torch.device(device):
        models = [build().eval() for build in builders]
    # diffusers warns on every to(dtype=...), a no-op one included
    return models if dtype == torch.float32 else [model.to(dtype=dtype) for model in models]


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


def text_to_image(args, device: torch.device, dtype: torch.dtype) -> Dict:
    """The text-to-image mode; returns the results (also written to ``--output-dir``)."""
    from diffusers import PNDMScheduler

    if not args.output_dir:
        raise ValueError("--output-dir is required (or pass --smoke-test to check the installation).")
    check_at_least(args, {"steps": 1, "size": 1})
    if args.size % 8:
        raise ValueError(f"--size must be a multiple of 8 (the VAE factor), got {args.size}.")
    random_weights = args.random_weights or args.smoke_test
    reason = "--smoke-test (tiny models)" if args.smoke_test else "--random-weights"
    if not random_weights:
        try:
            unet, vae, scheduler, upscaler = pretrained_models(args, device, dtype)
        except FileNotFoundError as error:
            random_weights, reason = True, f"weights unavailable ({error})"
            print(f"note: {reason}; timing models of the real SD1.5 / UPLiFT sizes with random weights.", file=sys.stderr)
    if random_weights:
        unet, vae, upscaler = random_models(device, dtype, args.smoke_test, args.seed)
        scheduler = PNDMScheduler(**SD15_SCHEDULER_CONFIG)
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


@torch.no_grad()
def super_resolve(vae, upscaler, images: torch.Tensor, num_steps: int, color_correction: bool) -> torch.Tensor:
    """Encode ``images`` (``B x 3 x h x w`` in [0, 1]), upscale the latents, decode and (``color_correction``)
    colour-correct against ``images``."""
    from uplift_diffusers.loaders import encode_latents

    latents = encode_latents(vae, images * 2 - 1)
    upscaled = upscaler(latents, images.to(latents.dtype), num_steps=num_steps).sample
    return decode_and_correct(vae, upscaled, images, color_correction=color_correction)


def super_resolution(args, device: torch.device, dtype: torch.dtype) -> Dict:
    """The super-resolution mode; returns the results (also written to ``--output`` and .md)."""
    from uplift_diffusers.hooks import guard_latent_space, vae_scale_factor

    args.output = args.output or RESULTS_DIR / "benchmark_sr_latency.json"
    check_at_least(args, {"lr_size": 1, "threads": 1})
    if args.output.suffix != ".json":
        raise ValueError(f"--output must end in .json (the table is written beside it as .md), got {str(args.output)!r}.")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    random_weights = args.random_weights or args.smoke_test
    if random_weights:
        vae, upscaler = random_models(device, dtype, args.smoke_test, args.seed, unet=False)
    else:
        vae = load_vae(args.vae, dtype, "--vae DIR or --random-weights").to(device)
        upscaler = load_upscaler(args.upscaler, None, dtype, "--upscaler DIR|FILE or --random-weights").to(device)
    guard_latent_space(vae, upscaler, check=False)  # channels and pixels per latent; the space only warns
    factor = vae_scale_factor(vae)
    if args.lr_size % factor:
        raise ValueError(f"--lr-size must be a multiple of the VAE's factor {factor}, got {args.lr_size}.")
    if args.compile:
        for module in (vae.encoder, vae.decoder, upscaler):
            module.compile(mode=args.compile_mode, dynamic=False)
    num_steps = int(math.log2(args.upscale_factor))
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.rand((args.batch_size, 3, args.lr_size, args.lr_size), generator=generator).to(device=device, dtype=dtype)
    bilinear, color_correction = LatentInterpolationUpscaler("bilinear"), {"uplift": True, "bilinear": args.color_correct_baselines}
    calls = {
        "uplift": lambda: super_resolve(vae, upscaler, images, num_steps, color_correction["uplift"]),
        "bilinear": lambda: super_resolve(vae, bilinear, images, num_steps, color_correction["bilinear"]),
    }
    wall, cpu = common.interleaved(calls, args.iters, args.warmup, str(device))
    methods = {
        name: {
            "mean_s": statistics.fmean(times), "median_s": statistics.median(times), "std_s": statistics.pstdev(times),
            "mean_s_per_image": statistics.fmean(times) / args.batch_size,
            "times_s": [round(t, 5) for t in times], "cpu_times_s": [round(t, 5) for t in cpu[name]],
        }
        for name, times in wall.items()
    }
    ratio = common.median_ratio(wall["uplift"], wall["bilinear"], 4)
    flags = ("lr_size", "upscale_factor", "batch_size", "warmup", "iters", "compile", "compile_mode", "dtype", "note", "command")
    settings = {
        "vae": None if random_weights else args.vae, "upscaler": None if random_weights else args.upscaler,
        "random_weights": random_weights, "smoke_test": bool(args.smoke_test), "vae_class": type(vae).__name__,
        "upscaler_parameters": sum(p.numel() for p in upscaler.parameters()), "output_size": args.lr_size * args.upscale_factor,
        "color_correction": color_correction, **{name: getattr(args, name) for name in flags},
        "device": str(device), "device_name": common.device_name(device), "torch": torch.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
    }
    result = {
        "task": "sr_latency", "settings": settings, "methods": methods, "uplift_over_bilinear": ratio,
        "uplift_over_bilinear_of_means": methods["uplift"]["mean_s"] / methods["bilinear"]["mean_s"],
        "uplift_extra_percent": 100 * (ratio - 1), "uplift_over_bilinear_cpu": common.median_ratio(cpu["uplift"], cpu["bilinear"], 4),
        "per_round_ratios": [round(u / b, 4) for u, b in zip(wall["uplift"], wall["bilinear"])], "paper": PAPER,
    }
    common.write_results(args.output, result, sr_markdown(result) + "\n")
    return result


def sr_markdown(result: Dict) -> str:
    """The super-resolution results as a markdown table (Fig. 11 / Table 4 layout: seconds per image, ratio)."""
    settings, methods = result["settings"], result["methods"]
    corrected = ", ".join(name for name, correct in settings["color_correction"].items() if correct)
    lines = [
        f"Super-resolution latency, end to end (encode, upscale, decode; colour correction: {corrected}): "
        f"{settings['lr_size']} -> {settings['output_size']} ({settings['upscale_factor']}x), batch {settings['batch_size']}, "
        f"{settings['dtype']}, {'compiled' if settings['compile'] else 'eager'}, {settings['device_name']} ({settings['device']}), "
        f"{'random weights' if settings['random_weights'] else settings['vae_class']}; mean of {settings['iters']} rounds after "
        f"{settings['warmup']} warm-up",
        "",
        "| Method | s / image (mean) | s / batch (median) | std (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, label in (("bilinear", "Bilinear latent upsampling"), ("uplift", "UPLiFT")):
        values = methods[name]
        lines.append(f"| {label} | {values['mean_s_per_image']:.4f} | {values['median_s']:.4f} | {values['std_s']:.4f} |")
    lines += [
        "",
        f"UPLiFT / bilinear: {result['uplift_over_bilinear']:.3f} (median of per-round ratios; "
        f"{result['uplift_extra_percent']:+.1f}%), {result['uplift_over_bilinear_of_means']:.3f} from the means, "
        f"{result['uplift_over_bilinear_cpu']:.3f} from CPU times (median). "
        f"Paper ({PAPER['device']}, SD1.5 VAE, 256 -> 1024): UPLiFT {PAPER['uplift_s_per_image'] * 1000:.0f} ms, "
        f"ratio {PAPER['uplift_over_bilinear']:.2f}.",
    ]
    return "\n".join(lines)


def benchmark(args) -> Dict:
    """Run the mode of parsed ``args``; returns the results (also written to disk)."""
    require_one_process("evaluation.benchmarks.benchmark_latency")
    if args.smoke_test:
        prepare_smoke_test(args)
    check_at_least(args, {"batch_size": 1, "iters": 1, "warmup": 0})
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = text_to_image if args.mode == "text-to-image" else super_resolution
    return run(args, device, DTYPES[args.dtype])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad argument or missing input)."""
    args = build_parser().parse_args(argv)
    args.command = "python -m evaluation.benchmarks.benchmark_latency " + " ".join(sys.argv[1:] if argv is None else argv)
    result, status = attempt(lambda: benchmark(args))
    if status:
        return status
    if args.mode == "text-to-image":
        print((Path(args.output_dir) / "results.md").read_text(encoding="utf-8"))
        print(f"note: {result['note']}")
    else:
        print(sr_markdown(result))
        print(f"results: {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
