"""Side-by-side 4x super-resolution crops: bicubic | bilinear-latent | UPLiFT | ground truth, with the
rows of ``evaluation.tasks.eval_super_resolution``; UPLiFT as the pipeline returns it by default
(with back-projection, ``--back-projection-steps``). Each figure row is one image, each column
the centre ``--crop`` pixels of a method's output, enlarged ``--zoom`` times.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageDraw

from evaluation.sr_protocol import SRPairs
from evaluation.tasks.eval_super_resolution import SuperResolutionRunner, parse_methods, with_pipeline_options
from uplift_diffusers.constants import DEFAULT_BACK_PROJECTION_STEPS
from uplift_diffusers.image_processor import centre_crop, list_images
from uplift_diffusers.utils.atomic_files import check_writable_directory


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
    parser.add_argument("--back-projection-steps", type=int, default=DEFAULT_BACK_PROJECTION_STEPS,
                        help=f"rounds of back-projection of the UPLiFT column (default {DEFAULT_BACK_PROJECTION_STEPS}, "
                        "the pipeline's; 0: the paper's output)")
    parser.add_argument("--color-correct-baselines", action="store_true",
                        help="colour-correct the bilinear column like UPLiFT (as the committed figure; default: not, as the paper)")
    args = parser.parse_args(argv)
    if args.hr_size % args.lr_size or args.crop > args.hr_size or args.images < 1 or args.back_projection_steps < 0:
        parser.error("need --hr-size a multiple of --lr-size, --crop <= --hr-size, --images >= 1 and --back-projection-steps >= 0")

    output = Path(args.output)
    if output.suffix.lower() != ".png":
        parser.error(f"--output must name a .png file, got {args.output!r}")
    try:
        check_writable_directory(output.parent, "--output")  # before any computing
    except (ValueError, OSError) as error:
        parser.error(str(error))
    files = list_images(args.data)[args.first : args.first + args.images]
    if not files:
        parser.error(f"no images in {args.data} from index {args.first}")
    methods = with_pipeline_options(parse_methods(["bicubic", "bilinear", f"uplift={args.upscaler}"]), args.back_projection_steps)
    runner = SuperResolutionRunner(
        methods, args.vae, None, args.hr_size // args.lr_size, torch.device("cpu"), args.color_correct_baselines
    )
    labels = ["bicubic", "bilinear latent", "UPLiFT", "ground truth"]
    side = args.crop * args.zoom
    sheet = Image.new("RGB", (len(labels) * side, 20 + len(files) * side), "white")
    draw = ImageDraw.Draw(sheet)
    for col, label in enumerate(labels):
        draw.text((col * side + 4, 4), label, fill="black")
    for row, batch in enumerate(SRPairs(files, args.hr_size, args.lr_size)):
        outputs = [runner.run(method, batch, args.seed).clamp(0, 1) for method in methods]
        tiles = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(torch.cat(outputs + [batch.hr])))
        for col, tile in enumerate(tiles):
            crop = centre_crop(tile, args.crop).resize((side, side), Image.NEAREST)
            sheet.paste(crop, (col * side, 20 + row * side))
    sheet.save(output)
    print(f"wrote {output} ({len(files)} images: {', '.join(p.name for p in files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
