"""Super-resolution test sets (FacesHQ = CelebA-HQ + FFHQ, LHQ): ``--num`` random images as HR / LR pairs.

Deterministic for ``--seed``: the images under ``--inputs`` sorted by path, shuffled by
``random.Random(seed)``, and the first ``--num`` whose shorter side is at least ``--hr-size``
taken (the others listed in ``manifest.json``). HR = centre ``--hr-size`` crop, LR = PIL
bilinear resize to ``--lr-size`` (:func:`uplift_diffusers.image_processor.load_hr_lr`); PNG pairs in
``OUTPUT/hr`` and ``OUTPUT/lr``, a rerun keeps those already written.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from PIL import Image

from evaluation.arguments import attempt
from uplift_diffusers.image_processor import list_images, load_hr_lr
from uplift_diffusers.utils.atomic_files import atomic_save_image, atomic_write_text


def select_images(files: Sequence[Path], num: int, seed: int, hr_size: int) -> Dict[str, List[Path]]:
    """``{"selected": [...], "skipped": [...]}``: the first ``num`` files of the seeded shuffle that are large enough."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"--num must be a positive int, got {num!r}.")
    order = list(files)
    random.Random(seed).shuffle(order)
    selected: List[Path] = []
    skipped: List[Path] = []
    for path in order:
        if len(selected) == num:
            break
        with Image.open(path) as handle:  # reads the header only
            width, height = handle.size
        (selected if min(width, height) >= hr_size else skipped).append(path)
    if len(selected) < num:
        raise ValueError(
            f"only {len(selected)} of {len(order)} images have both sides >= --hr-size {hr_size}, need --num {num}; "
            "add images, lower --num or --hr-size."
        )
    return {"selected": selected, "skipped": skipped}


def prepare(inputs: Sequence, output_dir, num: int, seed: int, hr_size: int, lr_size: int) -> Dict:
    """Write the HR / LR pairs and the manifest; returns the manifest."""
    if not 1 <= lr_size <= hr_size:
        raise ValueError(f"need 1 <= --lr-size <= --hr-size, got {lr_size} and {hr_size}.")
    files = list_images(list(inputs))
    if not files:
        raise ValueError(f"--inputs {[str(i) for i in inputs]} hold no images.")
    choice = select_images(files, num, seed, hr_size)
    output_dir = Path(output_dir)
    written = 0
    entries = []
    for index, source in enumerate(choice["selected"]):
        name = f"{index:05d}.png"
        hr_path, lr_path = output_dir / "hr" / name, output_dir / "lr" / name
        entries.append({"name": name, "source": str(source)})
        if hr_path.is_file() and lr_path.is_file():
            continue
        hr, lr = load_hr_lr(source, hr_size, lr_size)
        atomic_save_image(hr, hr_path, format="PNG")
        atomic_save_image(lr, lr_path, format="PNG")
        written += 1
    manifest = {
        "seed": seed, "num": num, "hr_size": hr_size, "lr_size": lr_size, "protocol": "HR = centre crop; LR = PIL bilinear resize of HR",
        "inputs": [str(i) for i in inputs], "pairs": entries, "skipped_too_small": [str(p) for p in choice["skipped"]],
    }
    atomic_write_text(output_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    manifest["written"] = written
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Prepare HR / LR super-resolution pairs (FacesHQ, LHQ).")
    parser.add_argument("--inputs", nargs="+", required=True, help="image folders (FacesHQ: the CelebA-HQ and FFHQ folders)")
    parser.add_argument("--output-dir", required=True, help="hr/, lr/ and manifest.json go here")
    parser.add_argument("--num", type=int, default=5000, help="number of pairs (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--hr-size", type=int, default=1024, help="HR centre crop side (default 1024)")
    parser.add_argument("--lr-size", type=int, default=256, help="LR side (default 256)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    manifest, status = attempt(lambda: prepare(args.inputs, args.output_dir, args.num, args.seed, args.hr_size, args.lr_size))
    if status:
        return status
    skipped = len(manifest["skipped_too_small"])
    print(
        f"{len(manifest['pairs'])} pairs in {args.output_dir} ({manifest['written']} written, "
        f"{len(manifest['pairs']) - manifest['written']} already there; {skipped} images smaller than "
        f"{args.hr_size} skipped, listed in manifest.json)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
