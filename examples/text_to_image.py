"""Text-to-image with Stable Diffusion 1.5 and UPLiFT latent upscaling (512 px -> 1024 px).

    python examples/text_to_image.py "a lighthouse on a cliff at sunset" --scale 2 --output lighthouse.png

Defaults download Stable Diffusion 1.5 and the authors' UPLiFT checkpoint from the Hugging Face
Hub; pass --model DIR and --upscaler DIR (or --original-checkpoint FILE) to work from local files.
"""
import argparse

import torch
from huggingface_hub import hf_hub_download

from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.conversion import ORIGINAL_CHECKPOINT_NAME, ORIGINAL_REPO_ID
from uplift_diffusers.pipeline_uplift import StableDiffusionUPLiFTPipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5", help="SD 1.5 Hub id or local directory")
    parser.add_argument("--upscaler", default=None, help="UPLiFT save_pretrained directory or Hub id")
    parser.add_argument("--original-checkpoint", default=None, help="the authors' .safetensors file (default: from the Hub)")
    parser.add_argument("--size", type=int, default=512, help="base size in pixels")
    parser.add_argument("--scale", type=int, choices=(1, 2, 4, 8), default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="uplift_text_to_image.png")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32

    if args.upscaler is not None:
        upscaler = UPLiFTLatentUpscaler.from_pretrained(args.upscaler, torch_dtype=dtype)
    else:
        checkpoint = args.original_checkpoint or hf_hub_download(ORIGINAL_REPO_ID, ORIGINAL_CHECKPOINT_NAME)
        upscaler = UPLiFTLatentUpscaler.from_original_checkpoint(checkpoint, torch_dtype=dtype)

    pipe = StableDiffusionUPLiFTPipeline.from_pretrained(args.model, upscaler=upscaler, torch_dtype=dtype)
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
