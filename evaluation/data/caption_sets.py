"""Caption sets: the prompt / reference-image lists written by ``evaluation.data.prepare_coco`` and
``evaluation.data.prepare_relaion`` and read by ``evaluation.tasks.eval_text_to_image``.

A caption set is a ``.jsonl`` file, one JSON object a line, with the fields

* ``id``: a unique, file-name-safe key (letters, digits, ``_``, ``-``, ``.``); generated
  images are stored as ``<method>/<id>.png``;
* ``caption``: the prompt (non-empty);
* ``file_name``: the reference image, relative to the reference folder (may be empty when no
  reference image exists);

plus any extra fields (``url``, ``width``, ``height``, ...): JSON scalars (strings, numbers,
booleans), read back with their types.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

from uplift_diffusers.utils.atomic_files import atomic_write_text

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
REQUIRED_FIELDS = ("id", "caption", "file_name")


@dataclass(frozen=True)
class CaptionRow:
    """One prompt and its reference image."""

    id: str
    caption: str
    file_name: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "caption": self.caption, "file_name": self.file_name, **self.extra}


def clean_caption(text: str) -> str:
    """Collapse runs of whitespace (newlines, tabs) to single spaces and strip the ends."""
    return " ".join(str(text).split())


def _check_suffix(path: Path, what: str) -> None:
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"{what} {str(path)!r} must end in .jsonl, got {path.suffix!r}.")


def write_caption_set(rows: Sequence[CaptionRow], path) -> Path:
    """Write ``rows`` to the ``.jsonl`` file ``path``, atomically."""
    path = Path(path)
    _check_suffix(path, "caption set path")
    atomic_write_text(path, "".join(json.dumps(row.as_dict(), ensure_ascii=False) + "\n" for row in rows))
    return path


def _row_from_dict(record: Dict, source: str, number: int) -> CaptionRow:
    if not isinstance(record, dict):
        raise ValueError(f"{source} line {number}: expected a JSON object, got {type(record).__name__}.")
    missing = [name for name in ("id", "caption") if record.get(name) in (None, "")]
    if missing:
        raise ValueError(f"{source} line {number}: missing field(s) {missing}; every row needs id and caption.")
    extra = {str(k): v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v) for k, v in record.items() if k not in REQUIRED_FIELDS}
    return CaptionRow(str(record["id"]), str(record["caption"]), str(record.get("file_name") or ""), extra)


def read_caption_set(path) -> List[CaptionRow]:
    """Read a ``.jsonl`` caption set; checks ids (unique, file-name safe) and captions."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"caption set not found: {str(path)!r}; write one with python -m evaluation.data.prepare_coco or evaluation.data.prepare_relaion.")
    _check_suffix(path, "caption set")
    rows: List[CaptionRow] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not valid JSON: {error}") from error
        rows.append(_row_from_dict(record, str(path), number))
    if not rows:
        raise ValueError(f"caption set {str(path)!r} is empty.")
    seen = set()
    for number, row in enumerate(rows, start=1):
        if not ID_PATTERN.match(row.id):
            raise ValueError(f"{path} row {number}: id {row.id!r} is empty or not file-name safe (letters, digits, _ - .).")
        if row.id in seen:
            raise ValueError(f"{path} row {number}: id {row.id!r} appears twice; ids must be unique.")
        seen.add(row.id)
        if not row.caption.strip():
            raise ValueError(f"{path} row {number} (id {row.id!r}): the caption is empty.")
    return rows
