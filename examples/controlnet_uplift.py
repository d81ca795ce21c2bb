"""ControlNet (Canny edges) with Stable Diffusion 1.5, then UPLiFT: 512 px -> 1024 px.

    python examples/controlnet_uplift.py photo.jpg "a watercolour painting of a harbour" --output harbour.png

The photo's edges guide Stable Diffusion 1.5 through a Canny ControlNet at 512 px; UPLiFT, hooked
on the unmodified pipeline's VAE decode (``uplift_diffusers.hooks``), upscales its latents 2x with
the authors' released UPLiFT model. Any SD1.5-family pipeline takes the hook the same way.

Models come from the Hugging Face Hub or its cache (with all cached, ``HF_HUB_OFFLINE=1`` runs
without network); a missing one ends the script with one line naming every model it lacks.
Pass --model / --controlnet / --upscaler DIR to use local copies.
"""
import argparse
import sys

from PIL import Image, ImageFilter, ImageOps

from uplift_diffusers.constants import SD15_CONTROLNET_CANNY_ID, SD15_MODEL_ID, UPLIFT_SD15_REPO_ID, UPLIFT_SD15_WEIGHTS_NAME
from uplift_diffusers.loaders.hub import HubModel, HubUnavailableError, check_models_available
from uplift_diffusers.utils.output_size import check_upscale_factor

#: Grey level (0-255) above which an edge-filter response counts as an edge.
EDGE_THRESHOLD = 40


def edge_map(path: str, size: int) -> Image.Image:
    """White edges on black at ``size x size`` (centre crop): what a Canny ControlNet expects."""
    photo = ImageOps.fit(Image.open(path).convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    edges = photo.convert("L").filter(ImageFilter.GaussianBlur(1)).filter(ImageFilter.FIND_EDGES)
    return edges.point(lambda value: 255 if value > EDGE_THRESHOLD else 0).convert("RGB")


def needed_models(args) -> list:
    models = [
        HubModel(args.model, files=("model_index.json",), what=f"the Stable Diffusion 1.5 model {args.model!r}", hint="--model DIR"),
        HubModel(args.controlnet, files=("config.json",), what=f"the ControlNet {args.controlnet!r}", hint="--controlnet DIR"),
    ]
    if args.upscaler is None:
        models.append(HubModel(UPLIFT_SD15_REPO_ID, files=(UPLIFT_SD15_WEIGHTS_NAME,), what="the authors' UPLiFT release",
                               hint="--upscaler DIR"))
    else:
        models.append(HubModel(args.upscaler, files=("config.json",), what=f"the UPLiFT model {args.upscaler!r}", hint="--upscaler DIR"))
    return models


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="a photograph whose edges guide the generation (or an edge map with --edges)")
    parser.add_argument("prompt")
    parser.add_argument("--edges", action="store_true", help="IMAGE is already a Canny edge map (white on black)")
    parser.add_argument("--model", default=SD15_MODEL_ID, help="SD 1.5 Hub id or local directory")
    parser.add_argument("--controlnet", default=SD15_CONTROLNET_CANNY_ID, help="SD 1.5 ControlNet Hub id or local directory")
    parser.add_argument("--upscaler", default=None, help="UPLiFT folder or Hub id (default: the authors' release)")
    parser.add_argument("--size", type=int, default=512, help="base size in pixels (a multiple of 8)")
    parser.add_argument("--scale", type=float, default=2.0, help="upscale factor, any real number >= 1 (default 2: 1024 px)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="uplift_controlnet.png")
    args = parser.parse_args()
    if args.size < 64 or args.size % 8:
        parser.error(f"--size must be a multiple of 8 of at least 64, got {args.size}")
    try:
        check_upscale_factor(args.scale, "--scale")  # uplift_applied trusts its settings
    except ValueError as error:
        parser.error(str(error))
    try:
        control = Image.open(args.image).convert("RGB").resize((args.size, args.size)) if args.edges else edge_map(args.image, args.size)
    except OSError as error:
        parser.error(f"cannot read IMAGE {args.image!r}: {error}")

    try:
        check_models_available(needed_models(args))
    except HubUnavailableError as error:
        sys.exit(f"controlnet_uplift: {error}")

    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from uplift_diffusers import UPLiFTLatentUpscaler
    from uplift_diffusers.hooks import uplift_applied

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    try:
        controlnet = ControlNetModel.from_pretrained(args.controlnet, dtype=dtype)
        pipe = StableDiffusionControlNetPipeline.from_pretrained(args.model, controlnet=controlnet, dtype=dtype).to(device)
        upscaler = UPLiFTLatentUpscaler.from_pretrained(args.upscaler or UPLIFT_SD15_REPO_ID, dtype=dtype).to(device)
    except HubUnavailableError as error:
        sys.exit(f"controlnet_uplift: {error}")

    with uplift_applied(pipe, upscaler, upscale_factor=args.scale, keep_base_images=True) as hook:
        result = pipe(args.prompt, image=control, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed))
    base = pipe.image_processor.postprocess(hook.base_images[0], output_type="pil")[0]
    stem = args.output.rsplit(".", 1)[0]
    result.images[0].save(args.output)
    base.save(f"{stem}_base.png")
    control.save(f"{stem}_edges.png")
    print(f"saved {args.output} {result.images[0].size}, the base image {stem}_base.png and the edges {stem}_edges.png")


if __name__ == "__main__":
    main()
