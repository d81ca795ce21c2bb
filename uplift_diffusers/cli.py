"""Command line interface: ``uplift-diffusers upscale | generate | convert``.

* ``upscale``: super-resolution of image files with a VAE and an UPLiFT upscaler.
* ``generate``: Stable Diffusion text-to-image followed by UPLiFT upscaling.
* ``convert``: the authors' checkpoint (``.safetensors`` / ``.pth`` + YAML) -> a diffusers
  directory (``save_pretrained``) that ``UPLiFTLatentUpscaler.from_pretrained`` loads.

Defaults: the Stable Diffusion 1.5 pipeline (``generate``) or its VAE (``upscale``) and the
authors' released UPLiFT model, from the Hugging Face Hub or its local cache. With every default
cached, the commands run offline (``HF_HUB_OFFLINE=1``). When the Hub cannot be reached (or
offline mode is on) and a model is not cached, the command prints one line saying so (and how to
pass local paths) and exits with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .constants import IMAGE_SUFFIXES, SD15_MODEL_ID, SD15_VAE_SUBFOLDER, UPLIFT_SD15_REPO_ID, UPLIFT_SD15_WEIGHTS_NAME

PROG = "uplift-diffusers"
DTYPES = ("auto", "float32", "float16", "bfloat16")
EXIT_ERROR = 2


class CLIError(Exception):
    """An error reported to the user as one line (exit status 2)."""


# ---------------------------------------------------------------------------------------------
# Hub access
# ---------------------------------------------------------------------------------------------
def hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers at all (one HEAD request to its endpoint)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception:  # noqa: BLE001 - any failure means no answer
        return False
    return True


@contextlib.contextmanager
def cache_only_when_hub_unreachable(quiet: bool):
    """Within the block, use only the local cache when the Hub cannot be reached.

    Without this, each file that diffusers merely checks for and the cache does not hold (e.g.
    a sharded-weights index) waits through huggingface_hub's retries (about 23 s) before the
    cached model is used. With ``HF_HUB_OFFLINE=1`` no check is made.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode() or hub_reachable():
        yield
        return
    if not quiet:
        print(f"{PROG}: the Hugging Face Hub cannot be reached; using the local cache only "
              "(HF_HUB_OFFLINE=1 skips this check).", file=sys.stderr)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def resolve_device(name: Optional[str]):
    import torch

    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CLIError(f"--device {name!r} is not a valid torch device (e.g. cpu, cuda, cuda:1, mps).") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name!r} asks for CUDA but torch.cuda.is_available() is False; use --device cpu.")
    return device


def resolve_dtype(name: str, device):
    """The weights dtype, or ``None`` for float32 (the default of every loader: no cast needed)."""
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else None
    dtype = getattr(torch, name)
    return None if dtype == torch.float32 else dtype


def load_upscaler(args, dtype):
    """The upscaler of --original-checkpoint or --upscaler, by default the authors' release:
    :func:`uplift_diffusers.loaders.load_upscaler`, with "Hub unreachable" as one line."""
    from .loaders.hub import from_hub
    from .loaders.upscaler import load_upscaler as load

    source = args.original_checkpoint if args.original_checkpoint is not None else args.upscaler
    if source is None:
        what = f"the default UPLiFT model ({UPLIFT_SD15_REPO_ID}, {UPLIFT_SD15_WEIGHTS_NAME})"
    else:
        what = f"the upscaler {source!r}"
    flags = "--upscaler DIR or --original-checkpoint FILE"
    return from_hub(what, flags, lambda: load(source, dtype, original_config=args.original_config))


def load_vae_arg(args, dtype):
    """The VAE of --vae: :func:`uplift_diffusers.load_vae`, with "Hub unreachable" as one line."""
    from .loaders.hub import from_hub
    from .loaders.vae import load_vae

    return from_hub(
        f"the VAE {args.vae!r}",
        "--vae DIR (a diffusers VAE folder or a folder with encoder.pth + decoder.pth)",
        lambda: load_vae(args.vae, torch_dtype=dtype),
    )


def collect_inputs(inputs: Sequence[str]) -> List[Path]:
    """Image files named on the command line; directories contribute their images (recursively)."""
    from .image_processor import list_images

    files: List[Path] = []
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise CLIError(f"input directory {entry!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"INPUT: file or directory not found: {entry!r}")
    stems = {}
    for path in files:
        if path.stem in stems:
            raise CLIError(
                f"inputs {str(stems[path.stem])!r} and {str(path)!r} would both be written as {path.stem}_x*.png; "
                "upscale them into different --output directories."
            )
        stems[path.stem] = path
    return files


def open_image(path: Path):
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            image.load()
            return image
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise CLIError(f"cannot read {str(path)!r} as an image: {error}") from error


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------
def cmd_upscale(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from .pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline

    files = collect_inputs(args.inputs)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    vae = load_vae_arg(args, dtype)
    upscaler = load_upscaler(args, dtype)
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upscaler=upscaler).to(device)
    pipe.set_progress_bar_config(disable=True)
    if args.vae_tiling:
        pipe.enable_vae_tiling()
    output = Path(args.output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    for path in tqdm(files, desc="Upscaling", unit="image", disable=args.quiet):
        image = open_image(path)
        try:  # the pipeline checks the image's values where it enters; the error names the file
            result = pipe(image, upscale_factor=args.scale, generator=generator).images[0]
        except ValueError as error:
            if "`image`" not in str(error):
                raise
            raise CLIError(f"{str(path)!r}: {error}") from error
        target = output / f"{path.stem}_x{args.scale}.png"
        result.save(target)
        if not args.quiet:
            tqdm.write(f"{path} ({image.width}x{image.height}) -> {target} ({result.width}x{result.height})")
    return 0


def parse_size(text: str):
    """``"512"`` -> (512, 512); ``"768x512"`` -> width 768, height 512."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v < 8 or v % 8 for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: use N or WIDTHxHEIGHT with multiples of 8 (e.g. 512 or 768x512)"
        )
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def generate_targets(output: str, count: int, seed: int) -> List[Path]:
    path = Path(output).expanduser()
    if path.suffix.lower() in IMAGE_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        if count == 1:
            return [path]
        return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]
    path.mkdir(parents=True, exist_ok=True)
    return [path / f"uplift_{seed}_{i}.png" for i in range(count)]


def import_text_to_image_pipeline():
    """``StableDiffusionUPLiFTPipeline`` (imported on first use, transformers' import notices silenced)."""
    from .pipelines import StableDiffusionUPLiFTPipeline

    return StableDiffusionUPLiFTPipeline


def cmd_generate(args) -> int:
    import torch

    from .loaders.hub import dtype_kwargs, from_hub

    StableDiffusionUPLiFTPipeline = import_text_to_image_pipeline()

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    width, height = args.size
    upscaler = load_upscaler(args, dtype) if args.scale > 1 else None
    extra = {"safety_checker": None, "requires_safety_checker": False} if args.no_safety_checker else {}
    pipe = from_hub(
        f"the Stable Diffusion model {args.model!r}",
        "--model DIR (a diffusers Stable Diffusion folder)",
        lambda: StableDiffusionUPLiFTPipeline.from_pretrained(
            args.model, upscaler=upscaler, **dtype_kwargs(dtype), **extra
        ),
    )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=args.quiet)
    if args.vae_tiling:
        pipe.enable_vae_tiling()
    result = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        height=height,
        width=width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        num_images_per_prompt=args.num_images,
        generator=torch.Generator().manual_seed(args.seed),
        upscale_factor=args.scale,
        return_base_images=args.save_base,
    )
    targets = generate_targets(args.output, len(result.images), args.seed)
    for index, (image, target) in enumerate(zip(result.images, targets)):
        image.save(target)
        print(f"{target} ({image.width}x{image.height})")
        if args.save_base:
            base_target = target.with_name(f"{target.stem}_base{target.suffix}")
            result.base_images[index].save(base_target)
            print(f"{base_target} ({width}x{height}, before upscaling)")
    return 0


def cmd_convert(args) -> int:
    from .models.modeling_uplift import UPLiFTLatentUpscaler

    model = UPLiFTLatentUpscaler.from_single_file(args.checkpoint, config=args.config)
    output = Path(args.output).expanduser()
    model.save_pretrained(str(output))
    parameters = sum(p.numel() for p in model.parameters())
    print(f"saved {parameters:,} parameters ({model.config.latent_channels} latent channels) to {output}")
    return 0


# ---------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------
def _add_upscaler_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        f"upscaler (default: the authors' released SD1.5-VAE model {UPLIFT_SD15_REPO_ID}, from the Hub or its cache)"
    )
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--upscaler", metavar="ID|PATH",
        help="UPLiFT upscaler: a save_pretrained folder (model or pipeline), a folder or file holding the authors' "
        "single file, or a Hub id",
    )
    source.add_argument(
        "--original-checkpoint", metavar="FILE|URL",
        help="the authors' checkpoint: a .safetensors / .pth file, a Hub URL or ORG/REPO/FILE",
    )
    group.add_argument(
        "--original-config", metavar="YAML",
        help="the authors' YAML config for --original-checkpoint (default: read off the checkpoint's shapes)",
    )


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (auto: float16 on CUDA, else float32)")
    parser.add_argument("--vae-tiling", action="store_true", help="decode in tiles (saves memory; for outputs of about 2048 px and more)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="UPLiFT latent upscaling for diffusers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{upscale,generate,convert}")

    up = sub.add_parser("upscale", help="super-resolve image files", description="Super-resolve images: VAE encode -> UPLiFT -> VAE decode.")
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or directories of images")
    up.add_argument("--output", "-o", required=True, metavar="DIR", help="output directory (<name>_x<scale>.png)")
    up.add_argument("--scale", type=int, choices=(2, 4, 8), default=4, help="upscale factor (default 4)")
    up.add_argument(
        "--vae",
        default=SD15_MODEL_ID,
        metavar="ID|PATH",
        help="VAE: Hub id, diffusers directory, or a directory with TAESD-family encoder.pth + decoder.pth "
        f"(default: {SD15_MODEL_ID}, {SD15_VAE_SUBFOLDER}/)",
    )
    _add_upscaler_arguments(up)
    _add_runtime_arguments(up)
    up.set_defaults(handler=cmd_upscale)

    gen = sub.add_parser("generate", help="text-to-image with Stable Diffusion + UPLiFT", description="Generate at --size, then upscale by --scale.")
    gen.add_argument("prompt", metavar="PROMPT")
    gen.add_argument("--model", default=SD15_MODEL_ID, metavar="ID|PATH", help=f"Stable Diffusion pipeline (default {SD15_MODEL_ID})")
    gen.add_argument("--size", type=parse_size, default=(512, 512), metavar="N|WxH", help="base size before upscaling (default 512)")
    gen.add_argument("--scale", type=int, choices=(1, 2, 4, 8), default=2, help="upscale factor (default 2)")
    gen.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    gen.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--num-images", type=int, default=1, help="images to generate (default 1)")
    gen.add_argument("--output", "-o", default="outputs", metavar="FILE|DIR", help="output image file or directory (default outputs/)")
    gen.add_argument("--save-base", action="store_true", help="also save the base image before upscaling (<name>_base.png)")
    gen.add_argument("--no-safety-checker", action="store_true", help="do not load the model's safety checker")
    _add_upscaler_arguments(gen)
    _add_runtime_arguments(gen)
    gen.set_defaults(handler=cmd_generate)

    conv = sub.add_parser("convert", help="authors' checkpoint -> diffusers directory", description="Convert the authors' UPLiFT checkpoint to a save_pretrained directory.")
    conv.add_argument("checkpoint", metavar="CHECKPOINT", help="the authors' .safetensors / .pth file, a Hub URL or ORG/REPO/FILE")
    conv.add_argument(
        "--config", metavar="YAML", default=None,
        help="the authors' YAML config (default: read off the checkpoint's shapes, the official noise scale)",
    )
    conv.add_argument("--output", "-o", required=True, metavar="DIR", help="output directory")
    conv.set_defaults(handler=cmd_convert)
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args) -> None:
    if getattr(args, "original_config", None) is not None and args.original_checkpoint is None:
        parser.error("--original-config needs --original-checkpoint")
    for name in ("steps", "num_images"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 on success, 2 on errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_arguments(parser, args)
    except SystemExit as exit_:  # argparse printed its message (or --help)
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    try:
        if args.command in ("upscale", "generate"):  # their defaults come from the Hub or its cache
            with cache_only_when_hub_unreachable(args.quiet):
                return args.handler(args)
        return args.handler(args)
    except Exception as error:  # noqa: BLE001 - user-facing errors become one line, others propagate
        from .loaders.hub import HubUnavailableError, is_connection_error

        if isinstance(error, HubUnavailableError):
            message = str(error)
        elif is_connection_error(error):
            message = (
                "cannot reach the Hugging Face Hub and a model is not in the local cache; pass local paths "
                "(--vae, --upscaler or --original-checkpoint, --model)."
            )
        elif isinstance(error, (CLIError, ValueError, FileNotFoundError)):
            message = " ".join(str(error).split())
        else:
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
