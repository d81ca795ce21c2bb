"""Transparency: how to upscale alpha, and which colour to feed the VAE under it.
Command: ``docs/evaluation.md``; the recorded run is ``evaluation/results/alpha_study.{json,md}``.

The numbers behind :func:`uplift_diffusers.image_processor.upscale_alpha` (Lanczos, clamped to
the 3 x 3 input neighbourhood) and :func:`~uplift_diffusers.image_processor.fill_transparent`
(the push-pull fill fed to the VAE, rather than the colour composited on white or black).

Data: the first ``--num-images`` images of ``--data``, centre square crop resized to
``--hr-size``, with three synthetic soft alpha masks each: ``content`` (pixels close in colour to
the centre, blurred: a soft cut-out), ``cutout`` (that mask thresholded, lightly blurred: an
antialiased hard cut) and ``ellipse`` (a feathered vignette). LR = premultiplied antialiased
bilinear downsampling by ``--factor``, un-premultiplied and quantised to 8 bits as a PNG stores
it. The colour is upscaled by ``UPLiFTSuperResolutionPipeline`` (no back-projection).

Reported: (1) alpha PSNR, the mean absolute error (x 255) in the edge band (HR alpha in
(0.02, 0.98), dilated 2 px) and the share of solid (alpha 0 or 1) pixels the 8-bit upscaled
alpha gets wrong; (2) PSNR of the upscaled RGBA composited over white, black and grey, and the
composite over white where HR alpha is 0 (ideally 255).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from evaluation.benchmarks import common
from evaluation.sharding import LaunchMismatchError
from uplift_diffusers.image_processor import fill_transparent, pil_to_tensor, upscale_alpha
from uplift_diffusers.utils.sr_protocol import centre_crop

MASKS = ("content", "cutout", "ellipse")
BACKGROUNDS = (1.0, 0.0, 0.5)  # white, black, grey


def masks_for(rgb: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The three HR alpha masks (``1 x 1 x H x W``) of the ``1 x 3 x H x W`` image ``rgb``."""
    size = rgb.shape[-1]
    blurred = gaussian_blur(rgb, 13, 3.0)
    lo, hi = size // 2 - size // 8, size // 2 + size // 8
    dist = (blurred - blurred[..., lo:hi, lo:hi].mean(dim=(2, 3), keepdim=True)).norm(dim=1, keepdim=True)
    content = gaussian_blur(torch.sigmoid((torch.quantile(dist.flatten(), 0.4) - dist) / 0.03), 7, 1.0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    ellipse = ((1.0 - ((yy / 0.75) ** 2 + (xx / 0.55) ** 2).sqrt()) / 0.25).clamp(0, 1)[None, None]
    return {"content": content, "cutout": gaussian_blur((content > 0.5).float(), 5, 0.8), "ellipse": ellipse}


def to_lr(colour: torch.Tensor, alpha: torch.Tensor, size: int):
    """(colour, alpha) at ``size``: premultiplied antialiased bilinear, un-premultiplied, 8-bit."""
    def down(x):
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    alpha_lr = (down(alpha) * 255).round() / 255
    premultiplied = down(colour * alpha)
    colour_lr = torch.where(alpha_lr > 0, premultiplied / alpha_lr.clamp_min(1e-6), torch.zeros_like(premultiplied)).clamp(0, 1)
    return (colour_lr * 255).round() / 255, alpha_lr


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int = 1, eps: float = 1e-3) -> torch.Tensor:
    """He et al.'s guided filter of ``source`` with ``guide`` (both at the output size)."""
    def box(x):
        return F.avg_pool2d(F.pad(x, [radius] * 4, mode="reflect"), 2 * radius + 1, stride=1)

    mean_i, mean_p = box(guide), box(source)
    a = (box(guide * source) - mean_i * mean_p) / (box(guide * guide) - mean_i ** 2 + eps)
    return (box(a) * guide + box(mean_p - a * mean_i)).clamp(0, 1)


def alpha_candidates(alpha_lr: torch.Tensor, size: int, guide: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Every alpha resampling compared, at ``size`` x ``size``; ``guide``: the luminance of the upscaled filled colour."""
    def resize(mode, **options):
        return F.interpolate(alpha_lr, size=(size, size), mode=mode, **options)

    bicubic = resize("bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return {
        "nearest": resize("nearest"),
        "bilinear": resize("bilinear", align_corners=False),
        "bicubic (torch, a = -0.75)": bicubic,
        "Lanczos + anti-ringing clamp (upscale_alpha)": upscale_alpha(alpha_lr, (size, size)),
        "guided filter on the upscaled colour r=1 eps=0.001": guided_filter(guide, bicubic),
    }


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """PSNR in dB (data range 1) over all pixels, or over the pixels where ``mask`` (``1 x 1 x H x W``) is 1."""
    err = (pred - target) ** 2
    mse = err.mean() if mask is None else (err * mask).sum() / (mask.sum() * pred.shape[1]).clamp_min(1)
    return float(10 * torch.log10(1 / mse.clamp_min(1e-10)))


def study(pipe, files, hr_size: int, factor: int) -> Dict[str, Dict]:
    """Per alpha method and mask ``{psnr, band_mae, solid_wrong}``, per fed colour ``{psnr, band_psnr, white_clear}``; means over the images."""
    alpha_values: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    colour_values: Dict[str, Dict[str, List[float]]] = {}
    for file in files:
        with Image.open(file) as handle:
            image = handle.convert("RGB")
        hr = pil_to_tensor(centre_crop(image, min(image.size)).resize((hr_size, hr_size), Image.BICUBIC))
        for mask_name, a_hr in masks_for(hr).items():
            c_lr, a_lr = to_lr(hr, a_hr, hr_size // factor)
            band = F.max_pool2d(((a_hr > 0.02) & (a_hr < 0.98)).float(), 5, stride=1, padding=2)
            clear = (a_hr == 0).float()
            a_up = upscale_alpha(a_lr, (hr_size, hr_size))
            filled = fill_transparent(c_lr, a_lr)
            outputs = {}
            for name, fed in (("white", c_lr * a_lr + (1 - a_lr)), ("premultiplied", c_lr * a_lr), ("filled", filled)):
                out = outputs[name] = pipe(fed, upscale_factor=factor, generator=torch.Generator().manual_seed(0),
                                           output_type="pt", back_projection_steps=0).images
                values = colour_values.setdefault(f"{name} (as colour)", {"psnr": [], "band_psnr": [], "white_clear": []})
                for background in BACKGROUNDS:
                    got, truth = out * a_up + background * (1 - a_up), hr * a_hr + background * (1 - a_hr)
                    values["psnr"].append(psnr(got, truth))
                    values["band_psnr"].append(psnr(got, truth, band))
                if clear.sum() > 0:
                    values["white_clear"].append(float(((out * a_up + 1 - a_up) * clear).sum() / (clear.sum() * 3) * 255))
            for name, alpha in alpha_candidates(a_lr, hr_size, outputs["filled"].mean(dim=1, keepdim=True)).items():
                values = alpha_values.setdefault(name, {m: {"psnr": [], "band_mae": [], "solid_wrong": []} for m in MASKS})[mask_name]
                values["psnr"].append(psnr(alpha, a_hr))
                quantised = (alpha * 255).round()
                wrong = ((a_hr == 0) & (quantised > 0)) | ((a_hr == 1) & (quantised < 255))
                values["solid_wrong"].append(float(wrong.sum() / ((a_hr == 0) | (a_hr == 1)).sum().clamp_min(1) * 100))
                values["band_mae"].append(float((alpha - a_hr).abs().mul(band).sum() / band.sum().clamp_min(1) * 255))
        print(f"done {file.name}", file=sys.stderr, flush=True)

    def mean(values):
        return float(np.mean(values)) if values else float("nan")

    alpha = {name: {mask: {key: mean(v) for key, v in per_mask.items()} for mask, per_mask in by_mask.items()}
             for name, by_mask in alpha_values.items()}
    for row in alpha.values():
        row["mean_psnr"] = mean([row[m]["psnr"] for m in MASKS])
        row["solid_wrong"] = mean([row[m]["solid_wrong"] for m in MASKS])
    return {"alpha": alpha, "colour": {name: {key: mean(v) for key, v in values.items()} for name, values in colour_values.items()}}


def markdown(result: Dict) -> str:
    config = result["config"]
    smoke = "; --smoke-test: tiny random models, the numbers mean nothing" if config["smoke_test"] else ""
    lines = [
        f"Transparency study ({config['images']} images of `{config['data']}`, centre {config['hr_size']} px, "
        f"{config['factor']}x; model `{config['model']}`, VAE `{config['vae']}`{smoke}).", "",
        "Alpha resampling: PSNR dB / edge-band MAE (0..255) per mask; last column: share of the HR pixels with alpha "
        "exactly 0 or 1 that the 8-bit upscaled alpha gets wrong.", "",
        "| method | content | cutout | ellipse | mean PSNR | solid pixels wrong |", "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["alpha"].items():
        cells = [f"{row[m]['psnr']:.2f} / {row[m]['band_mae']:.2f}" for m in MASKS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['mean_psnr']:.2f} | {row['solid_wrong']:.2f} % |")
    lines += [
        "", "Colour fed to the VAE (alpha: `upscale_alpha`): the RGBA output composited over white / black / grey vs the "
        "HR RGBA composited the same way, PSNR dB.", "",
        "| fed colour (colour stored in the output) | PSNR whole | PSNR edge band | composite over white where HR alpha = 0 (0..255) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["colour"].items():
        lines.append(f"| {name} | {row['psnr']:.2f} | {row['band_psnr']:.2f} | {row['white_clear']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad argument or missing input)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_study_arguments(parser, "alpha_study")
    parser.add_argument("--num-images", type=int, default=12, help="the first N images (sorted by name); default 12")
    parser.add_argument("--hr-size", type=int, default=256, help="HR side in pixels (default 256)")
    parser.add_argument("--factor", type=int, default=4, help="upscale factor, a power of two (default 4)")
    args = parser.parse_args(argv)
    try:
        if args.factor < 2 or args.factor & (args.factor - 1):
            raise ValueError(f"--factor must be a power of two >= 2, got {args.factor}.")
        if args.hr_size % args.factor or args.hr_size < 8 * args.factor:
            raise ValueError(f"--hr-size must be a multiple of --factor {args.factor} and at least {8 * args.factor}, got {args.hr_size}.")
        pipe, files = common.prepare_study(args, "alpha_study", smoke_images=2, smoke_hr_size=64)
    except (ValueError, FileNotFoundError, LaunchMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    start = time.perf_counter()
    with torch.no_grad():
        result = study(pipe, files, args.hr_size, args.factor)
    config = common.study_config(args, files, hr_size=args.hr_size, factor=args.factor, threads=1,
                                 seconds_total=round(time.perf_counter() - start, 1))
    result = {"config": config, **result}
    common.write_results(args.output, result, markdown(result))
    print(markdown(result))
    print(f"results: {args.output} and {args.output[:-5]}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
