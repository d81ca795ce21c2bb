"""ControlNet (Canny edges) with Stable Diffusion 1.5, then UPLiFT: 512 px -> 1024 px.

    python examples/controlnet_uplift.py photo.jpg "a watercolour painting of a harbour" --output harbour.png

The photo's edges guide Stable Diffusion 1.5 through a Canny ControlNet at 512 px; ``apply_uplift``
hooks the unmodified pipeline's VAE decode, so it generates 2x larger with the authors' released
UPLiFT model. Any SD1.5-family pipeline takes the hook the same way.

Models come from the Hugging Face Hub or its cache (with all cached, ``HF_HUB_OFFLINE=1`` runs
without network); a missing one ends the script with one line naming every model it lacks.
Pass --model / --controlnet / --upscaler DIR to use local copies. Exit statuses as the command
line's: 2 for a usage or input error, 1 for a failure while running.
"""
import argparse
import sys

from PIL import Image, ImageFilter, ImageOps

from uplift_diffusers.cli import UPSCALER_FILES, UsageError, check_models, parse_scale, run
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID

#: A ControlNet for Stable Diffusion 1.5 (Canny edges).
SD15_CONTROLNET_CANNY_ID = "lllyasviel/control_v11p_sd15_canny"
#: Grey level (0-255) above which an edge-filter response counts as an edge.
EDGE_THRESHOLD = 40


def edge_map(photo: Image.Image, size: int) -> Image.Image:
    """White edges on black at ``size x size`` (centre crop): what a Canny ControlNet expects."""
    photo = ImageOps.fit(photo.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    edges = photo.convert("L").filter(ImageFilter.GaussianBlur(1)).filter(ImageFilter.FIND_EDGES)
    return edges.point(lambda value: 255 if value > EDGE_THRESHOLD else 0).convert("RGB")


def generate(args) -> list:
    if args.size < 64 or args.size % 8:
        raise UsageError(f"--size must be a multiple of 8 of at least 64, got {args.size}")
    try:
        photo = Image.open(args.image)
    except OSError as error:
        raise UsageError(f"cannot read IMAGE {args.image!r}: {error}") from None
    control = photo.convert("RGB").resize((args.size, args.size)) if args.edges else edge_map(photo, args.size)
    check_models(
        [("--model", args.model, ("model_index.json",)), ("--controlnet", args.controlnet, ("config.json",)),
         ("--upscaler", args.upscaler, UPSCALER_FILES)],
        hint="pass local copies with --model / --controlnet / --upscaler DIR",
    )
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from uplift_diffusers import UPLiFTLatentUpscaler, apply_uplift

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    controlnet = ControlNetModel.from_pretrained(args.controlnet, dtype=dtype)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(args.model, controlnet=controlnet, dtype=dtype).to(device)
    apply_uplift(pipe, UPLiFTLatentUpscaler.from_pretrained(args.upscaler, dtype=dtype).to(device), upscale_factor=args.scale)
    image = pipe(args.prompt, image=control, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed)).images[0]
    stem = args.output.rsplit(".", 1)[0]
    image.save(args.output)
    control.save(f"{stem}_edges.png")
    print(f"saved {args.output} {image.size} and the edges {stem}_edges.png")
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="a photograph whose edges guide the generation (or an edge map with --edges)")
    parser.add_argument("prompt")
    parser.add_argument("--edges", action="store_true", help="IMAGE is already a Canny edge map (white on black)")
    parser.add_argument("--model", default=SD15_MODEL_ID, help="SD 1.5 Hub id or local directory")
    parser.add_argument("--controlnet", default=SD15_CONTROLNET_CANNY_ID, help="SD 1.5 ControlNet Hub id or local directory")
    parser.add_argument("--upscaler", default=UPLIFT_SD15_REPO_ID, help="UPLiFT folder or Hub id (default: the authors' release)")
    parser.add_argument("--size", type=int, default=512, help="base size in pixels (a multiple of 8)")
    parser.add_argument("--scale", type=parse_scale, default=2.0, help="upscale factor, any real number >= 1 (default 2: 1024 px)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="uplift_controlnet.png")
    return run("controlnet_uplift", generate, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
