#!/usr/bin/env python
"""Side-by-side 4x super-resolution crops: bicubic | bilinear-latent | UPLiFT | ground truth.

    python examples/make_comparison_figure.py --data ../shared/data/bsds500/test \
        --vae ../shared/models/taef2 --upscaler examples/models/uplift-taef2-bsds500 \
        --output examples/figures/comparison.png

Uses the evaluation protocol (HR = centre crop, LR = PIL bilinear resize) and the same method
implementations as ``evaluation/tasks/eval_super_resolution.py``; each row is one image, each
column shows the centre ``--crop`` pixels of a method's output, enlarged ``--zoom`` times.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from evaluation.tasks.eval_super_resolution import SuperResolutionRunner, parse_methods  # noqa: E402
from evaluation.tasks.sr_protocol import centre_crop, list_images, load_hr_lr, pil_to_tensor  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder of photos")
    parser.add_argument("--vae", required=True, help="VAE: Hub id, diffusers folder or TAESD-family folder")
    parser.add_argument("--upscaler", required=True, help="UPLiFT model folder or Hub id")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--images", type=int, default=3, help="number of rows (images, in sorted order from --first)")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--hr-size", type=int, default=256)
    parser.add_argument("--lr-size", type=int, default=64)
    parser.add_argument("--crop", type=int, default=96, help="side of the shown centre crop, in output pixels")
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.hr_size % args.lr_size or args.crop > args.hr_size or args.images < 1:
        parser.error("need --hr-size a multiple of --lr-size, --crop <= --hr-size and --images >= 1")

    files = list_images(args.data)[args.first : args.first + args.images]
    if not files:
        parser.error(f"no images in {args.data} from index {args.first}")
    methods = parse_methods(["bicubic", "bilinear", f"uplift={args.upscaler}"])
    runner = SuperResolutionRunner(methods, args.vae, None, args.hr_size // args.lr_size, torch.device("cpu"))
    labels = ["bicubic", "bilinear latent", "UPLiFT", "ground truth"]
    side = args.crop * args.zoom
    sheet = Image.new("RGB", (len(labels) * side, 20 + len(files) * side), "white")
    draw = ImageDraw.Draw(sheet)
    for col, label in enumerate(labels):
        draw.text((col * side + 4, 4), label, fill="black")
    for row, path in enumerate(files):
        hr, lr = load_hr_lr(path, args.hr_size, args.lr_size)
        hr_t, lr_t = pil_to_tensor(hr), pil_to_tensor(lr)
        tiles = []
        for method in methods:
            out = runner.run(method, hr_t, lr_t, [lr], [row], args.seed)[0].clamp(0, 1)
            array = (out.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            tiles.append(Image.fromarray(array))
        tiles.append(hr)
        for col, tile in enumerate(tiles):
            crop = centre_crop(tile, args.crop).resize((side, side), Image.NEAREST)
            sheet.paste(crop, (col * side, 20 + row * side))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    print(f"wrote {output} ({len(files)} images: {', '.join(p.name for p in files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
