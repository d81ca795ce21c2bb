"""Super-resolution of image files with a VAE and UPLiFT (encode -> upscale latents -> decode).

    python examples/super_resolution.py photo.jpg --scale 4
    python examples/super_resolution.py photo.jpg --vae path/to/taesd_dir --upscaler path/to/uplift_dir

Defaults: the Stable Diffusion 1.5 VAE and the authors' released UPLiFT model, from the Hub or its
cache (with both cached, ``HF_HUB_OFFLINE=1`` runs without network). --vae also accepts a local
diffusers VAE directory or a folder holding a TAESD-family encoder.pth + decoder.pth (the
upscaler must be trained for that VAE's latent space).
"""
import argparse
from pathlib import Path

import torch
from PIL import Image

from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID
from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline
from uplift_diffusers.loaders.vae import load_vae


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files (any size, any PIL mode)")
    parser.add_argument("--vae", default=SD15_MODEL_ID, help="Hub id or local directory (a pipeline's vae/ is found)")
    parser.add_argument("--upscaler", default=UPLIFT_SD15_REPO_ID, help="UPLiFT folder or Hub id (default: the authors' release)")
    parser.add_argument("--original-checkpoint", default=None, help="the authors' .safetensors file or its Hub URL")
    parser.add_argument("--scale", type=int, choices=(2, 4, 8), default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="uplift_outputs")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = load_vae(args.vae)
    if args.original_checkpoint is not None:
        upscaler = UPLiFTLatentUpscaler.from_single_file(args.original_checkpoint)
    else:
        upscaler = UPLiFTLatentUpscaler.from_pretrained(args.upscaler)
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upscaler=upscaler).to(device)

    images = [Image.open(path) for path in args.images]
    result = pipe(images, upscale_factor=args.scale, generator=torch.Generator().manual_seed(args.seed))
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for path, image, upscaled in zip(args.images, images, result.images):
        target = output_dir / f"{Path(path).stem}_x{args.scale}.png"
        upscaled.save(target)
        print(f"{path} {image.size} -> {target} {upscaled.size}")


if __name__ == "__main__":
    main()
