"""Checks of the evaluation scripts' command-line flags and of the files they name, one wording for all."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["check_at_least", "read_json_file"]


def check_at_least(args, minimums: Mapping[str, float]) -> None:
    """ValueError naming the first flag of ``minimums`` (``args`` attribute -> least value, e.g.
    ``{"num": 1, "warmup": 0}``) whose value is below it: ``--num must be >= 1, got 0.``; an
    unset flag (``None``) passes."""
    for name, least in minimums.items():
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {value}.")


def read_json_file(path, name: str, fix: str) -> Any:
    """The JSON document at ``path``, which ``name`` (a flag, or a description such as
    ``"results"``) names: FileNotFoundError ``<name> file not found: <path>; <fix>`` when it is
    missing, ValueError ``<name> <path> is not valid JSON: ...`` when it does not parse."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name} file not found: {str(path)!r}; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} {str(path)!r} is not valid JSON: {error}") from error
