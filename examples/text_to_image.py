"""Text-to-image with Stable Diffusion 1.5 and UPLiFT latent upscaling (512 px -> 1024 px).

    python examples/text_to_image.py "a lighthouse on a cliff at sunset" --scale 2 --output lighthouse.png

Defaults: Stable Diffusion 1.5 with the authors' released UPLiFT model, which
``StableDiffusionUPLiFTPipeline.from_pretrained`` adds by itself, from the Hugging Face Hub or its
cache. Offline: with both cached, ``HF_HUB_OFFLINE=1`` runs without network (and without waiting
for the Hub); a missing model ends in one line naming every missing model and the flag that takes
a local copy. Pass --model DIR and --upscaler DIR|ID (or --original-checkpoint FILE|URL) to use
other or local files. The image goes to ``outputs/text_to_image.png`` (ignored by git) unless
--output says otherwise, its base image beside it (``*_base.png``).
"""
import argparse
import sys
from pathlib import Path

import torch

from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID, UPLIFT_SD15_WEIGHTS_NAME
from uplift_diffusers.loaders.hub import HubModel, from_hub, hub_models_available
from uplift_diffusers.pipelines.pipeline_stable_diffusion_uplift import StableDiffusionUPLiFTPipeline
from uplift_diffusers.utils.output_size import check_upscale_factor

DEFAULT_OUTPUT = Path("outputs") / "text_to_image.png"


def run(args) -> None:
    args.scale = check_upscale_factor(args.scale, "--scale")  # before any model is loaded
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    source = args.original_checkpoint if args.original_checkpoint is not None else args.upscaler
    flag = "--original-checkpoint FILE" if args.original_checkpoint is not None else "--upscaler DIR"
    if source is None:  # the pipeline loads the authors' release
        upscaler_model = HubModel(UPLIFT_SD15_REPO_ID, (UPLIFT_SD15_WEIGHTS_NAME,), what=f"the default UPLiFT model ({UPLIFT_SD15_REPO_ID})", hint=flag)
    else:
        upscaler_model = HubModel(source, ("config.json", UPLIFT_SD15_WEIGHTS_NAME), what=f"the upscaler {source!r}", hint=flag)
    sd_model = HubModel(args.model, ("model_index.json",), what=f"the Stable Diffusion model {args.model!r}", hint="--model DIR")
    with hub_models_available([sd_model, upscaler_model], notify=lambda message: print(f"note: {message}", file=sys.stderr)):
        kwargs = {}  # no upscaler= : the pipeline loads the authors' release with the same dtype and cache
        if args.original_checkpoint is not None:
            load = lambda: UPLiFTLatentUpscaler.from_single_file(source, torch_dtype=dtype)  # noqa: E731
        else:
            load = lambda: UPLiFTLatentUpscaler.from_pretrained(source, torch_dtype=dtype)  # noqa: E731
        if source is not None:
            kwargs["upscaler"] = from_hub(upscaler_model.label, flag, load)
        pipe = from_hub(
            f"the Stable Diffusion model {args.model!r} (or the authors' upscaler {UPLIFT_SD15_REPO_ID!r})", "--model DIR and --upscaler DIR",
            lambda: StableDiffusionUPLiFTPipeline.from_pretrained(args.model, torch_dtype=dtype, **kwargs),
        )
    pipe = pipe.to(device)
    if args.size * args.scale >= 2048:
        pipe.enable_vae_tiling()  # a single-pass VAE decode at 2048 px needs tens of GB

    result = pipe(
        args.prompt,
        height=args.size,
        width=args.size,
        num_inference_steps=args.steps,
        upscale_factor=args.scale,
        generator=torch.Generator().manual_seed(args.seed),
        return_base_images=True,
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    result.images[0].save(output)
    base_path = output.with_name(output.stem + "_base" + output.suffix)
    result.base_images[0].save(base_path)
    print(f"saved {output} ({result.images[0].size}) and the base image {base_path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--model", default=SD15_MODEL_ID, help="SD 1.5 Hub id or local directory")
    parser.add_argument("--upscaler", default=None, help="UPLiFT folder or Hub id (default: the authors' release)")
    parser.add_argument("--original-checkpoint", default=None, help="the authors' .safetensors file or its Hub URL")
    parser.add_argument("--size", type=int, default=512, help="base size in pixels")
    parser.add_argument("--scale", type=float, default=2.0,
                        help="upscale factor, any real number >= 1 (e.g. 2, 3, 1.5; default 2): each side times it, rounded")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help=f"the upscaled image (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if args.upscaler is not None and args.original_checkpoint is not None:
        parser.error("pass --upscaler or --original-checkpoint, not both")
    try:
        run(args)
    except (ValueError, FileNotFoundError) as error:  # a missing model (offline) is a FileNotFoundError
        parser.exit(2, f"error: {error}\n")  # one line, exit status 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
