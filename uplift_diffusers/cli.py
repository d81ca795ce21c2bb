"""The ``uplift-diffusers`` command: ``upscale`` images, ``generate`` from a prompt, ``convert`` the
authors' checkpoint (docs/command-line.md). Flags and the Hub cache are checked before torch or
diffusers is imported, so that errors answer at once, in one line (exit statuses: :data:`EXIT_STATUSES`).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .constants import (
    DEFAULT_BACK_PROJECTION_STEPS, ENSEMBLE_SIZES, IMAGE_SUFFIXES, SD15_MODEL_ID, SD15_VAE_SUBFOLDER, UPLIFT_SD15_REPO_ID,
    UPLIFT_SD15_WEIGHTS_NAME, UPSCALER_SUBFOLDER,
)
from .utils.memory import parse_memory
from .utils.output_size import check_upscale_factor, output_size_for

PROG = "uplift-diffusers"
EMBEDDED_MODEL = "examples/models/uplift-taef2-bsds500"
#: Shown by ``--help``; docs/command-line.md says what each covers.
EXIT_STATUSES = {
    0: "done",
    1: "a failure while running: a model could not be loaded, or some inputs failed (each listed)",
    2: "a usage or input error, found before any model loads",
    130: "interrupted (Ctrl-C); the outputs already written are complete",
}
#: Text-to-image pipelines ``generate`` takes (``_class_name`` of ``model_index.json``) -> family.
PIPELINE_FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionUPLiFTPipeline": "sd", "Flux2Pipeline": "flux2",
                     "Flux2KleinPipeline": "flux2"}
UPSCALER_FILES = ("config.json", UPLIFT_SD15_WEIGHTS_NAME, f"{UPSCALER_SUBFOLDER}/config.json")
VAE_FILES = ("config.json", f"{SD15_VAE_SUBFOLDER}/config.json")
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


class UsageError(Exception):
    """A usage or input error found before any work (exit status 2)."""


class Failure(Exception):
    """A failure while running (exit status 1)."""


def checked_by(check, expected: str):
    """An argparse ``type=`` checked by the library's own check, whose ValueError becomes the usage
    error ``'TEXT' is not <expected>``."""
    def parse(text: str):
        try:
            return check(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
    return parse


parse_scale = checked_by(lambda text: check_upscale_factor(float(text)), "a scale: use a number >= 1 (e.g. 2, 3 or 1.5)")
parse_max_memory = checked_by(parse_memory, "a size: use bytes or e.g. 3GB, 500MB")


def parse_count(text: str, minimum: int) -> int:
    if not text.strip().isdigit() or int(text) < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {minimum}")
    return int(text)


def non_empty(text: str) -> str:
    """A model flag: a path or a Hub id, not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: pass a file, a folder or a Hub id")
    return text


def parse_output_size(text: str) -> Tuple[Optional[int], Optional[int]]:
    """``upscale --size``: ``"1920x1080"`` -> (1920, 1080); ``"1920x"`` / ``"x1080"``: that side,
    the other keeps the aspect ratio (None)."""
    match = re.fullmatch(r"(\d*)x(\d*)", text.lower())
    sides = tuple(int(side) if side else None for side in match.groups()) if match else (None, None)
    if sides == (None, None) or 0 in sides:
        raise argparse.ArgumentTypeError(f"{text!r} is not an output size: use WIDTHxHEIGHT (e.g. 1920x1080), or one side (1920x or x1080)")
    return sides


def parse_size(text: str) -> Tuple[int, int]:
    """``generate --size``: ``"512"`` -> (512, 512); ``"768x512"`` -> width 768, height 512."""
    parts = text.lower().split("x")
    values = [int(p) for p in parts if p.isdigit()]
    if len(values) != len(parts) or len(values) not in (1, 2) or any(v < 8 or v % 8 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use N or WIDTHxHEIGHT, multiples of 8 (e.g. 768x512)")
    return values[0], values[-1]


def check_models(models: Sequence[Tuple[str, Optional[str], Sequence[str]]], hint: str) -> None:
    """Check ``(flag, source, files)`` models before loading any (a None source: none asked for): a
    local path must exist; a Hub model must be cached, unless the Hub answers. Offline or
    unreachable, every missing model is named in one line with ``hint``, and the Hub is off for the
    rest of the command (no waiting)."""
    from huggingface_hub import constants, try_to_load_from_cache

    from .loaders.hub import hub_file_of, hub_reachable, looks_like_local_path

    missing, from_hub = [], False
    for flag, source, files in models:
        if source is None or Path(source).expanduser().exists():
            continue
        hub_file = named_errors(flag, source, lambda: hub_file_of(source, flag), UsageError)
        if hub_file is None and (looks_like_local_path(source) or not _REPO_ID.fullmatch(source)):
            raise UsageError(f"{flag} {source!r}: no such file or folder, and not a Hub id (org/name)")
        repo_id, revision = source, None
        if hub_file is not None:  # one file of a repository, maybe at a revision
            repo_id, name, revision = hub_file
            files = (name,)
        from_hub = True
        # cached: any of the files (a pipeline's vae/config.json counts); the cache's "absent" marker is no file
        if not any(isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str) for name in files):
            missing.append(f"{flag} {source}")
    why = "HF_HUB_OFFLINE is set"
    if from_hub and not constants.is_offline_mode() and not hub_reachable():
        why = "the Hugging Face Hub cannot be reached"
        os.environ["HF_HUB_OFFLINE"] = "1"  # read from the cache, without waiting on the network
        constants.HF_HUB_OFFLINE = True
    if missing and constants.is_offline_mode():
        raise Failure(f"{why} and the local Hub cache lacks {', '.join(missing)}; {hint}")


def one_line(error: BaseException) -> str:
    """An error as one line of the command line, where the latent-space guard's override is a flag."""
    message = " ".join(str(error).split()).replace("check_latent_space=False", "--ignore-latent-space")
    return message or type(error).__name__


def named_errors(flag: str, source, call, error_type=Failure):
    """``call()``, with a library's error (naming `flag` or its own argument) as one ``error_type``
    line naming ``flag``, and ``source`` where the message does not."""
    try:
        return call()
    except (ValueError, OSError) as error:
        message = one_line(error)
        for name in (f"`{flag}`", "`pretrained_model_link_or_path`", "`pretrained_model_name_or_path`"):
            message = message.replace(name, flag)
        raise error_type(message if flag in message else f"{flag} {source!r}: {message}") from error


def load_upscaler(source: str, config: Optional[str], dtype, subfolder: Optional[str] = None):
    """An UPLiFT upscaler: a file or Hub file by ``from_single_file``; a folder (a model's, or a
    pipeline's ``upscaler/``) or a Hub id by ``from_pretrained``."""
    from .loaders.hub import hub_file_of
    from .models.modeling_uplift import UPLiFTLatentUpscaler

    path = Path(source).expanduser()
    if path.is_file() or hub_file_of(source, "--upscaler") is not None:
        return named_errors("--upscaler", source, lambda: UPLiFTLatentUpscaler.from_single_file(
            source, config=config, dtype=dtype))
    if (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        subfolder = UPSCALER_SUBFOLDER
    return named_errors("--upscaler", source, lambda: UPLiFTLatentUpscaler.from_pretrained(
        source, subfolder=subfolder, dtype=dtype))


def device_and_dtype(args):
    import torch

    from diffusers.utils.torch_utils import get_device

    try:
        device = torch.device(args.device or get_device())
        torch.empty(0, device=device)  # a device this machine has
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f"--device {args.device!r}: {one_line(error)} (e.g. cpu, cuda, cuda:1, mps)") from None
    if args.dtype == "auto":
        return device, torch.float16 if device.type == "cuda" else None
    return device, getattr(torch, args.dtype)


def writable_folder(path: str) -> Path:
    from .utils.atomic_files import check_writable_directory

    return named_errors("--output", path, lambda: check_writable_directory(path, "--output"), UsageError)


def plan_outputs(args) -> Tuple[List[Tuple[Path, Path, Tuple[int, int]]], List[str]]:
    """The images named on the command line (folders: their images, recursively), each with its
    output file, named after its output size, and that size (width, height); and the failures of
    those that cannot be read (they fail alone, at the end)."""
    import PIL.Image

    missing = [entry for entry in args.inputs if not Path(entry).expanduser().exists()]
    if missing:
        raise UsageError(f"INPUT not found: {', '.join(repr(entry) for entry in missing)}")
    output = writable_folder(args.output)
    files: List[Path] = []
    for entry in args.inputs:
        path = Path(entry).expanduser()
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
        if not found:
            raise UsageError(f"INPUT {entry!r}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files.extend(found)
    width, height = args.size or (None, None)
    plan, failures = [], []
    for path in files:
        try:
            with PIL.Image.open(path) as image:
                size = image.size
        except (OSError, ValueError) as error:
            failures.append(f"{str(path)!r}: cannot read it as an image: {one_line(error)}")
            continue
        try:
            out_h, out_w = output_size_for(size[1], size[0], args.scale, height, width, ("--scale", "--size height", "--size width"))
        except ValueError as error:
            raise UsageError(f"{str(path)!r} is {size[0]}x{size[1]}: {error}".replace("`", "")) from None
        suffix = f"_{out_w}x{out_h}" if args.size else f"_x{args.scale:g}"
        target = output / f"{path.stem}{suffix}.png"
        if target.is_dir() or any(target == other for _, other, _ in plan):
            raise UsageError(f"--output: {str(target)!r} is a folder or the output of another input; use another --output")
        plan.append((path, target, (out_w, out_h)))
    return plan, failures


def load_super_resolution(args, vae: Optional[str], upscaler: Optional[str], dtype):
    """``--model`` (a pipeline folder or Hub id), its parts replaced by ``vae`` / ``upscaler`` when given."""
    from .loaders.vae import load_vae
    from .pipelines import UPLiFTSuperResolutionPipeline

    parts = {"check_latent_space": not args.ignore_latent_space}
    if vae is not None:
        parts["vae"] = named_errors("--vae", vae, lambda: load_vae(vae, dtype=dtype, argument="--vae"))
    if upscaler is not None:
        parts["upscaler"] = load_upscaler(upscaler, args.upscaler_config, dtype)
    if not args.model:
        return named_errors("--upscaler", upscaler, lambda: UPLiFTSuperResolutionPipeline(**parts))
    return named_errors("--model", args.model, lambda: UPLiFTSuperResolutionPipeline.from_pretrained(
        args.model, **parts, dtype=dtype))


def cmd_upscale(args) -> List[str]:
    args.scale = None if args.size else args.scale  # --scale's default is 4
    plan, failures = plan_outputs(args)
    vae = args.vae or (None if args.model else SD15_MODEL_ID)  # without --model: the defaults
    upscaler = args.upscaler or (None if args.model else UPLIFT_SD15_REPO_ID)
    models = [("--model", args.model, ("model_index.json",)), ("--vae", vae, VAE_FILES), ("--upscaler", upscaler, UPSCALER_FILES)]
    check_models(models, f"pass local models, e.g. --model {EMBEDDED_MODEL} (the embedded TAEF2 model)")
    import PIL.Image
    import torch

    from .utils.atomic_files import atomic_save_image

    device, dtype = device_and_dtype(args)
    pipe = load_super_resolution(args, vae, upscaler, dtype).to(device)
    pipe.set_progress_bar_config(disable=args.quiet)
    if args.tiling:
        pipe.enable_tiling()
    generator = torch.Generator().manual_seed(args.seed)
    for path, target, (width, height) in plan:
        try:
            with PIL.Image.open(path) as image:
                result = pipe(image, width=width, height=height, generator=generator, ensemble=args.ensemble,
                              back_projection_steps=args.back_projection_steps, max_memory=args.max_memory).images[0]
            atomic_save_image(result, target)
            print(f"{target} ({result.width}x{result.height})")
        except (OSError, ValueError, torch.OutOfMemoryError) as error:
            hint = "; try --tiling" if isinstance(error, torch.OutOfMemoryError) else ""
            failures.append(f"{str(path)!r}: {one_line(error)}{hint}")
    return failures


def plan_generation(args) -> Tuple[List[Path], dict, str]:
    """What ``generate`` checks before loading anything: its flags, its output files (``--output``
    an image file name, or a folder: ``uplift_<seed>_<i>.png``) and ``--model``'s
    ``model_index.json``, returned with the family of the pipeline class it names."""
    refine = args.refine_strength
    if refine and (not 0 < refine < 1 or args.scale not in (2, 4, 8) or args.back_projection_steps):
        raise UsageError(f"--refine-strength needs a fraction of the noise schedule in [0, 1) (got {refine:g}), "
                         f"--scale 2, 4 or 8 (the refined latents exist at powers of two; got {args.scale:g}) and "
                         f"no --back-projection-steps (got {args.back_projection_steps})")
    path = Path(args.output).expanduser()
    if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir():
        folder = writable_folder(str(path.parent))
        names = [path.name] if args.num_images == 1 else [f"{path.stem}_{i}{path.suffix}" for i in range(args.num_images)]
    else:
        folder = writable_folder(args.output)
        names = [f"uplift_{args.seed}_{i}.png" for i in range(args.num_images)]
    check_models([("--model", args.model, ("model_index.json",))], "pass a local --model folder")
    from diffusers import DiffusionPipeline

    config = named_errors("--model", args.model, lambda: DiffusionPipeline.load_config(args.model))
    pipeline = config.get("_class_name")
    family = PIPELINE_FAMILIES.get(pipeline)
    if family is None:
        raise UsageError(f"--model {args.model!r} is a {pipeline}; supported: {', '.join(PIPELINE_FAMILIES)}")
    if family != "sd" and args.negative_prompt is not None:
        raise UsageError(f"--negative-prompt applies to Stable Diffusion pipelines, not {pipeline}")
    if family != "sd" and args.scale > 1 and args.upscaler is None and "upscaler" not in config:
        raise UsageError(f"{pipeline} needs --upscaler: an UPLiFT model for its latents (e.g. --upscaler {EMBEDDED_MODEL})")
    return [folder / name for name in names], config, family


def load_text_to_image(args, config: dict, family: str, device, dtype):
    """The pipeline of ``--model`` (the class ``model_index.json`` names) and its upscaler (see ``generate --help``)."""
    import diffusers

    upscaler = None
    if args.scale > 1:
        own = args.upscaler is None and "upscaler" in config  # the --model folder's upscaler/
        source = args.upscaler or (args.model if own else UPLIFT_SD15_REPO_ID)
        check_models([("--upscaler", source, UPSCALER_FILES)], "pass a local --upscaler")
        upscaler = load_upscaler(source, args.upscaler_config, dtype, UPSCALER_SUBFOLDER if own else None).to(device)
    cls = diffusers.StableDiffusionPipeline if family == "sd" else getattr(diffusers, config["_class_name"])
    extra = {"safety_checker": None, "requires_safety_checker": False} if args.no_safety_checker and family == "sd" else {}
    pipe = named_errors("--model", args.model, lambda: cls.from_pretrained(args.model, **extra, dtype=dtype))
    return pipe.to(device), upscaler


def cmd_generate(args) -> List[str]:
    targets, config, family = plan_generation(args)
    import PIL.Image
    import torch

    from . import apply_uplift, hires_fix
    from .utils.atomic_files import atomic_save_image

    device, dtype = device_and_dtype(args)
    pipe, upscaler = load_text_to_image(args, config, family, device, dtype)
    pipe.set_progress_bar_config(disable=args.quiet)
    if args.tiling:
        pipe.vae.enable_tiling()
    width, height = args.size or (None, None)
    options = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, "negative_prompt": args.negative_prompt,
               "width": width, "height": height}
    call = {"prompt": args.prompt, "num_images_per_prompt": args.num_images, "generator": torch.Generator().manual_seed(args.seed),
            **{key: value for key, value in options.items() if value is not None}}
    if upscaler is None:
        images = pipe(**call).images
    elif args.refine_strength:
        images = hires_fix(pipe, upscaler, upscale_factor=int(args.scale), strength=args.refine_strength,
                           refine_steps=args.refine_steps, check_latent_space=not args.ignore_latent_space, **call).images
    else:
        apply_uplift(pipe, upscaler, upscale_factor=args.scale, back_projection_steps=args.back_projection_steps,
                     max_memory=args.max_memory, check_latent_space=not args.ignore_latent_space)
        images = pipe(**call).images
    for image, target in zip(images, targets):
        atomic_save_image(image, target, format=PIL.Image.registered_extensions().get(target.suffix.lower(), "PNG"))
        print(f"{target} ({image.width}x{image.height})")
    return []


def cmd_convert(args) -> List[str]:
    output = writable_folder(args.output)
    check_models([("CHECKPOINT", args.checkpoint, (UPLIFT_SD15_WEIGHTS_NAME,))],
                 "download it once with network access (`hf download ORG/REPO FILE`) or pass a local file")
    from .models.modeling_uplift import UPLiFTLatentUpscaler

    model = named_errors("CHECKPOINT", args.checkpoint, lambda: UPLiFTLatentUpscaler.from_single_file(
        args.checkpoint, config=args.config))
    model.save_pretrained(str(output))
    print(f"saved {sum(p.numel() for p in model.parameters()):,} parameters ({model.config.latent_channels} latent channels) to {output}")
    return []


def _add_common_arguments(parser: argparse.ArgumentParser, back_projection_steps: int) -> None:
    parser.add_argument("--upscaler", type=non_empty, metavar="FILE|DIR|ID", help="UPLiFT model: the authors' file (.safetensors / "
                        ".pth, a Hub file URL or ORG/REPO/FILE), a save_pretrained or pipeline folder, or a Hub id")
    parser.add_argument("--upscaler-config", metavar="YAML", help="the authors' YAML config of an --upscaler file "
                        "(default: read off its shapes)")
    parser.add_argument("--back-projection-steps", type=lambda t: parse_count(t, 0), default=back_projection_steps,
                        metavar="N", help="rounds of back-projection onto the low-resolution image (upscale: the "
                        "input; generate: the image before upscaling; 0: off; default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", help="torch device (default: cuda, mps or cpu, whichever is available)")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="weights dtype (auto: float16 on CUDA, else float32)")
    parser.add_argument("--tiling", "--vae-tiling", action="store_true", help="upscale and decode in overlapping tiles (bounded memory)")
    parser.add_argument("--max-memory", type=parse_max_memory, default="1.5GB", metavar="SIZE",
                        help="without --tiling, tile when the upscale stage's estimated peak passes SIZE (bytes, 500MB, 3GB; default 1.5GB)")
    parser.add_argument("--ignore-latent-space", action="store_true",
                        help="use an upscaler trained for another VAE latent space anyway (a warning instead of an error; experiments)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    epilog = "exit statuses:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_STATUSES.items())
    common = dict(epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser = argparse.ArgumentParser(prog=PROG, description="UPLiFT latent upscaling for diffusers.", **common)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="super-resolve image files", **common, description=(
        "Super-resolve images: VAE encode, UPLiFT, VAE decode. A file that fails does not stop the others. "
        f"Default models: the SD1.5 VAE and the authors' release, from the Hub or its cache; offline, "
        f"--model {EMBEDDED_MODEL} is the embedded one."))
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    up.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder (<name>_x<scale>.png, <name>_<W>x<H>.png)")
    up.add_argument("--model", type=non_empty, metavar="DIR|ID", help="a super-resolution pipeline folder or Hub id (model_index.json, vae/, upscaler/)")
    up.add_argument("--vae", type=non_empty, metavar="DIR|ID", help=f"VAE: a diffusers folder, a folder with TAESD-family encoder.pth + "
                    f"decoder.pth, or a Hub id (default: {SD15_MODEL_ID}, {SD15_VAE_SUBFOLDER}/)")
    size = up.add_mutually_exclusive_group()
    size.add_argument("--scale", type=parse_scale, default=4.0, metavar="FACTOR", help="upscale factor, any number >= 1 (default 4)")
    size.add_argument("--size", type=parse_output_size, metavar="WxH",
                      help="exact output size, e.g. 1920x1080; one side (1920x or x1080) keeps the aspect ratio")
    up.add_argument("--ensemble", type=int, choices=ENSEMBLE_SIZES, default=1,
                    help="average the upscales of that many flipped / rotated copies (N times the time; default 1)")
    _add_common_arguments(up, DEFAULT_BACK_PROJECTION_STEPS)
    up.set_defaults(handler=cmd_upscale)

    gen = sub.add_parser("generate", help="text-to-image with UPLiFT", **common, description=(
        f"Generate with a text-to-image pipeline ({', '.join(PIPELINE_FAMILIES)}), upscaled by --scale with UPLiFT; "
        "with --refine-strength, the end of the denoising is re-run at the new size (hires fix). The upscaler: "
        "--upscaler, else the --model folder's own upscaler/, else (Stable Diffusion 1.5) the authors' release."))
    gen.add_argument("prompt", metavar="PROMPT")
    gen.add_argument("--model", type=non_empty, default=SD15_MODEL_ID, metavar="DIR|ID", help=f"the pipeline (default {SD15_MODEL_ID})")
    gen.add_argument("--output", "-o", default="outputs", metavar="FILE|DIR", help="output image or folder (default outputs/)")
    gen.add_argument("--scale", type=parse_scale, default=2.0, metavar="FACTOR", help="upscale factor >= 1 (1: none; default 2)")
    gen.add_argument("--size", type=parse_size, metavar="N|WxH", help="size before upscaling (default: the pipeline's)")
    gen.add_argument("--steps", type=lambda t: parse_count(t, 1), metavar="N", help="denoising steps (default: the pipeline's)")
    gen.add_argument("--guidance-scale", type=float, metavar="G", help="guidance scale (default: the pipeline's)")
    gen.add_argument("--negative-prompt", metavar="TEXT", help="what not to generate (Stable Diffusion)")
    gen.add_argument("--num-images", type=lambda t: parse_count(t, 1), default=1, metavar="N", help="images (default 1)")
    gen.add_argument("--no-safety-checker", action="store_true", help="do not load a Stable Diffusion model's safety checker")
    gen.add_argument("--refine-strength", type=float, default=0.0, metavar="S",
                     help="re-run this fraction of the noise schedule at the new size, in [0, 1) (default 0: off)")
    gen.add_argument("--refine-steps", type=lambda t: parse_count(t, 1), metavar="N",
                     help="denoising steps of the refinement (default: S x --steps)")
    _add_common_arguments(gen, 0)
    gen.set_defaults(handler=cmd_generate)

    conv = sub.add_parser("convert", help="the authors' checkpoint -> a diffusers folder", **common,
                          description="Convert the authors' UPLiFT checkpoint to a save_pretrained folder.")
    conv.add_argument("checkpoint", type=non_empty, metavar="CHECKPOINT", help="a .safetensors / .pth file, a Hub file URL or ORG/REPO/FILE")
    conv.add_argument("--config", metavar="YAML", help="the authors' YAML config (default: read off the checkpoint's shapes)")
    conv.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder")
    conv.set_defaults(handler=cmd_convert)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns its exit status (:data:`EXIT_STATUSES`)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse printed --help (0) or its usage error (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    return run(PROG, args.handler, args)


def run(prog: str, handler, args) -> int:
    """``handler(args)`` (which returns the failed inputs) with the command line's conventions, for
    the examples too: one ``prog: error: ...`` line and no traceback, the :data:`EXIT_STATUSES`. A
    ValueError is shown as it is (the library's errors name the argument and the fix)."""
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    try:
        failures = handler(args)
        if failures:
            raise Failure(f"{len(failures)} input(s) failed: " + "; ".join(failures))
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the outputs already written are complete", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every error is one line
        message = one_line(error)
        if not isinstance(error, (UsageError, Failure, ValueError)):
            message = f"{type(error).__name__}: {message}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    finally:  # check_models may have turned the Hub off for this command
        if offline[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        constants.HF_HUB_OFFLINE = offline[1]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
