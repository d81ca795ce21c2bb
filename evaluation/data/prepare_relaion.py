"""reLAION-400M -> a caption set of ``--num`` (5000) images with both sides >= ``--min-size`` (1024).

Reads the folder img2dataset writes (``--output_format files``; commands in ``docs/evaluation.md``).
Selection, independent of file order and of img2dataset's names: every downloaded image whose
pixels really have both sides >= ``--min-size``, with an http(s) URL and a caption, gets the key
``blake2b("<seed>:<url>")`` (64 bits; duplicate URLs count once); the ``--num`` smallest keys form
the set. Writes ``OUTPUT/captions.jsonl``, ``OUTPUT/images/`` (with ``--reference-size``) and
``OUTPUT/selection.json`` (settings, counts, every rejected download with the reason).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from PIL import Image

from evaluation.arguments import attempt, check_at_least
from evaluation.data.caption_sets import CaptionRow, clean_caption, write_caption_set
from evaluation.data.reference_images import export_reference
from uplift_diffusers.image_processor import list_images
from uplift_diffusers.utils.atomic_files import atomic_write_text


def sampling_key(url: str, seed: int) -> int:
    """The 64-bit sampling key of a URL for ``seed``."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{url}".encode("utf-8"), digest_size=8).digest(), "big")


def read_downloads(folder: Path, min_size: int) -> tuple:
    """``(eligible, rejected)`` of an img2dataset ``files`` folder: eligible ``{url: (image path,
    caption, width, height)}``, rejected ``[{"file", "url", "reason"}]``."""
    eligible: Dict[str, tuple] = {}
    rejected: List[Dict] = []
    for image_path in list_images(folder):
        sidecar = image_path.with_suffix(".json")
        record = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
        url, caption = str(record.get("url") or "").strip(), clean_caption(record.get("caption") or "")
        parts = urllib.parse.urlsplit(url)
        reason = None
        if record.get("status", "success") != "success":
            reason = f"img2dataset status {record.get('status')!r}"
        elif parts.scheme not in ("http", "https") or not parts.netloc or not caption:
            reason = "no http(s) url or no caption in " + sidecar.name
        else:
            try:
                with Image.open(image_path) as handle:
                    handle.load()
                    width, height = handle.size
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                reason = f"does not decode: {type(error).__name__}"
            else:
                if min(width, height) < min_size:
                    reason = f"image is {width} x {height}"
                elif url not in eligible:
                    eligible[url] = (image_path, caption, width, height)
        if reason is not None:
            rejected.append({"file": str(image_path.relative_to(folder)), "url": url, "reason": reason})
    return eligible, rejected


def prepare(args) -> Dict:
    """Select and write the caption set (and the reference crops); returns the selection report."""
    check_at_least(args, {"num": 1, "min_size": 1, "reference_size": 1})
    downloads, output = Path(args.downloads).expanduser(), Path(args.output_dir)
    if not downloads.is_dir():
        raise FileNotFoundError(f"--downloads folder not found: {str(downloads)!r}; pass img2dataset's --output_folder.")
    eligible, rejected = read_downloads(downloads, args.min_size)
    if len(eligible) < args.num:
        raise ValueError(
            f"only {len(eligible)} downloaded images have both sides >= {args.min_size}, need --num {args.num}; "
            "download more candidates (see docs/evaluation.md)."
        )
    chosen: List[CaptionRow] = []
    for url in sorted(eligible, key=lambda url: sampling_key(url, args.seed))[: args.num]:
        path, caption, width, height = eligible[url]
        row_id = f"{sampling_key(url, args.seed):016x}"
        file_name = str(path.relative_to(downloads))
        if args.reference_size is not None:
            file_name = f"{row_id}.png"
            export_reference(path, output / "images" / file_name, args.reference_size)
        chosen.append(CaptionRow(row_id, caption, file_name, {"url": url, "width": str(width), "height": str(height)}))
    write_caption_set(chosen, output / "captions.jsonl")
    report = {
        "seed": args.seed, "num": args.num, "min_size": args.min_size, "reference_size": args.reference_size,
        "downloads": str(downloads), "eligible": len(eligible), "selected": len(chosen), "rejected": rejected,
        "reference_dir": str(output / "images") if args.reference_size is not None else str(downloads),
    }
    atomic_write_text(output / "selection.json", json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Pick the reLAION-400M 5k >= 1024 px caption set from an img2dataset download.")
    parser.add_argument("--downloads", required=True, help="img2dataset's --output_folder (written with --output_format files)")
    parser.add_argument("--output-dir", required=True, help="captions.jsonl, selection.json and images/ go here")
    parser.add_argument("--num", type=int, default=5000, help="images in the set (default 5000)")
    parser.add_argument("--min-size", type=int, default=1024, help="minimum width and height (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--reference-size", type=int, default=None, help="also store N x N square crops in images/ (e.g. 1024)")
    args = parser.parse_args(argv)
    report, status = attempt(lambda: prepare(args))
    if status:
        return status
    print(f"{report['selected']} images selected of {report['eligible']} eligible downloads; {len(report['rejected'])} "
          f"rejected (see selection.json). Reference images: {report['reference_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
