"""COCO 2014 validation captions -> a caption set of ``--num`` (5000) random images, one caption each.

Deterministic for ``--seed``: the captioned images sorted by id, ``random.Random(seed).sample``
picks ``--num``, sorted by id again, and the same generator picks one caption per image (among
its captions sorted by annotation id). The protocol takes the images whatever their size (COCO
photos are about 640 x 480): ``--reference-size`` larger than an image's shorter side ENLARGES
it (a warning with the count; ``reference_enlarged: true`` in the rows), while ``--skip-smaller``
leaves such images out of the sampling (a different set than the paper's). Copying the
references unchanged (the default) is the better choice: the evaluation resizes each reference
once, to each row's size.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from PIL import Image

from evaluation.arguments import attempt, check_at_least, read_json_file
from evaluation.data.caption_sets import CaptionRow, clean_caption, write_caption_set
from evaluation.data.reference_images import export_reference


def load_coco_captions(path) -> Dict:
    """Read a COCO captions json; checks that it has ``images`` and ``annotations`` lists."""
    path = Path(path).expanduser()
    data = read_json_file(path, "--captions", "pass annotations/captions_val2014.json.")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"--captions {str(path)!r} must be a COCO captions file with 'images' and 'annotations' lists.")
    return data


def sample_caption_pairs(data: Dict, num: int, seed: int, min_side: Optional[int] = None) -> List[CaptionRow]:
    """``num`` random (image, one caption) pairs of a COCO captions dict; see the module docstring.
    ``min_side``: sample only images whose ``width`` and ``height`` are at least this (``--skip-smaller``)."""
    images = {}
    for image in data["images"]:
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise ValueError(f"every COCO image entry needs 'id' and 'file_name', got {image!r}.")
        images[int(image["id"])] = image
    captions: Dict[int, List[tuple]] = {}
    for annotation in data["annotations"]:
        if not isinstance(annotation, dict) or "image_id" not in annotation or "caption" not in annotation:
            raise ValueError(f"every COCO annotation needs 'image_id' and 'caption', got {annotation!r}.")
        text = clean_caption(annotation["caption"])
        if text:
            captions.setdefault(int(annotation["image_id"]), []).append((int(annotation.get("id", 0)), text))
    unknown = sorted(set(captions) - set(images))
    if unknown:
        raise ValueError(f"annotations name image ids missing from 'images': {unknown[:5]}; the captions file is inconsistent.")
    candidates = sorted(captions)
    if min_side is not None:
        candidates = [i for i in candidates if min(int(images[i].get("width") or 0), int(images[i].get("height") or 0)) >= min_side]
    if num > len(candidates):
        large = f" of at least {min_side} px" if min_side is not None else ""
        raise ValueError(f"--num {num} is more than the {len(candidates)} captioned images{large} in the file; pass --num <= {len(candidates)}.")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(candidates, num))
    rows = []
    for image_id in chosen:
        _, caption = rng.choice(sorted(captions[image_id]))
        image = images[image_id]
        extra = {"coco_id": image_id, **{key: int(image[key]) for key in ("width", "height") if image.get(key) not in (None, "")}}
        rows.append(CaptionRow(f"{image_id:012d}", caption, str(image["file_name"]), extra))
    return rows


def export_references(rows: Sequence[CaptionRow], images_dir, reference_dir, size: Optional[int]) -> List[CaptionRow]:
    """Write the reference image of every row; returns the rows with ``file_name`` naming the written files."""
    images_dir, reference_dir = Path(images_dir).expanduser(), Path(reference_dir).expanduser()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"--images-dir not found: {str(images_dir)!r}; pass the COCO val2014 image folder.")
    updated, enlarged = [], 0
    for row in rows:
        name = row.file_name if size is None else f"{row.id}.png"
        extra = {**row.extra, "source_file": row.file_name}
        if size is not None:
            with Image.open(images_dir / row.file_name) as image:
                extra["reference_enlarged"] = min(image.size) < size
            enlarged += extra["reference_enlarged"]
        export_reference(images_dir / row.file_name, reference_dir / name, size)
        updated.append(CaptionRow(row.id, row.caption, name, extra))
    if enlarged:
        print(
            f"warning: {enlarged} of {len(rows)} reference images have a shorter side below --reference-size {size} and were "
            "ENLARGED (bicubic; rows marked reference_enlarged). Omit --reference-size to keep the originals (the evaluation "
            "resizes them once, to each row's size), or pass --skip-smaller to sample only images at least that large.",
            file=sys.stderr,
        )
    return updated


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Sample the COCO 2014 val caption set (5k images, one caption each).")
    parser.add_argument("--captions", required=True, help="annotations/captions_val2014.json")
    parser.add_argument("--output", required=True, help="caption set to write (.jsonl)")
    parser.add_argument("--num", type=int, default=5000, help="number of images / captions (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--images-dir", default=None, help="val2014 image folder: also export the reference images")
    parser.add_argument("--reference-dir", default=None, help="where the reference images go (default: OUTPUT's folder/images)")
    parser.add_argument("--reference-size", type=int, default=None,
                        help="store square N x N crops instead of copies (smaller images are enlarged, with a warning)")
    parser.add_argument("--skip-smaller", type=int, default=None, metavar="N",
                        help="sample only images whose width and height are >= N (not the paper's protocol, which takes any size)")
    return parser


def prepare(args) -> List[CaptionRow]:
    """The caption set of parsed ``args`` (and its reference images), written; returns its rows."""
    check_at_least(args, {"num": 1, "reference_size": 1, "skip_smaller": 1})
    if args.images_dir is None and (args.reference_dir or args.reference_size):
        raise ValueError("--reference-dir / --reference-size need --images-dir (the COCO val2014 folder).")
    rows = sample_caption_pairs(load_coco_captions(args.captions), args.num, args.seed, args.skip_smaller)
    if args.images_dir is not None:
        reference_dir = args.reference_dir or Path(args.output).parent / "images"
        rows = export_references(rows, args.images_dir, reference_dir, args.reference_size)
        print(f"reference images in {reference_dir}")
    write_caption_set(rows, args.output)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    rows, status = attempt(lambda: prepare(args))
    if status:
        return status
    print(f"{len(rows)} caption / image pairs written to {args.output} (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
