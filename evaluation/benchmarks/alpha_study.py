"""Transparency: how to upscale alpha, and which colour to feed the VAE under it.
Command: ``docs/evaluation.md``; the recorded run is ``evaluation/results/alpha_study.{json,md}``.

The numbers behind :func:`uplift_diffusers.image_processor.upscale_alpha` (Lanczos, clamped to
the 3 x 3 input neighbourhood) and :func:`~uplift_diffusers.image_processor.fill_transparent`
(the push-pull fill fed to the VAE), quoted in the README.

Data: the first ``--num-images`` images of ``--data``, centre square crop resized to
``--hr-size`` (HR colour), with three synthetic soft alpha masks each: ``content`` (pixels close
in colour to the centre, blurred: a soft cut-out), ``cutout`` (that mask thresholded and lightly
blurred: an antialiased hard cut) and ``ellipse`` (a feathered ellipse: a vignette). LR =
premultiplied antialiased bilinear downsampling by ``--factor``, un-premultiplied and quantised
to 8 bits as a PNG stores it. The colour is upscaled by ``UPLiFTSuperResolutionPipeline``
(colour correction on, no back-projection: the paper's output).

Reported: (1) alpha resampling: alpha PSNR, the mean absolute error (x 255) in the edge band
(HR alpha in (0.02, 0.98), dilated 2 px) and the share of solid (alpha 0 or 1) pixels the 8-bit
upscaled alpha gets wrong; (2) colour under alpha: PSNR of the upscaled RGBA composited over
white, black and grey (whole image and edge band), and the mean of the composite over white
where HR alpha is 0 (ideally 255).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from evaluation.arguments import check_at_least
from evaluation.benchmarks.any_size_study import REPO_ROOT, add_study_arguments
from evaluation.arguments import load_upscaler, load_vae
from evaluation.sharding import LaunchMismatchError, require_one_process
from evaluation.smoke import prepare_smoke_study
from uplift_diffusers.image_processor import fill_transparent, list_images, pil_to_tensor, upscale_alpha
from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline
from uplift_diffusers.utils.atomic_files import atomic_write_text
from uplift_diffusers.utils.sr_protocol import centre_crop

DEFAULT_OUTPUT = REPO_ROOT / "evaluation" / "results" / "alpha_study.json"
MASKS = ("content", "cutout", "ellipse")
BACKGROUNDS = {"white": 1.0, "black": 0.0, "grey": 0.5}
#: Smoke-test sizes: 2 synthetic images, 64 px HR, 4x.
SMOKE_IMAGES, SMOKE_HR_SIZE = 2, 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser, "alpha_study")
    parser.add_argument("--num-images", type=int, default=12, help="the first N images (sorted by name); default 12")
    parser.add_argument("--hr-size", type=int, default=256, help="HR side in pixels (default 256)")
    parser.add_argument("--factor", type=int, default=4, help="upscale factor, a power of two (default 4)")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError (one line, naming the argument) for bad values."""
    check_at_least(args, {"num_images": 1})
    if args.factor < 2 or args.factor & (args.factor - 1):
        raise ValueError(f"--factor must be a power of two >= 2, got {args.factor}.")
    if args.hr_size % args.factor or args.hr_size < 8 * args.factor:
        raise ValueError(f"--hr-size must be a multiple of --factor {args.factor} and at least {8 * args.factor}, got {args.hr_size}.")
    if not str(args.output).endswith(".json"):
        raise ValueError(f"--output must end in .json (the tables are written beside it as .md), got {str(args.output)!r}.")
    if not Path(args.data).is_dir():
        raise ValueError(f"--data {str(args.data)!r} is not a folder (set UPLIFT_SHARED_DIR or pass --data).")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def load_hr(path: Path, size: int) -> torch.Tensor:
    """``1 x 3 x size x size``: the centre square crop of the image, PIL bicubic to ``size``."""
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    return pil_to_tensor(centre_crop(image, min(image.size)).resize((size, size), Image.BICUBIC))


def masks_for(rgb: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The three HR alpha masks (``1 x 1 x H x W``) of the ``1 x 3 x H x W`` image ``rgb``."""
    size = rgb.shape[-1]
    blurred = gaussian_blur(rgb, 13, 3.0)
    lo, hi = size // 2 - size // 8, size // 2 + size // 8
    centre = blurred[..., lo:hi, lo:hi].mean(dim=(2, 3), keepdim=True)
    dist = (blurred - centre).norm(dim=1, keepdim=True)
    threshold = torch.quantile(dist.flatten(), 0.4)
    content = gaussian_blur(torch.sigmoid((threshold - dist) / 0.03), 7, 1.0)
    cutout = gaussian_blur((content > 0.5).float(), 5, 0.8)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    radius = ((yy / 0.75) ** 2 + (xx / 0.55) ** 2).sqrt()
    ellipse = ((1.0 - radius) / 0.25).clamp(0, 1)[None, None]
    return {"content": content, "cutout": cutout, "ellipse": ellipse}


def to_lr(colour: torch.Tensor, alpha: torch.Tensor, size: int):
    """(colour, alpha) at ``size``: premultiplied antialiased bilinear, un-premultiplied, 8-bit."""
    down = lambda x: F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    alpha_lr = (down(alpha) * 255).round() / 255
    premultiplied = down(colour * alpha)
    colour_lr = torch.where(alpha_lr > 0, premultiplied / alpha_lr.clamp_min(1e-6), torch.zeros_like(premultiplied)).clamp(0, 1)
    return (colour_lr * 255).round() / 255, alpha_lr


# --------------------------------------------------------------------------------------------
# Alpha candidates
# --------------------------------------------------------------------------------------------
def _box(radius: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: F.avg_pool2d(F.pad(x, [radius] * 4, mode="reflect"), 2 * radius + 1, stride=1)


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter of ``source`` with ``guide`` (both at the output size)."""
    box = _box(radius)
    mean_i, mean_p = box(guide), box(source)
    a = (box(guide * source) - mean_i * mean_p) / (box(guide * guide) - mean_i ** 2 + eps)
    b = mean_p - a * mean_i
    return (box(a) * guide + box(b)).clamp(0, 1)


def guided_upsample(guide_lr: torch.Tensor, guide_hr: torch.Tensor, alpha_lr: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Joint guided upsampling (the fast guided filter): linear coefficients of alpha on the LR
    luminance, bilinearly upsampled and applied to the luminance of the upscaled colour."""
    box = _box(radius)
    mean_i, mean_p = box(guide_lr), box(alpha_lr)
    a = (box(guide_lr * alpha_lr) - mean_i * mean_p) / (box(guide_lr * guide_lr) - mean_i ** 2 + eps)
    b = mean_p - a * mean_i
    up = lambda x: F.interpolate(box(x), size=guide_hr.shape[-2:], mode="bilinear", align_corners=False)
    return (up(a) * guide_hr + up(b)).clamp(0, 1)


def lanczos(alpha: torch.Tensor, size: int) -> torch.Tensor:
    """Plain PIL Lanczos (float32), clamped to [0, 1]: ``upscale_alpha`` without its anti-ringing clamp."""
    image = Image.fromarray(alpha[0, 0].numpy().astype(np.float32), mode="F").resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(image).copy())[None, None].clamp(0, 1)


def alpha_candidates(alpha_lr: torch.Tensor, size: int, guide_lr: torch.Tensor, guide_hr: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Every alpha resampling compared, at ``size`` x ``size``; the guides are the luminance of the
    filled colour before (LR) and after (HR) the upscale."""
    resize = lambda mode, **kw: F.interpolate(alpha_lr, size=(size, size), mode=mode, **kw)
    bicubic = resize("bicubic", align_corners=False, antialias=True).clamp(0, 1)
    methods = {
        "nearest": resize("nearest"),
        "bilinear": resize("bilinear", align_corners=False),
        "bicubic (torch, a = -0.75)": bicubic,
        "Lanczos (PIL)": lanczos(alpha_lr, size),
        "Lanczos + anti-ringing clamp (upscale_alpha)": upscale_alpha(alpha_lr, (size, size)),
    }
    for radius in (1, 2):
        for eps in (1e-3, 1e-2):
            methods[f"guided filter on the upscaled colour r={radius} eps={eps:g}"] = guided_filter(guide_hr, bicubic, radius, eps)
    for radius in (1, 2):
        for eps in (1e-4, 1e-3, 1e-2):
            methods[f"guided upsampling r={radius} eps={eps:g}"] = guided_upsample(guide_lr, guide_hr, alpha_lr, radius, eps)
    return methods


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------
def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """PSNR in dB (data range 1) over all pixels, or over the pixels where ``mask`` (``1 x 1 x H x W``) is 1."""
    err = (pred - target) ** 2
    mse = err.mean() if mask is None else (err * mask).sum() / (mask.sum() * pred.shape[1]).clamp_min(1)
    return float(10 * torch.log10(1 / mse.clamp_min(1e-10)))


def composite(colour, alpha, background):
    return colour * alpha + background * (1 - alpha)


def study(pipe: UPLiFTSuperResolutionPipeline, files: Sequence[Path], hr_size: int, factor: int) -> Dict[str, Dict]:
    """``{"alpha": {method: {mask: {psnr, band_mae, solid_wrong}}}, "colour": {variant: {psnr, band_psnr, white_clear}}}``,
    means over the images."""
    lr_size = hr_size // factor
    alpha_values: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    colour_values: Dict[str, Dict[str, List[float]]] = {}

    def upscale(colour: torch.Tensor) -> torch.Tensor:
        return pipe(
            colour, upscale_factor=factor, generator=torch.Generator().manual_seed(0), output_type="pt", back_projection_steps=0
        ).images

    def score_colour(variant: str, colour: torch.Tensor, alpha: Optional[torch.Tensor], hr, a_hr, band, clear) -> None:
        values = colour_values.setdefault(variant, {"psnr": [], "band_psnr": [], "white_clear": []})
        for background in BACKGROUNDS.values():
            truth = composite(hr, a_hr, background)
            got = colour if alpha is None else composite(colour, alpha, background)
            values["psnr"].append(masked_psnr(got, truth))
            values["band_psnr"].append(masked_psnr(got, truth, band))
        if clear.sum() > 0:
            over_white = colour if alpha is None else composite(colour, alpha, 1.0)
            values["white_clear"].append(float((over_white * clear).sum() / (clear.sum() * 3) * 255))

    for file in files:
        hr = load_hr(file, hr_size)
        for mask_name, a_hr in masks_for(hr).items():
            c_lr, a_lr = to_lr(hr, a_hr, lr_size)
            band = F.max_pool2d(((a_hr > 0.02) & (a_hr < 0.98)).float(), 5, stride=1, padding=2)
            clear = (a_hr == 0).float()
            solid = (a_hr == 0) | (a_hr == 1)
            # ---- colour fed to the VAE
            filled = fill_transparent(c_lr, a_lr)
            fill_background = torch.where(a_lr < 1, (filled - a_lr * c_lr) / (1 - a_lr).clamp_min(1e-6), filled)
            fed = {"white": c_lr * a_lr + (1 - a_lr), "premultiplied": c_lr * a_lr, "unpremultiplied": c_lr, "filled": filled}
            background_of = {"white": torch.ones_like(c_lr), "premultiplied": torch.zeros_like(c_lr), "filled": fill_background}
            a_up = upscale_alpha(a_lr, (hr_size, hr_size))
            outputs = {}
            for name, colour in fed.items():
                out = outputs[name] = upscale(colour)
                score_colour(f"{name} (as colour)", out, a_up, hr, a_hr, band, clear)
                if name in background_of:
                    b_up = F.interpolate(background_of[name], size=(hr_size, hr_size), mode="bicubic", align_corners=False).clamp(0, 1)
                    uncomposited = torch.where(a_up > 0.02, (out - (1 - a_up) * b_up) / a_up.clamp_min(0.02), out).clamp(0, 1)
                    score_colour(f"{name} (un-composited after)", uncomposited, a_up, hr, a_hr, band, clear)
                if name == "white":  # the former pipeline: composited on white, alpha dropped
                    score_colour("white, alpha dropped (before)", out, None, hr, a_hr, band, clear)
            # ---- alpha resampling
            guide_hr = outputs["filled"].mean(dim=1, keepdim=True)
            guide_lr = filled.mean(dim=1, keepdim=True)
            for name, alpha in alpha_candidates(a_lr, hr_size, guide_lr, guide_hr).items():
                values = alpha_values.setdefault(name, {m: {"psnr": [], "band_mae": [], "solid_wrong": []} for m in MASKS})[mask_name]
                values["psnr"].append(masked_psnr(alpha, a_hr))
                quantised = (alpha * 255).round()
                wrong = ((a_hr == 0) & (quantised > 0)) | ((a_hr == 1) & (quantised < 255))
                values["solid_wrong"].append(float(wrong.sum() / solid.sum().clamp_min(1) * 100))
                values["band_mae"].append(float((alpha - a_hr).abs().mul(band).sum() / band.sum().clamp_min(1) * 255))
        print(f"done {file.name}", file=sys.stderr, flush=True)

    mean = lambda values: float(np.mean(values)) if values else float("nan")
    alpha_rows = {
        name: {mask: {key: mean(v) for key, v in per_mask.items()} for mask, per_mask in by_mask.items()}
        for name, by_mask in alpha_values.items()
    }
    for row in alpha_rows.values():
        row["mean_psnr"] = mean([row[m]["psnr"] for m in MASKS])
        row["solid_wrong"] = mean([row[m]["solid_wrong"] for m in MASKS])
    colour_rows = {name: {key: mean(v) for key, v in values.items()} for name, values in colour_values.items()}
    return {"alpha": alpha_rows, "colour": colour_rows}


def markdown(result: Dict) -> str:
    config = result["config"]
    lines = [
        f"Transparency study ({config['images']} images of `{config['data']}`, centre {config['hr_size']} px, "
        f"{config['factor']}x; model `{config['model']}`, VAE `{config['vae']}`"
        + ("; --smoke-test: tiny random models, the numbers mean nothing" if config["smoke_test"] else "") + ").",
        "",
        "Alpha resampling: PSNR dB / edge-band MAE (0..255) per mask; last column: share of the HR pixels with alpha "
        "exactly 0 or 1 that the 8-bit upscaled alpha gets wrong.",
        "",
        "| method | content | cutout | ellipse | mean PSNR | solid pixels wrong |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["alpha"].items():
        cells = [f"{row[m]['psnr']:.2f} / {row[m]['band_mae']:.2f}" for m in MASKS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['mean_psnr']:.2f} | {row['solid_wrong']:.2f} % |")
    lines += [
        "",
        "Colour fed to the VAE (alpha: `upscale_alpha`): the RGBA output composited over white / black / grey vs the "
        "HR RGBA composited the same way, PSNR dB.",
        "",
        "| fed colour (colour stored in the output) | PSNR whole | PSNR edge band | composite over white where HR alpha = 0 (0..255) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["colour"].items():
        lines.append(f"| {name} | {row['psnr']:.2f} | {row['band_psnr']:.2f} | {row['white_clear']:.1f} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> Dict:
    require_one_process("evaluation.benchmarks.alpha_study")
    if args.smoke_test:
        prepare_smoke_study(args, "alpha_study", SMOKE_IMAGES, SMOKE_HR_SIZE)
        args.num_images, args.hr_size, args.factor = SMOKE_IMAGES, SMOKE_HR_SIZE, 4
    elif args.output is None:
        args.output = str(DEFAULT_OUTPUT)
    check_arguments(args)
    torch.set_num_threads(1)
    files = list_images(args.data)[: args.num_images]
    if not files:
        raise ValueError(f"--data {args.data!r} holds no images.")
    pipe = UPLiFTSuperResolutionPipeline(vae=load_vae(args.vae), upscaler=load_upscaler(args.model, flag="--model DIR|FILE"))
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    with torch.no_grad():
        result = study(pipe, files, args.hr_size, args.factor)
    relative = lambda path: os.path.relpath(path, REPO_ROOT) if Path(path).exists() and not args.smoke_test else str(path)
    result["config"] = {
        "model": relative(args.model), "vae": relative(args.vae), "data": relative(args.data),
        "images": len(files), "hr_size": args.hr_size, "factor": args.factor, "threads": 1,
        "smoke_test": bool(args.smoke_test), "seconds_total": round(time.perf_counter() - start, 1),
        "torch": torch.__version__, "machine": platform.machine(),
    }
    result = {"config": result["config"], "alpha": result["alpha"], "colour": result["colour"]}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    atomic_write_text(output.with_suffix(".md"), markdown(result))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad argument or missing input)."""
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ValueError, FileNotFoundError, LaunchMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown(result))
    print(f"results: {args.output} and {Path(args.output).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
