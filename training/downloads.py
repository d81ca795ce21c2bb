"""Downloading image files robustly, for the training data (``python -m training.download_unsplash_lite``)
and the evaluation data (``python -m evaluation.data.prepare_relaion``).

:func:`download_image` fetches one URL into one file:

* every request has a timeout; connection errors, timeouts, HTTP 5xx / 408 / 429 answers and
  truncated bodies (fewer bytes than ``Content-Length``) are retried with exponential backoff
  (``backoff_base * 2**k`` seconds before retry k); other HTTP errors (404 and the rest of 4xx)
  fail at once;
* the body must decode completely with PIL (and pass the caller's size check), else it counts as
  failed and is never left on disk; it is written atomically (a temporary file, then
  ``os.replace``), so an interrupted run never leaves a half-written image;
* a destination that already decodes (and passes the size check) is skipped, so runs resume.

It never raises for a download problem: the outcome is in the returned :class:`DownloadResult`.
Only the standard library and Pillow are used.
"""
from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

from PIL import Image

from uplift_diffusers.utils.atomic_files import atomic_write

__all__ = [
    "DOWNLOADED",
    "SKIPPED",
    "FAILED",
    "DownloadResult",
    "check_http_url",
    "decoded_size",
    "is_complete_image",
    "download_image",
]

USER_AGENT = "uplift-diffusers-downloader/0.1"
RETRYABLE_HTTP_CODES = frozenset({408, 429})

DOWNLOADED = "downloaded"
SKIPPED = "skipped"
FAILED = "failed"

#: ``size_problem(width, height)`` -> "" when an image of that size is wanted, else why not.
SizeCheck = Callable[[Tuple[int, int]], str]


@dataclass(frozen=True)
class DownloadResult:
    """What happened to one file: ``status`` is ``downloaded``, ``skipped`` or ``failed``; ``name``
    identifies it (e.g. a photo id), ``attempts`` counts the requests, ``reason`` says why it failed."""

    name: str
    status: str
    attempts: int = 0
    reason: str = ""


class _RetryableError(Exception):
    """A transient download problem (connection, timeout, 5xx, truncated body)."""


class _PermanentError(Exception):
    """A download problem that retrying will not fix (404 and other 4xx answers)."""


class _Rejected(Exception):
    """A body that is not the wanted image (does not decode, wrong size)."""


def check_http_url(url: str, what: str = "url") -> urllib.parse.SplitResult:
    """The parts of ``url``; ValueError unless it is an http(s) URL with a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} {url!r} is not an http(s) URL; pass a URL starting with http:// or https://")
    return parts


def decoded_size(path: Union[str, os.PathLike]) -> Optional[Tuple[int, int]]:
    """(width, height) of ``path`` when it exists and decodes completely with PIL
    (``Image.open(path).load()``), else None.

    Note: this relies on PIL raising for truncated data, i.e. on
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` being left at its default (False).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
        return None


def is_complete_image(path: Union[str, os.PathLike]) -> bool:
    """True when ``path`` exists and decodes completely with PIL (see :func:`decoded_size`)."""
    return decoded_size(path) is not None


def _fetch(opener: urllib.request.OpenerDirector, url: str, timeout: float) -> bytes:
    """GET ``url`` and return the complete body, mapping errors to retryable / permanent."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with opener.open(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            body = response.read()
    except urllib.error.HTTPError as err:
        err.close()
        message = f"HTTP {err.code} {err.reason}"
        if err.code >= 500 or err.code in RETRYABLE_HTTP_CODES:
            raise _RetryableError(message) from err
        raise _PermanentError(message) from err
    except http.client.IncompleteRead as err:
        raise _RetryableError(
            f"truncated body: got {len(err.partial)} bytes, expected {len(err.partial) + (err.expected or 0)}"
        ) from err
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        # OSError covers TimeoutError / socket.timeout and ConnectionError.
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        raise _RetryableError(f"{type(reason).__name__}: {reason}") from err
    if expected is not None and expected.isdigit() and len(body) != int(expected):
        raise _RetryableError(f"truncated body: got {len(body)} bytes, Content-Length {expected}")
    return body


def _write_verified(body: bytes, destination: Path, size_problem: Optional[SizeCheck]) -> str:
    """Write ``body`` atomically to ``destination`` if it decodes (and ``size_problem`` finds none);
    return '' or the reason it was not written."""

    def write(temporary: Path) -> None:
        temporary.write_bytes(body)
        size = decoded_size(temporary)
        if size is None:
            raise _Rejected(f"body of {len(body)} bytes does not decode as an image")
        problem = size_problem(size) if size_problem is not None else ""
        if problem:
            raise _Rejected(problem)

    try:
        atomic_write(destination, write)
    except _Rejected as rejected:
        return str(rejected)
    return ""


def download_image(
    url: str,
    destination: Union[str, os.PathLike],
    *,
    name: Optional[str] = None,
    size_problem: Optional[SizeCheck] = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff_base: float = 1.0,
    opener: Optional[urllib.request.OpenerDirector] = None,
) -> DownloadResult:
    """Download the image at ``url`` (requested exactly as given) into ``destination``.

    Skips a destination that already decodes and passes ``size_problem``. Retries transient
    errors (connection errors, timeouts, HTTP 5xx / 408 / 429, truncated bodies) up to ``retries``
    times, sleeping ``backoff_base * 2**k`` seconds before retry k (k = 0, 1, ...). A 404 or other
    4xx answer, a body that does not decode and an image that ``size_problem`` rejects fail without
    retry. ``name`` labels the result (default: the destination's stem).
    """
    destination = Path(destination)
    name = destination.stem if name is None else name
    existing = decoded_size(destination)
    if existing is not None and not (size_problem and size_problem(existing)):
        return DownloadResult(name, SKIPPED)
    opener = opener or urllib.request.build_opener()
    reason = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_base * 2 ** (attempt - 1))
        try:
            body = _fetch(opener, url, timeout)
        except _PermanentError as err:
            return DownloadResult(name, FAILED, attempt + 1, str(err))
        except _RetryableError as err:
            reason = str(err)
            continue
        try:
            problem = _write_verified(body, destination, size_problem)
        except OSError as err:
            return DownloadResult(name, FAILED, attempt + 1, f"could not write {destination}: {err}")
        if problem:
            return DownloadResult(name, FAILED, attempt + 1, problem)
        return DownloadResult(name, DOWNLOADED, attempt + 1)
    return DownloadResult(name, FAILED, retries + 1, f"{reason} (after {retries + 1} attempts)")
