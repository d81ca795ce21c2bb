"""``--smoke-test``: every evaluation script end to end in seconds on tiny random models, offline
(its numbers mean nothing). Inputs are written to ``OUTPUT/smoke-inputs`` and then loaded by
the script's ordinary loading code."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image


SMOKE_HELP = (
    "check the installation: run end to end in seconds on tiny random models and synthetic inputs written to "
    "OUTPUT/smoke-inputs (no download; the numbers mean nothing); replaces the models, data and sizes"
)


def add_smoke_test_argument(parser: argparse.ArgumentParser, help: str = SMOKE_HELP) -> None:
    """``--smoke-test`` (stored as ``args.smoke_test``)."""
    parser.add_argument("--smoke-test", action="store_true", help=help)


def use_one_thread() -> None:
    """Tiny models run fastest on one thread (several threads spin-wait on a busy machine)."""
    import torch

    torch.set_num_threads(1)


def prepare_smoke_dir(args, state, script: str) -> Path:
    """``OUTPUT/smoke-inputs`` (``--output-dir`` set to a new temporary folder when not given, the
    same on every process); created empty by the main process. Also :func:`use_one_thread`."""
    from accelerate.utils import broadcast_object_list

    use_one_thread()
    if args.output_dir is None:
        made = tempfile.mkdtemp(prefix=f"uplift-smoke-{script}-") if state.is_main_process else None
        args.output_dir = broadcast_object_list([made])[0]
    return Path(args.output_dir) / "smoke-inputs"


def write_smoke_images(folder: Path, count: int, size: int, seed: int = 0) -> List[Path]:
    """``count`` smooth random RGB images of ``size`` x ``size`` (PNG; bilinear-enlarged noise, so that
    upscaling them is a meaningful task) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        path = folder / f"smoke_{index:02d}.png"
        coarse.resize((size, size), Image.BILINEAR).save(path)
        paths.append(path)
    return paths


def save_smoke_models(folder: Path, upscaler: bool = True, vae: bool = False, sd: bool = False, clip: bool = False) -> dict:
    """Save the tiny random models asked for under ``folder``; returns ``{name: folder}``:
    ``upscaler`` (4-channel UPLiFT, noise scale 1), ``vae`` (an ``AutoencoderKL``, factor 8),
    ``sd`` (a ``StableDiffusionPipeline``, 64 px native) and ``clip`` (a ``CLIPModel`` folder)."""
    import torch

    from uplift_diffusers.utils import testing_utils

    saved = {}
    with torch.random.fork_rng(devices=[]):
        if upscaler:
            saved["upscaler"] = folder / "upscaler"
            testing_utils.make_upscaler(4, noise_scale=1.0).save_pretrained(saved["upscaler"])
        if vae:
            saved["vae"] = folder / "vae"
            torch.manual_seed(0)
            testing_utils.make_kl_vae().save_pretrained(saved["vae"])
        if sd:
            saved["sd"] = testing_utils.save_sd_pipeline(folder / "stable-diffusion")
        if clip:
            saved["clip"] = testing_utils.save_tiny_clip(folder / "clip")
    (folder / "README.json").write_text(json.dumps({"what": "tiny random models of --smoke-test; outputs mean nothing"}) + "\n")
    return {name: str(path) for name, path in saved.items()}
