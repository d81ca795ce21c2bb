"""Super-resolution of image files with a VAE and UPLiFT (encode -> upscale latents -> decode).

    python examples/super_resolution.py photo.jpg --scale 4
    python examples/super_resolution.py photo.jpg --scale 3   # any factor >= 1 (1.5, 3, ...)
    python examples/super_resolution.py photo.jpg --vae path/to/taesd_dir --upscaler path/to/uplift_dir

Defaults: the Stable Diffusion 1.5 VAE and the authors' released UPLiFT model, from the Hub or its
cache. Offline: with both cached, ``HF_HUB_OFFLINE=1`` runs without network (and without waiting
for the Hub); a missing model ends in one line naming every missing model and the flag that takes
a local copy. --vae also accepts a local diffusers VAE directory or a folder holding a TAESD-family
encoder.pth + decoder.pth (the upscaler must be trained for that VAE's latent space); --upscaler a
folder or a Hub id (``UPLiFTLatentUpscaler.from_pretrained``) or the authors' .safetensors / .pth
file (``from_single_file``). Results go to
``outputs/super_resolution/`` (ignored by git) unless --output-dir says otherwise.
"""
import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from uplift_diffusers import UPLiFTLatentUpscaler, load_vae
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID, UPLIFT_SD15_WEIGHTS_NAME
from uplift_diffusers.loaders.hub import HubModel, from_hub, hub_models_available
from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline
from uplift_diffusers.utils.output_size import check_upscale_factor

DEFAULT_OUTPUT_DIR = Path("outputs") / "super_resolution"


def run(args) -> None:
    args.scale = check_upscale_factor(args.scale, "--scale")  # before any model is loaded
    vae_model = HubModel(args.vae, ("config.json", "vae/config.json"), what=f"the VAE {args.vae!r}", hint="--vae DIR")
    upscaler_model = HubModel(args.upscaler, ("config.json", UPLIFT_SD15_WEIGHTS_NAME), what=f"the upscaler {args.upscaler!r}",
                              hint="--upscaler DIR|FILE")
    if Path(args.upscaler).is_file():
        load_upscaler = UPLiFTLatentUpscaler.from_single_file
    else:
        load_upscaler = UPLiFTLatentUpscaler.from_pretrained
    with hub_models_available([vae_model, upscaler_model], notify=lambda message: print(f"note: {message}", file=sys.stderr)):
        vae = from_hub(vae_model.label, vae_model.hint, lambda: load_vae(args.vae, argument="--vae"))
        upscaler = from_hub(upscaler_model.label, upscaler_model.hint, lambda: load_upscaler(args.upscaler))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upscaler=upscaler).to(device)

    for path in args.images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path!r}")
    images = [Image.open(path) for path in args.images]
    result = pipe(images, upscale_factor=args.scale, generator=torch.Generator().manual_seed(args.seed))
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for path, image, upscaled in zip(args.images, images, result.images):
        target = output_dir / f"{Path(path).stem}_x{args.scale:g}.png"
        upscaled.save(target)
        print(f"{path} {image.size} -> {target} {upscaled.size}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files (any size, any PIL mode)")
    parser.add_argument("--vae", default=SD15_MODEL_ID, help="Hub id or local directory (a pipeline's vae/ is found)")
    parser.add_argument("--upscaler", default=UPLIFT_SD15_REPO_ID,
                        help="UPLiFT folder, Hub id or the authors' .safetensors / .pth file (default: the authors' release)")
    parser.add_argument("--scale", type=float, default=4.0,
                        help="upscale factor, any real number >= 1 (e.g. 2, 3, 1.5; default 4): each side times it, rounded")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR), help=f"where the results go (default {DEFAULT_OUTPUT_DIR})")
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as error:  # a missing model (offline) is a FileNotFoundError
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
