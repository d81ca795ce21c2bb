"""reLAION-400M -> a caption set of ``--num`` (5000) images with both sides >= ``--min-size`` (1024).

Selection (deterministic for a given ``--seed``, independent of file order, memory O(num)):
every metadata row whose ``width`` and ``height`` are both >= ``--min-size`` and whose URL is
http(s) gets the key ``blake2b("<seed>:<url>")`` (64 bits); the ``ceil(num * (1 + oversample))``
rows with the smallest keys (duplicate URLs counted once) are the candidates, a uniform random
sample of the eligible rows. The candidates are downloaded; the first ``--num`` of them in key
order that downloaded, decode and really have both sides >= ``--min-size`` form the set (the
extra candidates replace dead links; every rejected candidate is listed in
``selection.json`` with the reason).

Metadata: ``.parquet`` files (read with ``pyarrow``, imported only for them), or ``.csv`` /
``.tsv`` / ``.jsonl`` files, or folders of them. Column names are matched case-insensitively:
URL ``url``; caption ``caption`` or ``text``; ``width``; ``height``.

Downloads (:func:`download`: timeouts, retries of transient errors with backoff, a decode check,
atomic writes, a rerun skips the images already complete) request the URLs exactly as given in
the metadata. Output::

    OUTPUT/raw/<id>.jpg          downloaded originals (whatever format the server sent)
    OUTPUT/images/<id>.png       with --reference-size N: square centre crops at N x N (PIL bicubic)
    OUTPUT/captions.jsonl        the caption set (id, caption, file_name, url, width, height)
    OUTPUT/selection.json        settings, counts and the rejected candidates

``file_name`` is relative to ``OUTPUT/images`` with ``--reference-size``, else to ``OUTPUT/raw``
(pass that folder as ``python -m evaluation.tasks.eval_text_to_image --reference-dir``).

Example::

    python -m evaluation.data.prepare_relaion --metadata /data/relaion400m/ --output-dir data/relaion --reference-size 1024
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import heapq
import io
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from PIL import Image

from evaluation.arguments import check_at_least
from evaluation.data.caption_sets import CaptionRow, clean_caption, write_caption_set
from evaluation.data.reference_images import export_reference
from uplift_diffusers.utils.atomic_files import atomic_write, atomic_write_text

COLUMN_NAMES = {"url": ("url",), "caption": ("caption", "text"), "width": ("width",), "height": ("height",)}
METADATA_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl")


@dataclass(frozen=True)
class Candidate:
    """An eligible metadata row and its sampling key."""

    key: int
    url: str
    caption: str
    width: int
    height: int

    @property
    def id(self) -> str:
        return f"{self.key:016x}"


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------
def metadata_files(inputs: Sequence) -> List[Path]:
    """The metadata files named by ``inputs`` (files, or folders: their files with a known suffix, sorted)."""
    files: List[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in METADATA_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"--metadata folder {str(path)!r} holds no {', '.join(METADATA_SUFFIXES)} files.")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in METADATA_SUFFIXES:
                raise ValueError(f"--metadata file {str(path)!r} must end in one of {METADATA_SUFFIXES}.")
            files.append(path)
        else:
            raise FileNotFoundError(f"--metadata path not found: {str(path)!r}.")
    if not files:
        raise ValueError("--metadata is empty; pass reLAION parquet files or their folder.")
    return files


def resolve_columns(names: Sequence[str], source: str) -> Dict[str, str]:
    """Map ``url`` / ``caption`` / ``width`` / ``height`` to the file's column names (case-insensitive)."""
    lower = {name.lower(): name for name in names}
    mapping = {}
    for field, candidates in COLUMN_NAMES.items():
        found = next((lower[c] for c in candidates if c in lower), None)
        if found is None:
            raise ValueError(
                f"{source} has no {field} column (accepted: {', '.join(candidates)}, any case); its columns are {list(names)}."
            )
        mapping[field] = found
    return mapping


def _read_parquet(path: Path) -> Iterator[Mapping]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow (part of the eval extra).") from error
    parquet = pq.ParquetFile(path)
    columns = resolve_columns(parquet.schema_arrow.names, str(path))
    for batch in parquet.iter_batches(columns=list(columns.values()), batch_size=65536):
        data = batch.to_pydict()
        for values in zip(*(data[columns[field]] for field in COLUMN_NAMES)):
            yield dict(zip(COLUMN_NAMES, values))


def _read_text_table(path: Path) -> Iterator[Mapping]:
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".jsonl":
            columns = None
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if columns is None:
                    columns = resolve_columns(list(record), str(path))
                yield {field: record.get(name) for field, name in columns.items()}
            return
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        columns = resolve_columns(reader.fieldnames or [], str(path))
        for record in reader:
            yield {field: record.get(name) for field, name in columns.items()}


def read_metadata(path: Path) -> Iterator[Mapping]:
    """Rows of one metadata file as dicts with the keys url, caption, width, height (raw values)."""
    return _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_text_table(path)


def _as_int(value) -> Optional[int]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) else None


def sampling_key(url: str, seed: int) -> int:
    """The 64-bit sampling key of a URL for ``seed``."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{url}".encode("utf-8"), digest_size=8).digest(), "big")


def select_candidates(rows: Iterable[Mapping], count: int, seed: int, min_size: int) -> Tuple[List[Candidate], Dict[str, int]]:
    """The ``count`` eligible rows with the smallest keys (sorted by key) and counts of what was seen."""
    for name, value in (("count", count), ("min_size", min_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    heap: List[Tuple[int, str, Candidate]] = []  # max-heap on the key through negation
    in_heap = set()
    stats = {"rows": 0, "eligible": 0, "too_small_or_unknown_size": 0, "bad_url_or_caption": 0}
    for row in rows:
        stats["rows"] += 1
        width, height = _as_int(row.get("width")), _as_int(row.get("height"))
        if width is None or height is None or min(width, height) < min_size:
            stats["too_small_or_unknown_size"] += 1
            continue
        url = str(row.get("url") or "").strip()
        caption = clean_caption(row.get("caption") or "")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or not caption:
            stats["bad_url_or_caption"] += 1
            continue
        stats["eligible"] += 1
        key = sampling_key(url, seed)
        if url in in_heap:
            continue
        candidate = Candidate(key, url, caption, width, height)
        if len(heap) < count:
            heapq.heappush(heap, (-key, url, candidate))
            in_heap.add(url)
        elif key < -heap[0][0]:
            _, evicted, _ = heapq.heappushpop(heap, (-key, url, candidate))
            in_heap.discard(evicted)
            in_heap.add(url)
    return sorted((item[2] for item in heap), key=lambda c: c.key), stats


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------
def raw_path(raw_dir: Path, candidate: Candidate) -> Path:
    """Where a candidate's download is stored: ``raw_dir/<id>.jpg`` (whatever format the server sent)."""
    return raw_dir / f"{candidate.id}.jpg"


def decodes(path: Path) -> bool:
    """Whether ``path`` holds a complete image (PIL decodes all of it)."""
    try:
        with Image.open(path) as handle:
            handle.load()
        return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def download(url: str, path: Path, timeout: float, retries: int, backoff: float) -> Optional[str]:
    """Fetch ``url`` (as given) into ``path`` unless a complete image is already there; returns
    ``None``, or why it failed. Transient errors (network, HTTP 429 / 5xx, undecodable data) are
    retried ``retries`` times, waiting ``backoff`` seconds doubled each time."""
    if decodes(path):
        return None
    reason = "not tried"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except urllib.error.HTTPError as error:
            reason = f"HTTP {error.code}"
            if error.code != 429 and error.code < 500:
                return reason
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            reason = f"{type(error).__name__}: {error}"
        else:
            atomic_write(path, lambda temporary: Path(temporary).write_bytes(data))
            return None
    return reason


def download_candidates(
    candidates: Sequence[Candidate], raw_dir: Path, workers: int, timeout: float, retries: int, backoff: float, progress: bool
) -> Dict[str, Optional[str]]:
    """Download every candidate's URL to :func:`raw_path`; returns {id: None or why it failed}."""
    from tqdm.auto import tqdm

    raw_dir.mkdir(parents=True, exist_ok=True)

    def fetch(candidate: Candidate) -> Optional[str]:
        return download(candidate.url, raw_path(raw_dir, candidate), timeout, retries, backoff)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        failures = list(tqdm(pool.map(fetch, candidates), total=len(candidates), desc="relaion", disable=not progress))
    return {candidate.id: failure for candidate, failure in zip(candidates, failures)}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def prepare(args) -> Dict:
    """Select, download and write the caption set; returns the selection report."""
    check_at_least(args, {"num": 1, "min_size": 1, "workers": 1, "oversample": 0, "reference_size": 1})
    files = metadata_files(args.metadata)
    count = math.ceil(args.num * (1 + args.oversample))
    rows = (row for path in files for row in read_metadata(path))
    candidates, stats = select_candidates(rows, count, args.seed, args.min_size)
    rejected: List[Dict] = []
    output = Path(args.output_dir)
    raw_dir = output / "raw"
    results = download_candidates(candidates, raw_dir, args.workers, args.timeout, args.retries, args.backoff, not args.quiet)

    chosen: List[CaptionRow] = []
    for candidate in candidates:
        if len(chosen) == args.num:
            break
        path = raw_path(raw_dir, candidate)
        if results[candidate.id] is not None:
            rejected.append({"id": candidate.id, "url": candidate.url, "reason": f"download failed: {results[candidate.id]}"})
            continue
        with Image.open(path) as handle:
            width, height = handle.size
        if min(width, height) < args.min_size:
            rejected.append({"id": candidate.id, "url": candidate.url, "reason": f"downloaded image is {width} x {height}"})
            continue
        file_name = path.name
        if args.reference_size is not None:
            file_name = f"{candidate.id}.png"
            export_reference(path, output / "images" / file_name, args.reference_size)
        extra = {"url": candidate.url, "width": str(width), "height": str(height)}
        chosen.append(CaptionRow(candidate.id, candidate.caption, file_name, extra))
    if len(chosen) < args.num:
        raise ValueError(
            f"only {len(chosen)} of {len(candidates)} candidates downloaded with both sides >= {args.min_size}, need "
            f"--num {args.num}; rerun with a larger --oversample (finished downloads are kept)."
        )
    write_caption_set(chosen, output / "captions.jsonl")
    report = {
        "seed": args.seed,
        "num": args.num,
        "min_size": args.min_size,
        "oversample": args.oversample,
        "reference_size": args.reference_size,
        "metadata": [str(f) for f in files],
        "metadata_counts": stats,
        "candidates": len(candidates),
        "selected": len(chosen),
        "rejected": rejected,
        "reference_dir": str(output / ("images" if args.reference_size is not None else "raw")),
    }
    atomic_write_text(output / "selection.json", json.dumps(report, indent=2) + "\n")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Sample and download the reLAION-400M 5k >= 1024 px caption set.")
    parser.add_argument("--metadata", nargs="+", required=True, help="reLAION parquet files (or csv / tsv / jsonl), or their folder")
    parser.add_argument("--output-dir", required=True, help="raw/, images/, captions.jsonl and selection.json go here")
    parser.add_argument("--num", type=int, default=5000, help="images in the set (default 5000)")
    parser.add_argument("--min-size", type=int, default=1024, help="minimum width and height (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--oversample", type=float, default=0.5, help="extra candidates for dead links, as a fraction of --num")
    parser.add_argument("--reference-size", type=int, default=None, help="also store N x N square crops in images/ (e.g. 1024)")
    parser.add_argument("--workers", type=int, default=16, help="parallel downloads")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    parser.add_argument("--retries", type=int, default=3, help="retries of transient errors")
    parser.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubled each time)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = prepare(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{report['selected']} images selected from {report['candidates']} candidates "
        f"({report['metadata_counts']['eligible']} eligible rows of {report['metadata_counts']['rows']}); "
        f"{len(report['rejected'])} candidates rejected (see selection.json). Reference images: {report['reference_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
