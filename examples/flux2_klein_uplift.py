"""FLUX.2 [klein] with UPLiFT and hires-fix: 1024 px -> 2048 px, then the end of the schedule re-run.

    python examples/flux2_klein_uplift.py "a lighthouse on a cliff at sunset" --output lighthouse.png   # a GPU, the Hub
    python examples/flux2_klein_uplift.py "a red cat" --smoke-test --output cat.png                     # tiny random models, seconds, offline

FLUX.2 pipelines decode with ``vae.decode`` on the FLUX.2 VAE's raw 32-channel latents, the latent
space of the UPLiFT model shipped in this repository (trained on TAEF2, FLUX.2's tiny autoencoder;
not yet measured on the full FLUX.2 VAE). ``hires_fix`` runs the pipeline's own call, UPLiFT, then
the last ``--refine-strength`` of the noise schedule at the new size (0: ``apply_uplift`` alone).
With ``--smoke-test`` every model is a tiny random one: the images mean nothing, the run checks the
whole path. Exit statuses as the command line's: 2 for a usage or input error, 1 for a failure.
"""
import argparse
import sys

from uplift_diffusers.cli import EMBEDDED_MODEL, UPSCALER_FILES, UsageError, check_models, run

FLUX2_KLEIN_ID = "black-forest-labs/FLUX.2-klein-4B"


def generate(args) -> list:
    if not 0 <= args.refine_strength < 1:
        raise UsageError(f"--refine-strength must be in [0, 1), got {args.refine_strength}")
    if not args.smoke_test:  # before the heavy imports: a missing model is reported at once
        check_models([("--model", args.model, ("model_index.json",)), ("--upscaler", args.upscaler, UPSCALER_FILES)],
                     hint="pass local copies with --model DIR and --upscaler DIR")
    import torch
    from diffusers import Flux2KleinPipeline

    from uplift_diffusers import UPLiFTLatentUpscaler, hires_fix

    call = dict(prompt=args.prompt, num_inference_steps=args.steps, height=args.size, width=args.size)
    if args.smoke_test:
        from uplift_diffusers.utils.testing_utils import FLUX2_TEXT_LAYERS, build_flux2_components, make_upscaler

        pipe = Flux2KleinPipeline(**build_flux2_components(klein=True))
        upscaler = make_upscaler(latent_channels=32, latent_space="flux2")
        call.update(max_sequence_length=16, text_encoder_out_layers=FLUX2_TEXT_LAYERS, height=64, width=64, num_inference_steps=2)
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        pipe = Flux2KleinPipeline.from_pretrained(args.model, dtype=dtype).to(device)
        upscaler = UPLiFTLatentUpscaler.from_pretrained(args.upscaler, subfolder="upscaler").to(device, dtype)
    image = hires_fix(pipe, upscaler, upscale_factor=int(args.scale), strength=args.refine_strength,
                      refine_steps=args.refine_steps, generator=torch.Generator().manual_seed(args.seed), **call).images[0]
    image.save(args.output)
    print(f"saved {args.output} {image.size}")
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--model", default=FLUX2_KLEIN_ID, help=f"FLUX.2 [klein] Hub id or folder (default {FLUX2_KLEIN_ID})")
    parser.add_argument("--upscaler", default=EMBEDDED_MODEL, help=f"folder holding upscaler/ (default {EMBEDDED_MODEL})")
    parser.add_argument("--size", type=int, default=1024, help="base size in pixels (a multiple of 16)")
    parser.add_argument("--scale", type=int, choices=(2, 4), default=2, help="upscale factor (default 2)")
    parser.add_argument("--refine-strength", type=float, default=0.3, help="fraction of the schedule re-run at the new size (0: none)")
    parser.add_argument("--refine-steps", type=int, default=None, help="steps of the second pass (default: strength x --steps)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="flux2_klein_uplift.png")
    parser.add_argument("--smoke-test", action="store_true", help="tiny random models: checks the path in seconds, offline")
    return run("flux2_klein_uplift", generate, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
