"""Command line interface: ``uplift-diffusers upscale | generate | convert``.

* ``upscale``: super-resolution of image files with a VAE and an UPLiFT upscaler.
* ``generate``: Stable Diffusion text-to-image followed by UPLiFT upscaling.
* ``convert``: the authors' checkpoint (``.safetensors`` / ``.pth`` + YAML) -> a diffusers
  directory (``save_pretrained``) that ``UPLiFTLatentUpscaler.from_pretrained`` loads.

Defaults: the Stable Diffusion 1.5 pipeline (``generate``) or its VAE (``upscale``) and the
authors' released UPLiFT model, from the Hugging Face Hub or its local cache. Before loading
anything, every model of the command is looked up in the local cache; when the Hub may not be
used (``HF_HUB_OFFLINE=1``) or does not answer within a few seconds, the models missing from the
cache are named together in one line.

Errors are one line on stderr. Exit statuses (:data:`EXIT_STATUSES`): 0 done; 1 some inputs of a
batch failed (the others were written; each failure is listed at the end); 2 the command could
not run (bad argument, missing file or model, unwritable output, unreadable checkpoint; nothing
written); 3 an unexpected internal error (``UPLIFT_DIFFUSERS_TRACEBACK=1`` shows the traceback);
130 interrupted (Ctrl-C; outputs already written are complete, none is partial).

Start-up is fast: torch, diffusers and the models are imported inside the commands only, so
``--help`` and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .constants import (
    DEFAULT_BACK_PROJECTION_STEPS, ENSEMBLE_SIZES, IMAGE_SUFFIXES, SD15_MODEL_ID, SD15_VAE_SUBFOLDER, UPLIFT_SD15_REPO_ID,
    UPLIFT_SD15_WEIGHTS_NAME, UPSCALER_SUBFOLDER,
)

PROG = "uplift-diffusers"
DTYPES = ("auto", "float32", "float16", "bfloat16")
EXIT_OK = 0
EXIT_INPUTS_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
#: Exit status -> meaning (the README's table).
EXIT_STATUSES = {
    EXIT_OK: "done",
    EXIT_INPUTS_FAILED: "some inputs failed (the others were written; each failure is listed at the end)",
    EXIT_ERROR: "the command could not run: bad argument, missing file or model, unwritable output, "
    "unreadable checkpoint (nothing written)",
    EXIT_INTERNAL: "unexpected internal error (set UPLIFT_DIFFUSERS_TRACEBACK=1 to see the traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); outputs already written are complete",
}
TRACEBACK_ENV = "UPLIFT_DIFFUSERS_TRACEBACK"
DEFAULT_UPSCALE = 4.0
DEFAULT_GENERATE_SCALE = 2.0
UPSCALER_HINT = "--upscaler DIR or --original-checkpoint FILE"
#: Files of a Hub repository an upscaler is read from (any one cached counts): a save_pretrained
#: config, the authors' single file, a pipeline's upscaler.
UPSCALER_HUB_FILES = ("config.json", UPLIFT_SD15_WEIGHTS_NAME, f"{UPSCALER_SUBFOLDER}/config.json")
#: Files of a Hub repository a VAE is read from (any one cached counts): its own config or a pipeline's vae/.
VAE_HUB_FILES = ("config.json", f"{SD15_VAE_SUBFOLDER}/config.json")


class CLIError(Exception):
    """An error reported to the user as one line (exit status 2)."""


class InputError(Exception):
    """One input of a batch failed; the others go on (exit status 1 at the end)."""


# ---------------------------------------------------------------------------------------------
# Argument types (no heavy imports)
# ---------------------------------------------------------------------------------------------
def parse_scale(text: str) -> float:
    """``--scale``: any finite real number >= 1 (``"3"``, ``"1.5"``), by the pipelines' own check."""
    from .utils.output_size import check_upscale_factor  # no torch

    try:
        return check_upscale_factor(float(text), "--scale")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a scale: use a number >= 1 (e.g. 2, 3 or 1.5)") from None


def parse_steps(text: str) -> int:
    """``--back-projection-steps``: an int >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of steps: use an integer >= 0 (0 turns it off)")
    return int(text)


def non_empty(text: str) -> str:
    """A model / file flag: any non-empty text (a path or a Hub id)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: pass a folder, a file or a Hub id")
    return text


def parse_output_size(text: str) -> Tuple[Optional[int], Optional[int]]:
    """``upscale --size``: ``"1920x1080"`` -> (1920, 1080) exactly; ``"1920x"`` / ``"x1080"``: that
    side, the other keeps the aspect ratio. Returns ``(width, height)``, None for a kept side."""
    parts = text.lower().split("x")
    values: List[Optional[int]] = []
    if len(parts) == 2:
        for part in parts:
            if part == "":
                values.append(None)
            elif part.isdigit() and int(part) >= 1:
                values.append(int(part))
    if len(values) != 2 or values == [None, None]:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an output size: use WIDTHxHEIGHT (e.g. 1920x1080), or one side (1920x or x1080) "
            "to keep the aspect ratio"
        )
    return values[0], values[1]


def parse_size(text: str):
    """``generate --size``: ``"512"`` -> (512, 512); ``"768x512"`` -> width 768, height 512."""
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


def scale_suffix(args) -> str:
    """The output name's suffix: ``_x4``, ``_x1.5``, or ``_1920x1080`` / ``_1920x`` for ``--size``."""
    if args.size is not None:
        width, height = args.size
        return f"_{width or ''}x{height or ''}"
    return f"_x{args.scale:g}"


# ---------------------------------------------------------------------------------------------
# Checks before any work: inputs, outputs, models
# ---------------------------------------------------------------------------------------------
def check_input_paths(inputs: Sequence[str]) -> None:
    missing = [entry for entry in inputs if not Path(entry).expanduser().exists()]
    if missing:
        raise CLIError(f"INPUT not found: {', '.join(repr(m) for m in missing)}.")


def collect_inputs(inputs: Sequence[str]) -> List[Path]:
    """Image files named on the command line; directories contribute their images (recursively)."""
    from .image_processor import list_images

    check_input_paths(inputs)
    files: List[Path] = []
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise CLIError(f"input directory {entry!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            files.extend(found)
        else:
            files.append(path)
    stems = {}
    for path in files:
        if path.stem in stems:
            raise CLIError(
                f"inputs {str(stems[path.stem])!r} and {str(path)!r} would both be written as {path.stem}_x*.png; "
                "upscale them into different --output directories."
            )
        stems[path.stem] = path
    return files


def writable_directory(path: str, flag: str = "--output") -> Path:
    """``path`` as a folder files can be written in (created if needed), checked before any work."""
    from .utils.atomic_files import check_writable_directory

    try:
        return check_writable_directory(path, flag)
    except ValueError as error:
        raise CLIError(str(error).replace(f"`{flag}`", flag)) from error


def check_targets(targets: Sequence[Path], flag: str = "--output") -> None:
    folders = [t for t in targets if t.is_dir()]
    if folders:
        raise CLIError(f"{flag}: {str(folders[0])!r} is a folder; it would be replaced by an output image. Move it away.")


def upscaler_source(args) -> Tuple[str, str]:
    """``(flag, model string)`` of the upscaler the command loads (default: the authors' release)."""
    if args.original_checkpoint is not None:
        return "--original-checkpoint", args.original_checkpoint
    return "--upscaler", args.upscaler or UPLIFT_SD15_REPO_ID


def upscaler_model(args):
    """The upscaler the command loads, as :class:`~uplift_diffusers.loaders.hub.HubModel`."""
    from .loaders.hub import HubModel

    flag, source = upscaler_source(args)
    if args.original_checkpoint is None and args.upscaler is None:
        what = f"the default UPLiFT model ({UPLIFT_SD15_REPO_ID}, {UPLIFT_SD15_WEIGHTS_NAME})"
    else:
        what = f"the {'checkpoint' if flag == '--original-checkpoint' else 'upscaler'} {source!r}"
    return HubModel(source, UPSCALER_HUB_FILES, what=what, hint=UPSCALER_HINT)


def command_models(args) -> list:
    """Every model the command loads (the missing ones are reported together)."""
    from .loaders.hub import HubModel

    upscaler = upscaler_model(args)
    if args.command == "upscale":
        return [HubModel(args.vae, VAE_HUB_FILES, what=f"the VAE {args.vae!r}", hint="--vae DIR"), upscaler]
    model = HubModel(args.model, ("model_index.json",), what=f"the Stable Diffusion model {args.model!r}", hint="--model DIR")
    return [model, upscaler] if args.scale > 1 else [model]


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


def load_named(flag: str, source: str, what: str, hint: str, load):
    """``load()``, its errors naming ``flag`` (the loaders name their own argument) and "the Hub
    cannot be reached and the model is not cached" as one line naming ``hint``."""
    from .loaders.hub import HubUnavailableError, from_hub

    try:
        return from_hub(what, hint, load)
    except HubUnavailableError:
        raise
    except (ValueError, OSError) as error:
        message = _one_line(error)
        for name in ("`pretrained_model_link_or_path`", "`pretrained_model_name_or_path`", "path_or_id"):
            message = message.replace(name, flag)
        raise CLIError(message if flag in message else f"{flag} {source!r}: {message}") from error


def load_upscaler(args, dtype):
    """The upscaler of --original-checkpoint or --upscaler (by default the authors' release), by
    ``UPLiFTLatentUpscaler.from_single_file`` (a file, a Hub file URL or ORG/REPO/FILE) or
    ``from_pretrained`` (a folder, a pipeline folder's ``upscaler/``, a Hub id)."""
    from .models.modeling_uplift import UPLiFTLatentUpscaler

    flag, source = upscaler_source(args)
    path = Path(source).expanduser()
    if flag == "--original-checkpoint" or path.is_file():
        def load():
            return UPLiFTLatentUpscaler.from_single_file(source, config=args.original_config, torch_dtype=dtype)
    else:
        pipeline_folder = path.is_dir() and not (path / "config.json").is_file() and (path / UPSCALER_SUBFOLDER / "config.json").is_file()
        options = {"subfolder": UPSCALER_SUBFOLDER} if pipeline_folder else {}
        if dtype is not None:
            options["torch_dtype"] = dtype

        def load():
            return UPLiFTLatentUpscaler.from_pretrained(source, **options)
    return load_named(flag, source, upscaler_model(args).label, UPSCALER_HINT, load)


def load_vae_arg(args, dtype):
    """The VAE of --vae: :func:`uplift_diffusers.load_vae`, with "Hub unreachable" as one line."""
    from .loaders.vae import load_vae

    hint = "--vae DIR (a diffusers VAE folder or a folder with encoder.pth + decoder.pth)"
    return load_named("--vae", args.vae, f"the VAE {args.vae!r}", hint, lambda: load_vae(args.vae, torch_dtype=dtype, argument="--vae"))


def open_image(path: Path):
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            image.load()
            return image
    except (PIL.UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"cannot read it as an image: {' '.join(str(error).split())}") from error


def configure_progress(pipe, args, **config) -> None:
    """Show the pipeline's own progress bar (its stages) unless --quiet, below the per-file bar."""
    pipe.set_progress_bar_config(disable=args.quiet, leave=False, dynamic_ncols=True, **config)


def enable_tiling(pipe, args) -> None:
    if args.tiling:
        pipe.enable_tiling() if hasattr(pipe, "enable_tiling") else pipe.enable_vae_tiling()


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------
def upscale_one(pipe, path: Path, target: Path, args, generator) -> str:
    """Upscale one file to ``target`` (written atomically); InputError for problems of this file."""
    import torch

    from .utils.output_size import output_size_for
    from .utils.atomic_files import atomic_save_image

    image = open_image(path)
    out_width, out_height = args.size if args.size is not None else (None, None)
    factor = None if args.size is not None else args.scale
    try:  # the one size rule, with errors naming the flags
        output_size_for(image.height, image.width, factor, out_height, out_width, names=("--scale", "--size height", "--size width"))
    except ValueError as error:
        raise InputError(f"({image.width}x{image.height}): {error}") from error
    try:  # the pipeline checks the image's values where it enters; those errors are this file's
        result = pipe(
            image, upscale_factor=factor, height=out_height, width=out_width, generator=generator,
            back_projection_steps=args.back_projection_steps, ensemble=args.ensemble,
        ).images[0]
    except ValueError as error:
        if "`image`" not in str(error):
            raise
        raise InputError(str(error)) from error
    except (MemoryError, torch.OutOfMemoryError) as error:
        raise InputError(f"out of memory ({image.width}x{image.height}); try --tiling") from error
    atomic_save_image(result, target)
    return f"{path} ({image.width}x{image.height}) -> {target} ({result.width}x{result.height})"


def cmd_upscale(args, report) -> int:
    check_input_paths(args.inputs)
    output = writable_directory(args.output)
    with models_available(args):
        notice(args, "loading the VAE and the upscaler ...")
        import torch
        from tqdm.auto import tqdm

        from .pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline

        files = collect_inputs(args.inputs)
        targets = [output / f"{path.stem}{scale_suffix(args)}.png" for path in files]
        check_targets(targets)
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        vae = load_vae_arg(args, dtype)
        upscaler = load_upscaler(args, dtype)
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upscaler=upscaler).to(device)
    enable_tiling(pipe, args)
    generator = torch.Generator().manual_seed(args.seed)
    report.total = len(files)
    bar = tqdm(list(zip(files, targets)), desc="Upscaling", unit="image", disable=args.quiet or len(files) == 1, dynamic_ncols=True)
    for path, target in bar:
        configure_progress(pipe, args, desc=path.name, position=0 if len(files) == 1 else 1)
        try:
            line = upscale_one(pipe, path, target, args, generator)
        except InputError as error:
            report.failed.append((path, str(error)))
            continue
        report.written.append(target)
        if not args.quiet:
            tqdm.write(line)
    return report.status()


def generate_targets(output: str, count: int, seed: int) -> List[Path]:
    """The output files of ``generate`` (an image file name, or a folder), the folder checked writable."""
    path = Path(output).expanduser()
    if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir():
        writable_directory(str(path.parent) if str(path.parent) else ".", "--output")
        targets = [path] if count == 1 else [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]
    else:
        folder = writable_directory(output)
        targets = [folder / f"uplift_{seed}_{i}.png" for i in range(count)]
    check_targets(targets)
    return targets


def import_text_to_image_pipeline():
    """``StableDiffusionUPLiFTPipeline`` (imported on first use, transformers' import notices silenced)."""
    from .pipelines import StableDiffusionUPLiFTPipeline

    return StableDiffusionUPLiFTPipeline


def cmd_generate(args, report) -> int:
    targets = generate_targets(args.output, args.num_images, args.seed)
    base_targets = [t.with_name(f"{t.stem}_base{t.suffix}") for t in targets] if args.save_base else []
    check_targets(base_targets)
    with models_available(args):
        notice(args, "loading the Stable Diffusion model" + (" and the upscaler ..." if args.scale > 1 else " ..."))
        import torch

        from .loaders.hub import dtype_kwargs, from_hub
        from .utils.atomic_files import atomic_save_image

        StableDiffusionUPLiFTPipeline = import_text_to_image_pipeline()
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
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
    configure_progress(pipe, args)
    enable_tiling(pipe, args)
    width, height = args.size
    report.total = len(targets)
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
        back_projection_steps=args.back_projection_steps,
    )
    for index, (image, target) in enumerate(zip(result.images, targets)):
        atomic_save_image(image, target, format=_image_format(target))
        report.written.append(target)
        print(f"{target} ({image.width}x{image.height})")
        if args.save_base:
            atomic_save_image(result.base_images[index], base_targets[index], format=_image_format(target))
            report.written.append(base_targets[index])
            print(f"{base_targets[index]} ({width}x{height}, before upscaling)")
    return report.status()


def _image_format(path: Path) -> str:
    from PIL import Image

    Image.init()
    return Image.EXTENSION.get(path.suffix.lower(), "PNG")


def cmd_convert(args, report) -> int:
    import shutil
    import tempfile

    output = writable_directory(args.output)
    from .loaders.hub import HubModel

    checkpoint = HubModel(args.checkpoint, what=f"CHECKPOINT {args.checkpoint!r}",
                          hint="a .safetensors / .pth file, a Hub URL or ORG/REPO/FILE")
    with models_available(args, [checkpoint]):
        from .models.modeling_uplift import UPLiFTLatentUpscaler

        def load():
            return UPLiFTLatentUpscaler.from_single_file(args.checkpoint, config=args.config)

        model = load_named("CHECKPOINT", args.checkpoint, checkpoint.label, checkpoint.hint, load)
    # save_pretrained into a temporary folder next to the output, then move each file in atomically
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=output))
    try:
        model.save_pretrained(str(staging))
        for file in sorted(staging.iterdir()):
            os.replace(file, output / file.name)
            report.written.append(output / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"saved {parameters:,} parameters ({model.config.latent_channels} latent channels) to {output}")
    return report.status()


# ---------------------------------------------------------------------------------------------
# Running a command: models check, warnings, failures, interruption
# ---------------------------------------------------------------------------------------------
def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


class RunReport:
    """What a command wrote and which inputs failed (the summary printed at the end)."""

    def __init__(self):
        self.total = 0
        self.written: List[Path] = []
        self.failed: List[Tuple[Path, str]] = []

    def status(self) -> int:
        return EXIT_INPUTS_FAILED if self.failed else EXIT_OK

    def print_failures(self) -> None:
        for path, reason in self.failed:
            print(f"{PROG}: error: {str(path)!r}: {reason}", file=sys.stderr)
        if self.failed and self.total > 1:
            print(
                f"{PROG}: {len(self.failed)} of {self.total} inputs failed (listed above); "
                f"{_count(len(self.written), 'output')} written.",
                file=sys.stderr,
            )


def notice(args, message: str) -> None:
    """One line on stderr unless --quiet (feedback before the slow imports and loading)."""
    if not args.quiet:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def models_available(args, models=None):
    """Context: every model of the command checked at once (the cache first, one quick Hub check);
    inside, the cache only when the Hub does not answer."""
    from .loaders.hub import hub_models_available, looks_like_local_path, not_found_anywhere

    models = command_models(args) if models is None else models
    nowhere = not_found_anywhere(models)
    if nowhere:
        raise CLIError("; ".join(
            f"{m.label} not found: "
            + ("no such file or folder" if looks_like_local_path(m.source) else "neither a file or folder nor a Hub name (org/name)")
            + (f" (pass {m.hint})" if m.hint else "")
            for m in nowhere
        ) + ".")
    return hub_models_available(models, notify=lambda message: notice(args, message))


class _WarningHandler(logging.Handler):
    """This package's warnings (e.g. an upscale factor beyond the model's training) as one
    ``uplift-diffusers: warning: ...`` line on the current stderr, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(f"{PROG}: warning: {' '.join(record.getMessage().split())}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _user_message(error: Exception) -> Optional[str]:
    """The one line for an error the user can fix, or None for an unexpected one."""
    from .loaders.hub import HubUnavailableError, is_connection_error

    if isinstance(error, HubUnavailableError):
        return _one_line(error)
    if is_connection_error(error):
        return (
            "cannot reach the Hugging Face Hub and a model is not in the local cache; pass local paths "
            "(--vae, --upscaler or --original-checkpoint, --model)."
        )
    if isinstance(error, (CLIError, ValueError, OSError)):
        return _one_line(error)
    return None


# ---------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------
def _add_upscaler_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        f"upscaler (default: the authors' released SD1.5-VAE model {UPLIFT_SD15_REPO_ID}, from the Hub or its cache)"
    )
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--upscaler", metavar="ID|PATH", type=non_empty,
        help="UPLiFT upscaler: a save_pretrained folder (model or pipeline), a folder or file holding the authors' "
        "single file, or a Hub id",
    )
    source.add_argument(
        "--original-checkpoint", metavar="FILE|URL", type=non_empty,
        help="the authors' checkpoint: a .safetensors / .pth file, a Hub URL or ORG/REPO/FILE",
    )
    group.add_argument(
        "--original-config", metavar="YAML", type=non_empty,
        help="the authors' YAML config for --original-checkpoint (default: read off the checkpoint's shapes)",
    )


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (auto: float16 on CUDA, else float32)")
    parser.add_argument(
        "--tiling", "--vae-tiling", dest="tiling", action="store_true",
        help="upscale and decode in overlapping tiles: bounded memory for large outputs (--vae-tiling: the same)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _epilog() -> str:
    rows = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_STATUSES.items())
    return f"exit statuses:\n{rows}"


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, description="UPLiFT latent upscaling for diffusers.", epilog=_epilog(), formatter_class=formatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{upscale,generate,convert}")

    up = sub.add_parser(
        "upscale", help="super-resolve image files", epilog=_epilog(), formatter_class=formatter,
        description="Super-resolve images: VAE encode -> UPLiFT -> VAE decode. A file that fails does not stop "
        "the others; failures are listed at the end (exit status 1).",
    )
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or directories of images")
    up.add_argument("--output", "-o", required=True, metavar="DIR", help="output directory (<name>_x<scale>.png)")
    size = up.add_mutually_exclusive_group()
    size.add_argument("--scale", type=parse_scale, default=None, metavar="FACTOR",
                      help=f"upscale factor, any number >= 1 (e.g. 2, 3, 1.5; default {DEFAULT_UPSCALE:g})")
    size.add_argument("--size", type=parse_output_size, default=None, metavar="WxH",
                      help="exact output size, e.g. 1920x1080; one side (1920x or x1080) keeps the aspect ratio "
                      "(output <name>_<WxH>.png)")
    up.add_argument(
        "--vae",
        type=non_empty,
        default=SD15_MODEL_ID,
        metavar="ID|PATH",
        help="VAE: Hub id, diffusers directory, or a directory with TAESD-family encoder.pth + decoder.pth "
        f"(default: {SD15_MODEL_ID}, {SD15_VAE_SUBFOLDER}/)",
    )
    up.add_argument(
        "--back-projection-steps", type=parse_steps, default=DEFAULT_BACK_PROJECTION_STEPS, metavar="N",
        help=f"rounds of back-projection onto the input, so that the output downsampled matches it "
        f"(default {DEFAULT_BACK_PROJECTION_STEPS}; 0: the paper's output)",
    )
    up.add_argument(
        "--ensemble", type=int, choices=ENSEMBLE_SIZES, default=1, metavar="{1,2,4,8}",
        help="average the upscales of that many flipped / rotated copies (geometric self-ensemble; N times the time, "
        "+0.18 dB at 4x with 8 on BSDS500; default 1: none)",
    )
    _add_upscaler_arguments(up)
    _add_runtime_arguments(up)
    up.set_defaults(handler=cmd_upscale)

    gen = sub.add_parser(
        "generate", help="text-to-image with Stable Diffusion + UPLiFT", epilog=_epilog(), formatter_class=formatter,
        description="Generate at --size, then upscale by --scale.",
    )
    gen.add_argument("prompt", metavar="PROMPT")
    gen.add_argument("--model", type=non_empty, default=SD15_MODEL_ID, metavar="ID|PATH", help=f"Stable Diffusion pipeline (default {SD15_MODEL_ID})")
    gen.add_argument("--size", type=parse_size, default=(512, 512), metavar="N|WxH", help="base size before upscaling (default 512)")
    gen.add_argument("--scale", type=parse_scale, default=DEFAULT_GENERATE_SCALE, metavar="FACTOR",
                     help=f"upscale factor, any number >= 1 (1: no upscaling; default {DEFAULT_GENERATE_SCALE:g})")
    gen.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    gen.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--num-images", type=int, default=1, help="images to generate (default 1)")
    gen.add_argument("--output", "-o", default="outputs", metavar="FILE|DIR", help="output image file or directory (default outputs/)")
    gen.add_argument("--save-base", action="store_true", help="also save the base image before upscaling (<name>_base.png)")
    gen.add_argument("--no-safety-checker", action="store_true", help="do not load the model's safety checker")
    gen.add_argument(
        "--back-projection-steps", type=parse_steps, default=0, metavar="N",
        help="rounds of back-projection of the upscaled image onto the base image (default 0: the paper's output)",
    )
    _add_upscaler_arguments(gen)
    _add_runtime_arguments(gen)
    gen.set_defaults(handler=cmd_generate)

    conv = sub.add_parser(
        "convert", help="authors' checkpoint -> diffusers directory", epilog=_epilog(), formatter_class=formatter,
        description="Convert the authors' UPLiFT checkpoint to a save_pretrained directory.",
    )
    conv.add_argument("checkpoint", metavar="CHECKPOINT", help="the authors' .safetensors / .pth file, a Hub URL or ORG/REPO/FILE")
    conv.add_argument(
        "--config", metavar="YAML", default=None,
        help="the authors' YAML config (default: read off the checkpoint's shapes, the official noise scale)",
    )
    conv.add_argument("--output", "-o", required=True, metavar="DIR", help="output directory")
    conv.add_argument("--quiet", action="store_true", help="no notices")
    conv.set_defaults(handler=cmd_convert)
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args) -> None:
    if getattr(args, "original_config", None) is not None and args.original_checkpoint is None:
        parser.error("--original-config needs --original-checkpoint")
    for name in ("steps", "num_images"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.command == "upscale" and args.scale is None and args.size is None:
        args.scale = DEFAULT_UPSCALE


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (:data:`EXIT_STATUSES`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_arguments(parser, args)
    except SystemExit as exit_:  # argparse printed its message (or --help)
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    report = RunReport()
    package_logger = logging.getLogger(__package__)
    handler = _WarningHandler(logging.WARNING)
    package_logger.addHandler(handler)
    try:
        status = args.handler(args, report)
    except KeyboardInterrupt:
        report.print_failures()
        print(f"{PROG}: interrupted; {_count(len(report.written), 'output')} written completely, none partially.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - every error becomes one line
        report.print_failures()
        message = _user_message(error)
        if message is None:
            if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
                raise
            message = (
                f"internal error: {type(error).__name__}: {_one_line(error)} (set {TRACEBACK_ENV}=1 for the "
                "traceback and please report it)"
            )
            status = EXIT_INTERNAL
        else:
            status = EXIT_ERROR
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return status
    finally:
        package_logger.removeHandler(handler)
    report.print_failures()
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
