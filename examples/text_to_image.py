"""Text-to-image with Stable Diffusion 1.5 and UPLiFT latent upscaling (512 px -> 1024 px).

    python examples/text_to_image.py "a lighthouse on a cliff at sunset" --scale 2 --output lighthouse.png

``StableDiffusionUPLiFTPipeline.from_pretrained`` adds the authors' released UPLiFT model to Stable
Diffusion 1.5 by itself, from the Hugging Face Hub or its cache (with both cached,
``HF_HUB_OFFLINE=1`` runs without network; a missing model ends the script with one line naming
it). Pass --model DIR and --upscaler DIR|ID|FILE to use other or local files. The image goes to
``outputs/text_to_image.png`` (ignored by git) unless --output says otherwise, its base image
beside it (``*_base.png``). Exit statuses as the command line's: 2 for a usage or input error, 1 for
a failure while running.
"""
import argparse
import sys
from pathlib import Path

from uplift_diffusers.cli import UPSCALER_FILES, check_models, load_upscaler, parse_scale, run
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID

DEFAULT_OUTPUT = Path("outputs") / "text_to_image.png"


def generate(args) -> list:
    check_models([("--model", args.model, ("model_index.json",)), ("--upscaler", args.upscaler, UPSCALER_FILES)],
                 hint="pass local copies with --model DIR and --upscaler DIR")
    import torch

    from uplift_diffusers import StableDiffusionUPLiFTPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    upscaler = load_upscaler(args.upscaler, None, dtype)
    pipe = StableDiffusionUPLiFTPipeline.from_pretrained(args.model, upscaler=upscaler, dtype=dtype).to(device)
    if args.size * args.scale >= 2048:
        pipe.enable_tiling()  # a single-pass VAE decode at 2048 px needs tens of GB
    result = pipe(args.prompt, height=args.size, width=args.size, num_inference_steps=args.steps, upscale_factor=args.scale,
                  generator=torch.Generator().manual_seed(args.seed), return_base_images=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    result.images[0].save(output)
    base_path = output.with_name(output.stem + "_base" + output.suffix)
    result.base_images[0].save(base_path)
    print(f"saved {output} ({result.images[0].size}) and the base image {base_path}")
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--model", default=SD15_MODEL_ID, help="SD 1.5 Hub id or local directory")
    parser.add_argument("--upscaler", default=UPLIFT_SD15_REPO_ID,
                        help="UPLiFT folder or Hub id, or the authors' .safetensors file (default: the authors' release)")
    parser.add_argument("--size", type=int, default=512, help="base size in pixels")
    parser.add_argument("--scale", type=parse_scale, default=2.0, help="upscale factor, any real number >= 1 (default 2)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help=f"the upscaled image (default {DEFAULT_OUTPUT})")
    return run("text_to_image", generate, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
