"""Text-to-image with Stable Diffusion 1.5 and UPLiFT latent upscaling (512 px -> 1024 px).

    python examples/text_to_image.py "a lighthouse on a cliff at sunset" --scale 2 --output lighthouse.png

Defaults: Stable Diffusion 1.5 with the authors' released UPLiFT model, which
``StableDiffusionUPLiFTPipeline.from_pretrained`` adds by itself, from the Hugging Face Hub or its
cache (with both cached, ``HF_HUB_OFFLINE=1`` runs without network). Pass --model DIR and
--upscaler DIR|ID (or --original-checkpoint FILE|URL) to use other or local files.
"""
import argparse

import torch

from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.constants import SD15_MODEL_ID
from uplift_diffusers.pipelines.pipeline_stable_diffusion_uplift import StableDiffusionUPLiFTPipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--model", default=SD15_MODEL_ID, help="SD 1.5 Hub id or local directory")
    parser.add_argument("--upscaler", default=None, help="UPLiFT folder or Hub id (default: the authors' release)")
    parser.add_argument("--original-checkpoint", default=None, help="the authors' .safetensors file or its Hub URL")
    parser.add_argument("--size", type=int, default=512, help="base size in pixels")
    parser.add_argument("--scale", type=int, choices=(1, 2, 4, 8), default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="uplift_text_to_image.png")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32

    kwargs = {}  # no upscaler= : the pipeline loads the authors' release with the same dtype and cache
    if args.upscaler is not None:
        kwargs["upscaler"] = UPLiFTLatentUpscaler.from_pretrained(args.upscaler, torch_dtype=dtype)
    elif args.original_checkpoint is not None:
        kwargs["upscaler"] = UPLiFTLatentUpscaler.from_single_file(args.original_checkpoint, torch_dtype=dtype)
    pipe = StableDiffusionUPLiFTPipeline.from_pretrained(args.model, torch_dtype=dtype, **kwargs)
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
    result.images[0].save(args.output)
    base_path = args.output.rsplit(".", 1)[0] + "_base.png"
    result.base_images[0].save(base_path)
    print(f"saved {args.output} ({result.images[0].size}) and the base image {base_path}")


if __name__ == "__main__":
    main()
