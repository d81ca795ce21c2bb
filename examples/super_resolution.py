"""Super-resolution of image files with a VAE and UPLiFT (encode -> upscale latents -> decode).

    python examples/super_resolution.py examples/images/coffee.png --scale 4
    python examples/super_resolution.py photo.jpg --scale 3    # any factor >= 1 (1.5, 3, ...)
    python examples/super_resolution.py photo.jpg --model stable-diffusion-v1-5/stable-diffusion-v1-5 --upscaler UPLiFT-upsampler/uplift_sd1.5vae

Default: the pipeline folder shipped in this repository (TAEF2 and the UPLiFT model trained for
it: no network needed). ``--model`` takes another super-resolution pipeline folder, or, with
``--upscaler``, a VAE (a diffusers VAE folder or Hub id; a pipeline's ``vae/`` is found). Results go
to ``outputs/super_resolution/`` (ignored by git) unless --output-dir says otherwise. Exit
statuses as the command line's: 2 for a usage or input error, 1 for a failure while running.
"""
import argparse
import sys
from pathlib import Path

from uplift_diffusers.cli import EMBEDDED_MODEL, UPSCALER_FILES, VAE_FILES, UsageError, check_models, parse_scale, run

DEFAULT_OUTPUT_DIR = Path("outputs") / "super_resolution"


def upscale(args) -> list:
    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:
        raise UsageError(f"image not found: {', '.join(missing)}")
    models = [("--model", args.model, ("model_index.json",) if args.upscaler is None else VAE_FILES)]
    if args.upscaler is not None:
        models.append(("--upscaler", args.upscaler, UPSCALER_FILES))
    check_models(models, hint=f"--model {EMBEDDED_MODEL} runs offline")

    import torch
    from PIL import Image

    from uplift_diffusers import UPLiFTLatentUpscaler, UPLiFTSuperResolutionPipeline, load_vae

    if args.upscaler is None:
        pipe = UPLiFTSuperResolutionPipeline.from_pretrained(args.model)
    else:
        pipe = UPLiFTSuperResolutionPipeline(vae=load_vae(args.model), upscaler=UPLiFTLatentUpscaler.from_pretrained(args.upscaler))
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    images = [Image.open(path) for path in args.images]
    result = pipe(images, upscale_factor=args.scale, generator=torch.Generator().manual_seed(args.seed))
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for path, image, upscaled in zip(args.images, images, result.images):
        target = output_dir / f"{Path(path).stem}_{upscaled.width}x{upscaled.height}.png"
        upscaled.save(target)
        print(f"{path} {image.size} -> {target} {upscaled.size}")
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files (any size, any PIL mode)")
    parser.add_argument("--model", default=EMBEDDED_MODEL, help=f"pipeline folder or Hub id (default {EMBEDDED_MODEL}); a VAE with --upscaler")
    parser.add_argument("--upscaler", default=None, help="UPLiFT folder or Hub id, to pair with the VAE given as --model")
    parser.add_argument("--scale", type=parse_scale, default=4.0, help="upscale factor, any real number >= 1 (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR), help=f"where the results go (default {DEFAULT_OUTPUT_DIR})")
    return run("super_resolution", upscale, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
