"""End-to-end latency of latent super-resolution: UPLiFT against bilinear latent upsampling
(the paper's Fig. 11 / Table 4: 256 -> 1024; on an A100 UPLiFT takes 271 ms, 13% more than
bilinear). Commands: ``docs/evaluation.md``.

Each method maps a batch of ``--lr-size`` images (random pixels: latency does not depend on the
content) to ``--upscale-factor`` times their size as the evaluation's rows do: VAE encode ->
UPLiFT or bilinear latent interpolation -> VAE decode [-> colour correction: part of UPLiFT; the
baseline only with ``--color-correct-baselines``, as in the paper]. Both share the same
(compiled, unless ``--no-compile``) encoder and decoder.

``--warmup`` untimed rounds, then ``--iters`` rounds, each running both methods in turn (the
order alternating), each call timed alone. Reported per method: mean (the paper's statistic),
median and standard deviation of the seconds per batch, and seconds per image; the UPLiFT /
bilinear ratio is the median of the per-round ratios (two times taken seconds apart: a machine
whose speed drifts, like a shared CPU, slows both alike), next to the ratio of the means.
``--random-weights`` times models of the real SD1.5 VAE / UPLiFT sizes without downloading.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from evaluation.arguments import check_at_least, load_upscaler, load_vae
from evaluation.benchmarks import common
from evaluation.benchmarks.sd15_sizes import SD15_VAE_CONFIG
from evaluation.sharding import LaunchMismatchError, require_one_process
from evaluation.smoke import add_smoke_test_argument, use_one_thread
from evaluation.tasks.latent_baseline import LatentInterpolationUpscaler, decode_and_correct
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID
from uplift_diffusers.utils.atomic_files import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parents[2] / "evaluation" / "results"
METHODS = ("uplift", "bilinear")
FACTORS = (2, 4, 8)
#: The paper's numbers (A100, SD1.5 VAE, 256 -> 1024): UPLiFT end to end, and its ratio to bilinear.
PAPER = {"uplift_s_per_image": 0.271, "uplift_over_bilinear": 1.13, "device": "NVIDIA A100"}


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="End-to-end latency of 4x latent super-resolution, UPLiFT vs bilinear latent upsampling (Fig. 11 / Table 4)."
    )
    parser.add_argument("--vae", default=SD15_MODEL_ID, help=f"VAE folder / Hub id / TAESD-family folder (default {SD15_MODEL_ID})")
    parser.add_argument("--upscaler", default=UPLIFT_SD15_REPO_ID, help=f"UPLiFT folder, Hub id or the authors' file (default {UPLIFT_SD15_REPO_ID})")
    parser.add_argument("--random-weights", action="store_true", help="no weights: random models of the SD1.5 VAE / official UPLiFT sizes")
    parser.add_argument("--lr-size", type=int, default=256, help="input image side (default 256)")
    parser.add_argument("--upscale-factor", type=int, default=4, choices=FACTORS, help="upscaling factor (default 4)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3; compiling happens there)")
    parser.add_argument("--iters", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--color-correct-baselines", action="store_true", help="colour-correct the bilinear row too (the paper does not)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile the VAE encoder and decoder and UPLiFT (default on, as the paper; --no-compile: eager)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: its default; the authors use max-autotune on GPUs)")
    parser.add_argument("--dtype", choices=tuple(common.DTYPES), default="float32", help="model dtype (default float32, as the paper)")
    parser.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU; default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input images and of random weights")
    parser.add_argument("--note", default="", help="free text stored in the results")
    parser.add_argument("--output", type=Path, default=None,
                        help="results JSON; the table goes to the same path with .md (default "
                        "evaluation/results/benchmark_sr_latency.json; with --smoke-test a temporary folder)")
    add_smoke_test_argument(parser)
    return parser


def _check_args(args) -> None:
    check_at_least(args, {"lr_size": 1, "batch_size": 1, "iters": 1, "warmup": 0, "threads": 1})
    if args.output.suffix != ".json":
        raise ValueError(f"--output must end in .json (the table is written beside it as .md), got {str(args.output)!r}.")


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
def load_models(args, dtype: torch.dtype):
    """(vae, upscaler) from ``--vae`` / ``--upscaler``, or random models of the real sizes."""
    from diffusers import AutoencoderKL

    from uplift_diffusers import UPLiFTLatentUpscaler

    if args.smoke_test:
        from uplift_diffusers.utils import testing_utils

        torch.manual_seed(args.seed)
        vae, upscaler = testing_utils.make_kl_vae(), testing_utils.make_upscaler(seed=None)
    elif args.random_weights:
        torch.manual_seed(args.seed)
        vae, upscaler = AutoencoderKL(**SD15_VAE_CONFIG), UPLiFTLatentUpscaler()
        if dtype != torch.float32:
            vae, upscaler = vae.to(dtype=dtype), upscaler.to(dtype=dtype)
    else:
        vae = load_vae(args.vae, dtype, "--vae DIR or --random-weights")
        upscaler = load_upscaler(args.upscaler, None, dtype, "--upscaler DIR|FILE or --random-weights")
    return vae.eval(), upscaler.eval()


def compile_models(vae, upscaler, mode: Optional[str]) -> None:
    """``torch.compile`` in place (``nn.Module.compile``) the VAE's encoder and decoder and the upscaler."""
    for module in (vae.encoder, vae.decoder, upscaler):
        module.compile(mode=mode, dynamic=False)


@torch.no_grad()
def super_resolve(vae, upscaler, images: torch.Tensor, num_steps: int, color_correction: bool) -> torch.Tensor:
    """One end-to-end call: encode ``images`` (``B x 3 x h x w`` in [0, 1]), upscale the latents,
    decode and (``color_correction``) colour-correct against ``images``; ``B x 3 x 2^k h x 2^k w`` in [0, 1]."""
    from uplift_diffusers.loaders import encode_latents

    latents = encode_latents(vae, images * 2 - 1)
    upscaled = upscaler(latents, images.to(latents.dtype), num_steps=num_steps).sample
    return decode_and_correct(vae, upscaled, images, color_correction=color_correction)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def interleaved_times(calls: Dict[str, Callable[[], object]], warmup: int, iters: int, device: str) -> Dict[str, Dict[str, List[float]]]:
    """``{"wall": {name: seconds per call}, "cpu": {name: CPU seconds per call}}`` of
    :func:`evaluation.benchmarks.common.interleaved` (every function once per round, in turn)."""
    wall, cpu = common.interleaved(calls, iters, warmup, device)
    return {"wall": wall, "cpu": cpu}


def _median_ratio(times: Dict[str, List[float]]) -> float:
    return statistics.median(u / b for u, b in zip(times["uplift"], times["bilinear"]))


def summarise(measured: Dict[str, Dict[str, List[float]]], batch_size: int) -> Dict:
    """Per-method statistics and the UPLiFT / bilinear ratios of :func:`interleaved_times`' output.

    The headline numbers are wall-clock times (the paper's); ``uplift_over_bilinear_cpu`` is the
    same ratio from the process's CPU times, which a CPU shared with other work disturbs less."""
    times = measured["wall"]
    methods = {
        name: {
            "mean_s": statistics.fmean(values),
            "median_s": statistics.median(values),
            "std_s": statistics.pstdev(values),
            "mean_s_per_image": statistics.fmean(values) / batch_size,
            "times_s": [round(value, 5) for value in values],
            "cpu_times_s": [round(value, 5) for value in measured["cpu"][name]],
        }
        for name, values in times.items()
    }
    ratio = _median_ratio(times)
    return {
        "methods": methods,
        "uplift_over_bilinear": ratio,
        "uplift_over_bilinear_of_means": methods["uplift"]["mean_s"] / methods["bilinear"]["mean_s"],
        "uplift_extra_percent": 100 * (ratio - 1),
        "uplift_over_bilinear_cpu": _median_ratio(measured["cpu"]),
        "per_round_ratios": [round(u / b, 4) for u, b in zip(times["uplift"], times["bilinear"])],
    }


def prepare_smoke_test(args) -> None:
    """``--smoke-test``: tiny random models (:func:`load_models`), 64 -> 256 px, 1 warm-up and 2 timed rounds, eager."""
    import tempfile

    use_one_thread()
    if args.output is None:
        args.output = Path(tempfile.mkdtemp(prefix="uplift-smoke-sr-latency-")) / "results.json"
    args.lr_size, args.upscale_factor, args.batch_size, args.warmup, args.iters, args.compile = 64, 4, 1, 1, 2, False
    args.dtype, args.note = "float32", "--smoke-test: tiny random models, the times mean nothing"


def benchmark(args) -> Dict:
    """Run the protocol described by parsed ``args``; returns the results (also written to ``--output`` and .md)."""
    from uplift_diffusers.hooks import check_upscaler_matches_vae, vae_scale_factor

    require_one_process("evaluation.benchmarks.benchmark_sr_latency")
    if args.smoke_test:
        prepare_smoke_test(args)
    elif args.output is None:
        args.output = RESULTS_DIR / "benchmark_sr_latency.json"
    _check_args(args)
    device = common.default_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = common.DTYPES[args.dtype]
    vae, upscaler = load_models(args, dtype)
    check_upscaler_matches_vae(vae, upscaler)
    factor = vae_scale_factor(vae)
    if args.lr_size % factor:
        raise ValueError(f"--lr-size must be a multiple of the VAE's factor {factor}, got {args.lr_size}.")
    vae, upscaler = vae.to(device), upscaler.to(device)
    if args.compile:
        compile_models(vae, upscaler, args.compile_mode)
    num_steps = int(math.log2(args.upscale_factor))
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.rand((args.batch_size, 3, args.lr_size, args.lr_size), generator=generator).to(device=device, dtype=dtype)
    rows = {"uplift": (upscaler, True), "bilinear": (LatentInterpolationUpscaler("bilinear"), args.color_correct_baselines)}
    calls = {
        name: (lambda model=model, correct=correct: super_resolve(vae, model, images, num_steps, correct))
        for name, (model, correct) in rows.items()
    }
    times = interleaved_times(calls, args.warmup, args.iters, str(device))
    summary = summarise(times, args.batch_size)
    result = {
        "task": "sr_latency",
        "settings": {
            "vae": None if args.random_weights or args.smoke_test else args.vae,
            "upscaler": None if args.random_weights or args.smoke_test else args.upscaler,
            "random_weights": args.random_weights or args.smoke_test,
            "smoke_test": bool(args.smoke_test),
            "vae_class": type(vae).__name__,
            "upscaler_parameters": sum(p.numel() for p in upscaler.parameters()),
            "lr_size": args.lr_size,
            "output_size": args.lr_size * args.upscale_factor,
            "upscale_factor": args.upscale_factor,
            "color_correction": {name: correct for name, (_, correct) in rows.items()},
            "batch_size": args.batch_size,
            "warmup": args.warmup,
            "iters": args.iters,
            "compile": args.compile,
            "compile_mode": args.compile_mode,
            "dtype": args.dtype,
            "device": str(device),
            "device_name": common.device_name(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "torch": torch.__version__,
            "note": args.note,
            "command": getattr(args, "command", None),
        },
        **summary,
        "paper": PAPER,
    }
    atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.output.with_suffix(".md"), markdown(result) + "\n")
    return result


def markdown(result: Dict) -> str:
    """The results as a markdown table (Fig. 11 / Table 4 layout: seconds per image, ratio)."""
    settings, methods = result["settings"], result["methods"]
    what = (
        f"{settings['lr_size']} -> {settings['output_size']} ({settings['upscale_factor']}x), batch {settings['batch_size']}, "
        f"{settings['dtype']}, {'compiled' if settings['compile'] else 'eager'}, {settings['device_name']} ({settings['device']}), "
        f"{'random weights' if settings['random_weights'] else settings['vae_class']}; mean of {settings['iters']} rounds after "
        f"{settings['warmup']} warm-up"
    )
    corrected = [name for name, correct in settings["color_correction"].items() if correct]
    lines = [
        f"Super-resolution latency, end to end (encode, upscale, decode; colour correction: {', '.join(corrected)}): {what}",
        "",
        "| Method | s / image (mean) | s / batch (median) | std (s) |",
        "|---|---:|---:|---:|",
    ]
    labels = {"bilinear": "Bilinear latent upsampling", "uplift": "UPLiFT"}
    for name in ("bilinear", "uplift"):
        values = methods[name]
        lines.append(f"| {labels[name]} | {values['mean_s_per_image']:.4f} | {values['median_s']:.4f} | {values['std_s']:.4f} |")
    lines += [
        "",
        f"UPLiFT / bilinear: {result['uplift_over_bilinear']:.3f} (median of per-round ratios; "
        f"{result['uplift_extra_percent']:+.1f}%), {result['uplift_over_bilinear_of_means']:.3f} from the means, "
        f"{result['uplift_over_bilinear_cpu']:.3f} from CPU times (median). "
        f"Paper ({PAPER['device']}, SD1.5 VAE, 256 -> 1024): UPLiFT {PAPER['uplift_s_per_image'] * 1000:.0f} ms, "
        f"ratio {PAPER['uplift_over_bilinear']:.2f}.",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad argument or missing input)."""
    args = build_parser().parse_args(argv)
    args.command = "python -m evaluation.benchmarks.benchmark_sr_latency " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        result = benchmark(args)
    except (ValueError, OSError, LaunchMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown(result))
    print(f"results: {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
