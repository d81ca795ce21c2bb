"""Download the Unsplash-Lite photographs (rows of ``photos.tsv000``, ``photos.tsv001``, ...) with
their shorter side at N px (docs/training.md). Each is asked from the Unsplash image CDN (imgix)
with ``h=N`` for a landscape photo, ``w=N`` otherwise, through huggingface_hub's ``http_backoff``;
a body is kept only when it decodes completely at that size, and is written atomically, so that a
re-run resumes by skipping the files already complete.

    python -m training.download_unsplash_lite /data/unsplash-lite \\
        --output-dir data/unsplash-lite/min-side-1024 --min-side 1024 --workers 16

Exit status: 0 when a photo was downloaded or skipped, 1 when every photo failed, 2 on bad input.
"""
from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

from PIL import Image
from tqdm.contrib.concurrent import thread_map

from uplift_diffusers.utils.atomic_files import atomic_write, atomic_write_text

REQUIRED_COLUMNS = ("photo_id", "photo_image_url")
SIZE_COLUMNS = ("photo_width", "photo_height")
DEFAULT_MIN_SIDE = 1024
CDN_MAX_SIDE = 8192  # imgix scales every output image to fit 8192 x 8192 px
TSV_NAME_PATTERN = re.compile(r"^photos\.tsv\d*$")
PHOTO_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
USER_AGENT = "uplift-diffusers-downloader/0.1"
DOWNLOADED, SKIPPED, FAILED = "downloaded", "skipped", "failed"


@dataclass(frozen=True)
class PhotoRow:
    """One photo: its id, the URL of the original and its size as the tsv writes it ("" if absent)."""

    photo_id: str
    image_url: str
    photo_width: str = ""
    photo_height: str = ""


@dataclass
class DownloadSummary:
    """Counts of one run and why each failed photo failed (``failure_reasons``, in input order)."""

    total: int
    downloaded: int
    skipped: int
    failed: int
    failure_reasons: dict = field(default_factory=dict)
    output_dir: Optional[Path] = None
    min_side: int = DEFAULT_MIN_SIDE
    upscaled_ids: list = field(default_factory=list)

    @property
    def failed_ids(self) -> list:
        return list(self.failure_reasons)

    def format(self, max_reasons: int = 10) -> str:
        """The counts, then up to ``max_reasons`` failures."""
        lines = [
            f"Unsplash-Lite download: {self.total} photos at shorter side {self.min_side} px -> {self.output_dir}",
            f"  downloaded: {self.downloaded}",
            f"    of which {len(self.upscaled_ids)} smaller than that in the tsv (upscaled by the CDN)",
            f"  skipped (already complete): {self.skipped}",
            f"  failed: {self.failed}" + (f" (ids in {self.output_dir / 'failed.txt'})" if self.failed else ""),
        ]
        lines += [f"    {pid}: {self.failure_reasons.get(pid, '')}" for pid in self.failed_ids[:max_reasons]]
        if len(self.failed_ids) > max_reasons:
            lines.append(f"    ... and {len(self.failed_ids) - max_reasons} more")
        return "\n".join(lines)


def _check_number(name: str, value, minimum: float, fix: str, kind=int) -> None:
    """ValueError unless ``value`` is an int (a number with ``kind=float``) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, kind)) or value < minimum:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'} >= {minimum}, got {value!r}: {fix}")


def find_tsv_files(inputs) -> list:
    """The ``photos.tsv*`` files of ``inputs`` (folders, searched for ``photos.tsv<digits>``, or files)."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    files = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and TSV_NAME_PATTERN.match(p.name))
            if not found:
                raise FileNotFoundError(f"no photos.tsv* file in directory {path}: point inputs at the unpacked "
                                        "Unsplash-Lite folder (it contains photos.tsv000, photos.tsv001, ...)")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"photos tsv file not found: {path} (check the path to the Unsplash-Lite dataset)")
    return files


def read_photo_rows(tsv_files: Iterable, limit: Optional[int] = None) -> list:
    """The data rows of ``tsv_files`` in order, at most ``limit``; ValueError naming the file (and
    line) for a missing column, an empty or unsafe ``photo_id`` (letters, digits, ``-``, ``_``), a
    URL that is not http(s) or a photo id that appears twice."""
    if limit is not None:
        _check_number("limit", limit, 1, "pass a positive number of photos or None for all")
    rows, seen = [], set()
    for path in map(Path, tsv_files):
        with path.open("r", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            for column in REQUIRED_COLUMNS:
                if column not in (reader.fieldnames or []):
                    raise ValueError(f"{path} has no column '{column}' (header: {', '.join(reader.fieldnames or [])}); "
                                     "pass the Unsplash-Lite photos.tsv* files")
            for row in reader:
                if limit is not None and len(rows) >= limit:
                    return rows
                photo_id, url, width, height = ((row.get(column) or "").strip() for column in REQUIRED_COLUMNS + SIZE_COLUMNS)
                where = f"{path} line {reader.line_num}"
                if not PHOTO_ID_PATTERN.match(photo_id):
                    raise ValueError(f"{where}: photo_id {photo_id!r} is empty or not a safe file name (letters, digits, '-', '_'); fix or remove the row")
                parts = urllib.parse.urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.netloc:
                    raise ValueError(f"{where}: photo_image_url {url!r} of photo_id {photo_id!r} is not an http(s) URL; fix or remove the row")
                if photo_id in seen:
                    raise ValueError(f"{where}: photo_id {photo_id!r} appears more than once in the tsv files; remove the duplicate row")
                seen.add(photo_id)
                rows.append(PhotoRow(photo_id, url, width, height))
    return rows


def with_size(url: str, param: str, pixels: int) -> str:
    """``url`` asking for ``param`` (``"w"`` or ``"h"``) = ``pixels``: its ``w`` and ``h`` are
    removed (with both the CDN fits the image into that box), the other parameters kept in order."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k not in ("w", "h")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query + [(param, str(pixels))])))


def tsv_size(row: PhotoRow) -> Optional[Tuple[int, int]]:
    """The photo's (width, height) from the tsv, or None when missing or not positive integers."""
    if row.photo_width.isdigit() and row.photo_height.isdigit() and int(row.photo_width) > 0 and int(row.photo_height) > 0:
        return int(row.photo_width), int(row.photo_height)
    return None


def min_side_request(row: PhotoRow, min_side: int) -> Tuple[str, int]:
    """``("h", min_side)`` for a landscape photo, ``("w", min_side)`` otherwise; ValueError when the
    tsv gives no valid size or the longer side would pass :data:`CDN_MAX_SIDE`."""
    size = tsv_size(row)
    if size is None:
        raise ValueError(f"photo_width={row.photo_width!r}, photo_height={row.photo_height!r}: --min-side needs both as "
                         "positive integers (tsv columns photo_width, photo_height); fix the row")
    width, height = size
    longer = math.ceil(min_side * max(width, height) / min(width, height))
    if longer > CDN_MAX_SIDE:
        raise ValueError(f"{width} x {height} photo: at a shorter side of {min_side} px its longer side would be {longer} px, over "
                         f"the CDN's {CDN_MAX_SIDE} px limit (it would come back with a shorter side under {min_side} px)")
    return ("h", min_side) if width > height else ("w", min_side)


def decoded_size(path) -> Optional[Tuple[int, int]]:
    """(width, height) of ``path`` if it exists and decodes completely with PIL, else None (PIL
    raises for truncated data while ``ImageFile.LOAD_TRUNCATED_IMAGES`` keeps its default)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except Exception:  # missing file, OSError, SyntaxError, ValueError, ... for bad data
        return None


def download_photo(row: PhotoRow, output_dir, min_side: int = DEFAULT_MIN_SIDE, *, timeout: float = 30.0,
                   retries: int = 3, backoff_base: float = 1.0) -> Tuple[str, str]:
    """One photo into ``<output_dir>/<photo_id>.jpg`` with its shorter side at ``min_side`` px,
    unless a complete file of that size is there. Returns ``(status, reason)``: downloaded /
    skipped / failed; never raises for a download problem. A row without a valid size fails
    even when its file exists."""
    from huggingface_hub.utils import http_backoff

    try:
        url = with_size(row.image_url, *min_side_request(row, min_side))
    except ValueError as err:
        return FAILED, str(err)
    destination = Path(output_dir) / f"{row.photo_id}.jpg"
    existing = decoded_size(destination)
    if existing is not None and min(existing) == min_side:
        return SKIPPED, ""
    try:
        response = http_backoff("GET", url, max_retries=retries, base_wait_time=backoff_base, timeout=timeout,
                                headers={"User-Agent": USER_AGENT})
    except Exception as err:  # connection errors, timeouts, truncated bodies after the last retry; 5xx from raise_for_status
        return FAILED, f"{type(err).__name__}: {err} (after {retries + 1} attempts)"
    if response.status_code != 200:
        return FAILED, f"HTTP {response.status_code}"

    def write(temporary: Path) -> None:
        temporary.write_bytes(response.content)
        size = decoded_size(temporary)
        if size is None:  # ValueError: not worth a retry
            raise ValueError(f"body of {len(response.content)} bytes does not decode as an image")
        if min(size) != min_side:
            raise ValueError(f"served {size[0]} x {size[1]} px, but --min-side {min_side} needs a shorter side of {min_side} px")

    try:
        atomic_write(destination, write)
    except (ValueError, OSError) as err:  # a bad body, or a disk error (which names the file)
        return FAILED, str(err)
    return DOWNLOADED, ""


def download_photos(rows: Sequence[PhotoRow], output_dir, min_side: int = DEFAULT_MIN_SIDE, *, workers: int = 8,
                    timeout: float = 30.0, retries: int = 3, backoff_base: float = 1.0, progress: bool = True) -> DownloadSummary:
    """``rows`` (from :func:`read_photo_rows`) into ``output_dir`` with ``workers`` threads (see
    :func:`download_photo`); writes ``failed.txt`` and returns the summary. Every option is checked
    before anything is written."""
    _check_number("min_side", min_side, 1, "pass the wanted shorter side in pixels (--min-side), e.g. 1024")
    _check_number("workers", workers, 1, "pass at least one worker thread")
    _check_number("retries", retries, 0, "pass 0 to disable retries")
    _check_number("timeout", timeout, 1e-3, "pass a timeout in seconds, e.g. 30", kind=float)
    _check_number("backoff_base", backoff_base, 0, "pass a delay in seconds, e.g. 1.0", kind=float)
    rows = list(rows)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    one = functools.partial(download_photo, output_dir=out, min_side=min_side, timeout=timeout, retries=retries, backoff_base=backoff_base)
    results = thread_map(one, rows, max_workers=workers, unit="img", desc="unsplash-lite", disable=not progress)
    statuses = [status for status, _ in results]
    failed = {row.photo_id: reason for row, (status, reason) in zip(rows, results) if status == FAILED}
    upscaled = [row.photo_id for row, status in zip(rows, statuses) if status == DOWNLOADED and min(tsv_size(row)) < min_side]
    atomic_write_text(out / "failed.txt", "".join(f"{photo_id}\n" for photo_id in failed))
    return DownloadSummary(len(rows), statuses.count(DOWNLOADED), statuses.count(SKIPPED), len(failed), failed, out, min_side, upscaled)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the download; 0 on success, 1 when every photo failed, 2 on bad input."""
    parser = argparse.ArgumentParser(description="Download the Unsplash-Lite photos (photos.tsv*) with their shorter side at N px, aspect kept.")
    parser.add_argument("inputs", nargs="+", help="the Unsplash-Lite directory (its photos.tsv* files are read) or explicit tsv files")
    parser.add_argument("--output-dir", required=True, help="where <photo_id>.jpg files are written")
    parser.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, metavar="N",
                        help=f"shorter side in pixels, aspect kept (default {DEFAULT_MIN_SIDE}: the training set)")
    parser.add_argument("--workers", type=int, default=8, help="number of parallel download threads")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    parser.add_argument("--retries", type=int, default=3, help="retries for transient errors")
    parser.add_argument("--backoff-base", type=float, default=1.0, help="seconds before the first retry; doubled before each further retry")
    parser.add_argument("--limit", type=int, default=None, help="download only the first N photos")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        files = find_tsv_files(args.inputs)
        rows = read_photo_rows(files, limit=args.limit)
        if not rows:
            raise ValueError(f"no photo rows in {', '.join(map(str, files))}: check the tsv files")
        summary = download_photos(rows, args.output_dir, args.min_side, workers=args.workers, timeout=args.timeout,
                                  retries=args.retries, backoff_base=args.backoff_base, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.format())
    return 1 if 0 < summary.total == summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
