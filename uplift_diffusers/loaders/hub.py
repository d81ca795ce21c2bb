"""Model files in local folders and Hub repositories, and whether the Hub answers: no torch, no
diffusers here, so that the command line's checks before loading answer before their imports."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import huggingface_hub.utils
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

#: Keyword arguments of ``from_pretrained`` that say where and how to fetch Hub files.
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
_HUB_URL = re.compile(r"(?:https?://)?(?:huggingface\.co|hf\.co)/(.*)")
_HUB_FILE = re.compile(r"([^/]+)/([^/]+)/(?:(?:blob|resolve)/([^/]+)/)?(.+)")


def read_model_config(config_file, argument: str) -> dict:
    """A model's ``config.json``, checked here because diffusers' own error for a broken one
    blames the network. ``argument`` names the folder or id it came from in the errors."""
    fix = "restore it, or save the model again (save_pretrained)"
    try:
        config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{argument}: its {str(config_file)!r} is not a valid JSON model config ({error}); {fix}."
        ) from error
    if not isinstance(config, dict):
        raise ValueError(f"{argument}: its {str(config_file)!r} is not a valid JSON model config (a JSON "
                         f"{type(config).__name__}, not an object); {fix}.")
    return config


def looks_like_local_path(text: str) -> bool:
    """Whether ``text`` is meant as a local path rather than a Hub name: it starts as a path does,
    or the folder it names something in exists."""
    parent = Path(text).parent
    return text.startswith((".", "/", "~", "\\")) or os.path.isabs(text) or (parent != Path(".") and parent.exists())


def local_folder(source, argument: str, file_hint: str) -> Optional[Path]:
    """The local folder ``source`` names, or None for a Hub repository id; ``file_hint`` says what to
    do with a file instead, and a local path that does not exist raises FileNotFoundError."""
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
        raise ValueError(f"{argument} must be a non-empty path or Hub id string, got {source!r}.")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        raise ValueError(f"{argument} must be a directory or a Hub id, got the file {text!r}; {file_hint}.")
    if path.is_dir():
        return path
    if text.count("/") > 1 or looks_like_local_path(text):  # a repository id has one slash at most
        raise FileNotFoundError(f"{argument}: local path not found: {text!r}.")
    return None


def locate_file(source: Union[Path, str], filenames: Sequence[str], **hub) -> Optional[Tuple[str, str]]:
    """``(local path, name)`` of the first of ``filenames`` in the local folder ``source`` (a Path;
    None when it holds none) or in the Hub repository ``source`` (``hub``: :data:`HUB_KWARGS`). A
    file missing from the repository, or offline from the cache, is skipped: a root ``config.json``
    the cache lacks does not hide a cached ``vae/config.json``."""
    if isinstance(source, Path):
        return next(((str(source / name), name) for name in filenames if (source / name).is_file()), None)
    hub = {key: value for key, value in hub.items() if value is not None}
    errors = []
    for name in filenames:
        try:
            return hf_hub_download(source, name, **hub), name
        except EntryNotFoundError as error:  # LocalEntryNotFoundError too: not in the cache, offline
            errors.append(error)
    if all(isinstance(error, LocalEntryNotFoundError) for error in errors):
        raise LocalEntryNotFoundError(
            f"None of {list(filenames)} of the Hub repository {source!r} is in the local cache and the Hub cannot be "
            "used (HF_HUB_OFFLINE=1, local_files_only=True or no network); download it once or pass a local path."
        ) from errors[-1]
    raise FileNotFoundError(f"The Hub repository {source!r} holds none of {list(filenames)}.") from errors[-1]


def hub_file_of(source, argument: str = "source") -> Optional[Tuple[str, str, Optional[str]]]:
    """``(repo_id, filename, revision or None)`` of a Hub file given as a URL
    (``https://huggingface.co/<org>/<repo>/blob|resolve/<revision>/<file>``, or ``hf.co``) or as
    ``"<org>/<repo>/<file>"``; None for anything else (a local path, a repository id), ValueError
    naming ``argument`` for a Hub URL that names no file."""
    if not isinstance(source, str):
        return None
    url = _HUB_URL.fullmatch(source)
    if url is None and "://" not in source and (source.count("/") < 2 or looks_like_local_path(source)):
        return None
    match = _HUB_FILE.fullmatch(source if url is None else url.group(1))  # never a URL of another site
    if match is None:
        raise ValueError(
            f"`{argument}` {source!r} is not a Hugging Face Hub file URL; expected "
            "https://huggingface.co/<org>/<repo>/blob/<revision>/<file> or '<org>/<repo>/<file>'."
        )
    org, name, revision, filename = match.groups()
    return f"{org}/{name}", filename, revision


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether the Hub answers with a success within ``timeout`` seconds (a proxy's error page is
    no answer)."""
    try:
        return huggingface_hub.utils.get_session().head(constants.ENDPOINT, timeout=timeout).status_code < 400
    except Exception:  # noqa: BLE001 - any failure means no answer
        return False
