"""Write files atomically: to a temporary name in the same folder, then ``os.replace``.

An interrupted run never leaves a half-written results file or image under its final name,
which is what makes the evaluation scripts resumable. Files get the usual permissions
(``0o666`` minus the umask), like files opened with ``open``.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Union

from PIL import Image

__all__ = ["atomic_write", "atomic_write_text", "atomic_save_image", "check_writable_directory"]


def check_writable_directory(path: Union[str, os.PathLike], argument: str = "output") -> Path:
    """Make sure files can be written in the folder ``path`` before any work: create it (and its
    parents) if needed and write and remove one empty file in it. Returns the folder."""
    folder = Path(path).expanduser()
    shown = f"`{argument}` {str(path)!r}"
    blocking = next((place for place in (folder, *folder.parents) if place.exists() and not place.is_dir()), None)
    if blocking is not None:  # the folder itself, or one above it
        raise ValueError(f"{shown}: {str(blocking)!r} is a file, not a folder; pass another folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # raises the OSError that writing would
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"{shown} cannot be written ({reason}); pass a writable folder.") from error
    return folder


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path`` (parents are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8", newline=""))


def atomic_save_image(image: Image.Image, path: Union[str, os.PathLike], format: str = "PNG", **options) -> Path:
    """Save a PIL image to ``path`` atomically (``format`` is explicit: the temporary name has no suffix)."""
    return atomic_write(path, lambda temporary: image.save(temporary, format=format, **options))
