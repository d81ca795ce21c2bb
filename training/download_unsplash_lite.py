"""Download the Unsplash-Lite photographs with their shorter side at N px (or at a fixed width).

The Unsplash-Lite dataset ships its photo table as tab-separated files named
``photos.tsv000``, ``photos.tsv001``, ... (each with its own header row). Every row names a
``photo_id``, a ``photo_image_url`` and the original size ``photo_width`` x ``photo_height``;
the other columns are ignored. This script asks the Unsplash image CDN (imgix) for each photo
at a size set by one query parameter of that URL, keeping the aspect ratio, and stores the
answer as ``<output-dir>/<photo_id>.jpg``:

* ``--min-side N`` (the default, N = 1024; the way to build the training set): the shorter side
  becomes N px. A landscape photo (``photo_width > photo_height``) is requested with ``h=N``,
  a portrait or square one with ``w=N``. A row whose ``photo_width`` / ``photo_height`` is
  missing or not a positive integer fails (with that reason, listed in ``failed.txt``); so does
  a photo whose longer side would exceed the CDN's 8192 px output limit at that size (a
  panorama wider than 8:1 at N = 1024), and a served image whose shorter side is not N px.
* ``--width W``: every photo is ``W`` px wide (``w=W``). Landscape photos then have a shorter
  side under ``W``, which training at ``W`` px skips: use ``--min-side`` for training data.

Behaviour:

* a bounded pool of worker threads (``--workers``) downloads in parallel;
* every request has a timeout (``--timeout``); connection errors, timeouts, HTTP 5xx / 408 /
  429 answers and truncated bodies (fewer bytes than ``Content-Length``) are retried up to
  ``--retries`` times with exponential backoff (``--backoff-base`` * 2**k seconds); other
  HTTP errors (404 and the rest of 4xx) fail at once;
* every downloaded body must decode with PIL (``Image.open(...).load()``); a body that does
  not decode counts as failed and is never left on disk;
* files are written to a temporary file in the output directory and moved into place with
  ``os.replace``, so an interrupted run never leaves a half-written ``<photo_id>.jpg``;
* a run resumes: an existing ``<photo_id>.jpg`` that decodes (and, with ``--min-side N``, has
  a shorter side of N px) is skipped, any other is downloaded again (with ``--width`` the width
  of an existing file is not checked, so use one output directory per size);
* the run ends with a summary (downloaded / skipped / failed) and writes the failed photo
  ids, one a line, to ``<output-dir>/failed.txt`` (rewritten on every run; empty when
  nothing failed).

Example::

    python -m training.download_unsplash_lite /data/unsplash-lite \\
        --output-dir data/unsplash-lite/min-side-1024 --min-side 1024 --workers 16

The exit status is 0 when at least one photo was downloaded or skipped, 1 when every photo
failed, and 2 when the input is bad (missing file, missing column, invalid option). The
downloads themselves are :mod:`uplift_diffusers.utils.downloads` (standard library and Pillow).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from uplift_diffusers.utils.atomic_files import atomic_write_text
from training.downloads import (  # noqa: F401 (decoded_size, is_complete_image: re-exported)
    DOWNLOADED,
    FAILED,
    SKIPPED,
    DownloadResult,
    check_http_url,
    decoded_size,
    download_image,
    is_complete_image,
)

REQUIRED_COLUMNS = ("photo_id", "photo_image_url")
SIZE_COLUMNS = ("photo_width", "photo_height")  # optional for --width, needed per row for --min-side
DEFAULT_MIN_SIDE = 1024
#: imgix (the Unsplash image CDN) scales every output image to fit 8192 x 8192 px.
CDN_MAX_SIDE = 8192
TSV_NAME_PATTERN = re.compile(r"^photos\.tsv\d*$")
PHOTO_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
FAILED_LIST_NAME = "failed.txt"


@dataclass(frozen=True)
class PhotoRow:
    """One photo of the dataset: its id, the URL of the original image and its size as the tsv
    gives it (raw text of ``photo_width`` / ``photo_height``; empty when the column is absent)."""

    photo_id: str
    image_url: str
    photo_width: str = ""
    photo_height: str = ""


@dataclass
class DownloadSummary:
    """Counts of one run, the failed ids (in input order) and why each of them failed."""

    total: int
    downloaded: int
    skipped: int
    failed: int
    failed_ids: list[str] = field(default_factory=list)
    failure_reasons: dict[str, str] = field(default_factory=dict)
    output_dir: Path | None = None
    failed_list_path: Path | None = None
    size: str = ""
    upscaled_ids: list[str] = field(default_factory=list)

    @property
    def all_failed(self) -> bool:
        """True when there was at least one photo and none of them was downloaded or skipped."""
        return self.total > 0 and self.failed == self.total

    def format(self, max_reasons: int = 10) -> str:
        """A short human-readable report: the counts, then up to ``max_reasons`` failures."""
        lines = [
            f"Unsplash-Lite download: {self.total} photos" + (f" at {self.size}" if self.size else "") + f" -> {self.output_dir}",
            f"  downloaded: {self.downloaded}",
            f"  skipped (already complete): {self.skipped}",
            f"  failed: {self.failed}" + (f" (ids in {self.failed_list_path})" if self.failed else ""),
        ]
        if self.upscaled_ids:
            lines.insert(2, f"    of which {len(self.upscaled_ids)} smaller than that in the tsv (upscaled by the CDN)")
        for photo_id in self.failed_ids[:max_reasons]:
            lines.append(f"    {photo_id}: {self.failure_reasons.get(photo_id, '')}")
        if len(self.failed_ids) > max_reasons:
            lines.append(f"    ... and {len(self.failed_ids) - max_reasons} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------- inputs


def find_tsv_files(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Resolve directories and files into the list of ``photos.tsv*`` files to read.

    A directory contributes every file in it named ``photos.tsv`` or ``photos.tsv<digits>``
    (``photos.tsv000``, ``photos.tsv001``, ...), sorted by name; a file is used as given.
    Raises FileNotFoundError for a path that does not exist or a directory without such
    files, and ValueError for an empty ``inputs``.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise ValueError(
            "inputs is empty: pass the Unsplash-Lite directory or its photos.tsv* files"
        )
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and TSV_NAME_PATTERN.match(p.name))
            if not found:
                raise FileNotFoundError(
                    f"no photos.tsv* file in directory {path}: point inputs at the unpacked "
                    "Unsplash-Lite folder (it contains photos.tsv000, photos.tsv001, ...)"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(
                f"photos tsv file not found: {path} (check the path to the Unsplash-Lite dataset)"
            )
    return files


def iter_photo_rows(tsv_files: Iterable[str | os.PathLike]) -> Iterable[PhotoRow]:
    """Yield a PhotoRow for every data row of the given tab-separated files, in order.

    The ``photo_id`` and ``photo_image_url`` columns are required, ``photo_width`` and
    ``photo_height`` are read as text when present (checked later, per row, by
    :func:`min_side_request`). A file without a required column raises ValueError naming the
    file and the column; a row with an empty or unsafe
    ``photo_id`` (anything other than letters, digits, ``-`` and ``_``) or an empty URL
    raises ValueError naming the file and line.
    """
    for tsv in tsv_files:
        path = Path(tsv)
        if not path.is_file():
            raise FileNotFoundError(f"photos tsv file not found: {path}")
        with path.open("r", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            header = reader.fieldnames
            if header is None:
                raise ValueError(
                    f"{path} is empty: expected a header row with the columns "
                    f"{', '.join(REQUIRED_COLUMNS)}"
                )
            for column in REQUIRED_COLUMNS:
                if column not in header:
                    raise ValueError(
                        f"{path} has no column '{column}' (header: {', '.join(header)}); "
                        "pass the Unsplash-Lite photos.tsv* files"
                    )
            for row in reader:
                line = reader.line_num
                photo_id = (row.get("photo_id") or "").strip()
                url = (row.get("photo_image_url") or "").strip()
                width, height = ((row.get(column) or "").strip() for column in SIZE_COLUMNS)
                if not PHOTO_ID_PATTERN.match(photo_id):
                    raise ValueError(
                        f"{path} line {line}: photo_id {photo_id!r} is empty or not a safe file "
                        "name (letters, digits, '-', '_'); fix or remove the row"
                    )
                if not url:
                    raise ValueError(
                        f"{path} line {line}: photo_image_url is empty for photo_id {photo_id!r}; "
                        "fix or remove the row"
                    )
                yield PhotoRow(photo_id=photo_id, image_url=url, photo_width=width, photo_height=height)


def read_photo_rows(
    tsv_files: Iterable[str | os.PathLike], limit: int | None = None
) -> list[PhotoRow]:
    """Read the photo rows of ``tsv_files`` (see ``iter_photo_rows``), at most ``limit`` of them.

    A photo id that appears twice raises ValueError (both rows would write the same file).
    """
    if limit is not None:
        _check_int("limit", limit, minimum=1, fix="pass a positive number of photos or None for all")
    rows: list[PhotoRow] = []
    seen: set[str] = set()
    for row in iter_photo_rows(tsv_files):
        if limit is not None and len(rows) >= limit:
            break
        if row.photo_id in seen:
            raise ValueError(
                f"photo_id {row.photo_id!r} appears more than once in the tsv files; "
                "remove the duplicate row"
            )
        seen.add(row.photo_id)
        rows.append(row)
    return rows


def _with_query_size(url: str, drop: tuple[str, ...], param: str, pixels: int) -> str:
    """``url`` without its ``drop`` query parameters, then with ``param=pixels`` appended; the
    other parameters are kept in their order."""
    parts = check_http_url(url, "photo_image_url")
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k not in drop]
    query.append((param, str(pixels)))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def with_width(url: str, width: int) -> str:
    """Return ``url`` with its ``w`` query parameter set to ``width``; other parameters are kept.

    An existing ``w`` is replaced (not duplicated); the order of the other parameters is kept.
    """
    _check_int("width", width, minimum=1, fix="pass the wanted image width in pixels, e.g. 1024")
    return _with_query_size(url, ("w",), "w", width)


def with_size(url: str, param: str, pixels: int) -> str:
    """Return ``url`` asking for ``param`` (``"w"`` or ``"h"``) = ``pixels``, aspect ratio kept.

    Existing ``w`` and ``h`` parameters are both removed (with both set the CDN fits the image
    into that box); the other parameters are kept in their order.
    """
    if param not in ("w", "h"):
        raise ValueError(f"param must be 'w' or 'h', got {param!r}")
    _check_int(f"{param} (pixels)", pixels, minimum=1, fix="pass the wanted size in pixels, e.g. 1024")
    return _with_query_size(url, ("w", "h"), param, pixels)


def tsv_size(row: PhotoRow) -> tuple[int, int] | None:
    """The photo's original (width, height) from the tsv, or None when missing or invalid."""
    if row.photo_width.isdigit() and row.photo_height.isdigit() and int(row.photo_width) > 0 and int(row.photo_height) > 0:
        return int(row.photo_width), int(row.photo_height)
    return None


def min_side_request(row: PhotoRow, min_side: int) -> tuple[str, int]:
    """The query parameter that makes the photo's shorter side ``min_side`` px, aspect kept:
    ``("h", min_side)`` for a landscape photo (width > height), ``("w", min_side)`` otherwise.

    Raises ValueError (a per-row failure) when the tsv gives no valid size, or when the longer
    side would exceed the CDN's :data:`CDN_MAX_SIDE` px (the CDN would shrink the image).
    """
    _check_int("min_side", min_side, minimum=1, fix="pass the wanted shorter side in pixels, e.g. 1024")
    size = tsv_size(row)
    if size is None:
        raise ValueError(
            f"photo_width={row.photo_width!r}, photo_height={row.photo_height!r}: --min-side needs both as "
            "positive integers (tsv columns photo_width, photo_height); fix the row or use --width"
        )
    width, height = size
    longer = math.ceil(min_side * max(width, height) / min(width, height))
    if longer > CDN_MAX_SIDE:
        raise ValueError(
            f"{width} x {height} photo: at a shorter side of {min_side} px its longer side would be {longer} px, over "
            f"the CDN's {CDN_MAX_SIDE} px limit (it would come back with a shorter side under {min_side} px)"
        )
    return ("h", min_side) if width > height else ("w", min_side)


# --------------------------------------------------------------------------- one photo


def _size_problem(size: tuple[int, int], min_side: int | None) -> str:
    """'' when ``size`` is what ``min_side`` asks for (or there is no ``min_side``), else why not."""
    if min_side is None or min(size) == min_side:
        return ""
    return f"served {size[0]} x {size[1]} px, but --min-side {min_side} needs a shorter side of {min_side} px"


def output_path(output_dir: str | os.PathLike, photo_id: str) -> Path:
    """The file a photo is stored in: ``<output_dir>/<photo_id>.jpg``."""
    return Path(output_dir) / f"{photo_id}.jpg"


def _check_size_choice(width, min_side) -> None:
    if (width is None) == (min_side is None):
        raise ValueError(
            f"pass exactly one of width ({width!r}) and min_side ({min_side!r}): min_side=1024 (shorter side "
            "1024 px, aspect kept) builds the training set; width fixes the width of every photo"
        )
    if width is not None:
        _check_int("width", width, minimum=1, fix="pass the wanted image width in pixels, e.g. 1024")
    else:
        _check_int("min_side", min_side, minimum=1, fix="pass the wanted shorter side in pixels, e.g. 1024")


def download_photo(
    row: PhotoRow,
    output_dir: str | os.PathLike,
    width: int | None = None,
    *,
    min_side: int | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff_base: float = 1.0,
    opener: urllib.request.OpenerDirector | None = None,
) -> DownloadResult:
    """Download one photo into ``<output_dir>/<photo_id>.jpg``, either ``width`` px wide or with
    its shorter side at ``min_side`` px (aspect kept, see :func:`min_side_request`): exactly one.

    Fetched with :func:`uplift_diffusers.utils.downloads.download_image`: skips a photo whose
    file already decodes (with ``min_side``: and has that shorter side); retries transient errors
    (connection errors, timeouts, HTTP 5xx / 408 / 429, truncated bodies) up to ``retries``
    times, sleeping ``backoff_base * 2**k`` seconds before retry k (k = 0, 1, ...). A 404 or other 4xx answer, a body that does not decode, an image of the
    wrong shorter side, and (with ``min_side``) a row without a valid size fail without retry
    (such a row fails even when its file exists: its size cannot be checked against the tsv).
    Never raises for a download problem: the outcome is in the returned DownloadResult.
    """
    _check_size_choice(width, min_side)
    try:
        url = with_width(row.image_url, width) if min_side is None else with_size(row.image_url, *min_side_request(row, min_side))
    except ValueError as err:
        return DownloadResult(row.photo_id, FAILED, 0, str(err))
    return download_image(
        url, output_path(output_dir, row.photo_id), name=row.photo_id,
        size_problem=None if min_side is None else lambda size: _size_problem(size, min_side),
        timeout=timeout, retries=retries, backoff_base=backoff_base, opener=opener,
    )


# --------------------------------------------------------------------------- all photos


def _check_int(name: str, value, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}: {fix}")


def _check_number(name: str, value, minimum: float, strict: bool, fix: str) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a number {relation} {minimum}, got {value!r}: {fix}")


def download_photos(
    rows: Sequence[PhotoRow],
    output_dir: str | os.PathLike,
    width: int | None = None,
    *,
    min_side: int | None = None,
    workers: int = 8,
    timeout: float = 30.0,
    retries: int = 3,
    backoff_base: float = 1.0,
    progress: bool = True,
) -> DownloadSummary:
    """Download ``rows`` into ``output_dir`` with a pool of ``workers`` threads, each photo
    ``width`` px wide or with its shorter side at ``min_side`` px (exactly one; see
    :func:`download_photo`).

    Creates ``output_dir`` if needed, shows a tqdm progress bar when ``progress`` is true,
    writes the failed ids to ``<output_dir>/failed.txt`` and returns the DownloadSummary.
    """
    _check_size_choice(width, min_side)
    _check_int("workers", workers, minimum=1, fix="pass at least one worker thread")
    _check_int("retries", retries, minimum=0, fix="pass 0 to disable retries")
    _check_number("timeout", timeout, 0, strict=True, fix="pass a timeout in seconds, e.g. 30")
    _check_number("backoff_base", backoff_base, 0, strict=False, fix="pass a delay in seconds, e.g. 1.0")
    rows = list(rows)
    for row in rows:
        if not isinstance(row, PhotoRow):
            raise ValueError(f"rows must hold PhotoRow items, got {type(row).__name__}: use read_photo_rows")
        with_width(row.image_url, 1)  # validates every URL before any download starts
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    opener = urllib.request.build_opener()
    results: dict[str, DownloadResult] = {}
    counts = {DOWNLOADED: 0, SKIPPED: 0, FAILED: 0}
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(rows), unit="img", desc="unsplash-lite", disable=not progress
    ) as bar:
        futures = {
            pool.submit(
                download_photo, row, out, width, min_side=min_side,
                timeout=timeout, retries=retries, backoff_base=backoff_base, opener=opener,
            ): row
            for row in rows
        }
        for future in as_completed(futures):
            row = futures[future]
            try:
                result = future.result()
            except Exception as err:  # an unexpected bug must not stop the other downloads
                result = DownloadResult(row.photo_id, FAILED, reason=f"{type(err).__name__}: {err}")
            results[row.photo_id] = result
            counts[result.status] += 1
            bar.update(1)
            bar.set_postfix(ok=counts[DOWNLOADED], skip=counts[SKIPPED], fail=counts[FAILED], refresh=False)

    failed_ids = [row.photo_id for row in rows if results[row.photo_id].status == FAILED]
    upscaled_ids = []  # downloaded with --min-side, so with a valid tsv size
    if min_side is not None:
        upscaled_ids = [
            row.photo_id for row in rows if results[row.photo_id].status == DOWNLOADED and min(tsv_size(row)) < min_side
        ]
    failed_list = out / FAILED_LIST_NAME
    atomic_write_text(failed_list, "".join(f"{photo_id}\n" for photo_id in failed_ids))
    return DownloadSummary(
        total=len(rows),
        downloaded=counts[DOWNLOADED],
        skipped=counts[SKIPPED],
        failed=counts[FAILED],
        failed_ids=failed_ids,
        failure_reasons={pid: results[pid].reason for pid in failed_ids},
        output_dir=out,
        failed_list_path=failed_list,
        size=f"width {width} px" if min_side is None else f"shorter side {min_side} px",
        upscaled_ids=upscaled_ids,
    )


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of this script."""
    parser = argparse.ArgumentParser(
        description=(
            "Download the Unsplash-Lite photos (photos.tsv*) with their shorter side at N px, aspect kept "
            f"(--min-side, default {DEFAULT_MIN_SIDE}: the training set), or at a fixed width (--width)."
        ),
    )
    parser.add_argument(
        "inputs", nargs="+",
        help="the Unsplash-Lite directory (its photos.tsv* files are read) or explicit tsv files",
    )
    parser.add_argument("--output-dir", required=True, help="where <photo_id>.jpg files are written")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--min-side", type=int, default=None, metavar="N",
        help=f"shorter side in pixels, aspect kept: h=N for landscape, w=N for portrait and square photos, "
        f"from the tsv's photo_width / photo_height (default {DEFAULT_MIN_SIDE}; the way to build the training set)",
    )
    size.add_argument(
        "--width", type=int, default=None,
        help="fixed image width in pixels (w=WIDTH); landscape photos then have a shorter side under WIDTH",
    )
    parser.add_argument("--workers", type=int, default=8, help="number of parallel download threads")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    parser.add_argument("--retries", type=int, default=3, help="retries for transient errors")
    parser.add_argument(
        "--backoff-base", type=float, default=1.0,
        help="seconds before the first retry; doubled before each further retry",
    )
    parser.add_argument("--limit", type=int, default=None, help="download only the first N photos")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the download; return 0 on success, 1 when every photo failed, 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        if args.width is None and args.min_side is None:
            args.min_side = DEFAULT_MIN_SIDE
        if args.width is not None:
            _check_int("--width", args.width, minimum=1, fix="pass --width 1024 or another positive width")
        else:
            _check_int("--min-side", args.min_side, minimum=1, fix="pass --min-side 1024 or another positive size")
        _check_int("workers", args.workers, minimum=1, fix="pass --workers 1 or more")
        files = find_tsv_files(args.inputs)
        rows = read_photo_rows(files, limit=args.limit)
        if not rows:
            raise ValueError(f"no photo rows in {', '.join(map(str, files))}: check the tsv files")
        summary = download_photos(
            rows, args.output_dir, args.width, min_side=args.min_side,
            workers=args.workers, timeout=args.timeout, retries=args.retries,
            backoff_base=args.backoff_base, progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.format())
    return 1 if summary.all_failed else 0


if __name__ == "__main__":
    sys.exit(main())
