"""Finding files of Hugging Face Hub repositories, the local cache first; the loaders' shared arguments.

The loaders of this package choose between layouts (a diffusers ``config.json`` or the authors'
single file; a VAE at a repository's root or in its ``vae/`` folder) by asking which file a
repository has. :func:`locate_hub_file` answers from the local cache first (as
``huggingface_hub`` lays it out), so that offline (``HF_HUB_OFFLINE=1`` or
``local_files_only=True``) the choice needs no network and a file missing from the cache is
reported at once, and a local "not in the cache" is never mistaken for "not in the repository".
:func:`single_file_path` resolves a single-file checkpoint given as a path, a Hub URL or
``org/repo/file``; :func:`pick_dtype` checks the ``torch_dtype`` / ``dtype`` pair of diffusers and
:func:`dtype_kwargs` passes a dtype under the name the installed diffusers expects.
:func:`from_hub` turns "the Hub cannot be reached and the model is not cached" into one
:class:`HubUnavailableError` saying what to pass instead.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, TypeVar

import torch
from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, try_to_load_from_cache
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled

__all__ = [
    "HUB_KWARGS",
    "HubUnavailableError",
    "is_connection_error",
    "from_hub",
    "dtype_kwargs",
    "hub_offline",
    "hub_kwargs_of",
    "locate_hub_file",
    "looks_like_local_path",
    "single_file_path",
    "pick_dtype",
    "single_file_options",
]

#: Keyword arguments of ``from_pretrained`` that say where and how to fetch Hub files.
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
#: Further ``from_pretrained`` arguments applied to a single-file checkpoint, and those that change nothing there.
_SINGLE_FILE_APPLIED = ("subfolder", "torch_dtype", "dtype", "device_map")
_SINGLE_FILE_NO_EFFECT = ("low_cpu_mem_usage", "disable_mmap", "use_safetensors")
_CONNECTION_WORDS = ("connect", "offline", "network", "resolve host", "timed out", "unreachable")

T = TypeVar("T")


class HubUnavailableError(FileNotFoundError):
    """A model had to come from the Hugging Face Hub, which cannot be reached (or may not be
    contacted: ``HF_HUB_OFFLINE=1``), and it is not in the local cache."""


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) means the Hub could not be reached."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            return True
        module = type(error).__module__.split(".")[0]
        name = type(error).__name__
        if module in ("requests", "httpx", "httpx2", "httpcore", "urllib3") and any(
            word in name for word in ("Connect", "Timeout", "Network", "Transport", "Proxy")
        ):
            return True
        if isinstance(error, OSError) and any(word in str(error).lower() for word in _CONNECTION_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


def from_hub(what: str, hint: str, load: Callable[[], T]) -> T:
    """Run ``load``; when it fails because the Hub cannot be reached and the files are not cached,
    raise one :class:`HubUnavailableError` naming ``what`` (e.g. ``"the VAE 'org/name'"``) and
    ``hint`` (what to pass instead, e.g. a command-line flag). huggingface_hub's log line per
    retry is silenced meanwhile; other errors pass through unchanged."""
    from huggingface_hub.utils import logging as hub_logging

    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        return load()
    except HubUnavailableError:
        raise
    except Exception as error:  # noqa: BLE001 - classified below, re-raised otherwise
        if not is_connection_error(error):
            raise
        offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") else ""
        raise HubUnavailableError(
            f"cannot reach the Hugging Face Hub{offline} and {what} is not in the local cache; pass a local path "
            f"with {hint} (or run once with network access)."
        ) from error
    finally:
        hub_logging.set_verbosity(verbosity)


def dtype_kwargs(dtype: Optional[torch.dtype]) -> dict:
    """``from_pretrained`` keyword for ``dtype``: ``dtype=`` where diffusers has it (``torch_dtype``
    is deprecated there), else ``torch_dtype=``; ``{}`` for None."""
    if dtype is None:
        return {}
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401 - present once `dtype=` exists
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def hub_offline(local_files_only: Optional[bool] = None) -> bool:
    """Whether the Hub must not be contacted: ``local_files_only`` or ``HF_HUB_OFFLINE``."""
    return bool(local_files_only) or hub_constants.is_offline_mode()


def hub_kwargs_of(kwargs: dict) -> dict:
    """The :data:`HUB_KWARGS` entries of ``kwargs`` that are set (not None / False)."""
    return {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) not in (None, False)}


def looks_like_local_path(text: str, max_slashes: Optional[int] = None) -> bool:
    """Whether ``text`` is meant as a local path rather than a Hub name: it starts with ``.``,
    ``/``, ``~`` or ``\\``, is absolute, its parent folder exists, or (with ``max_slashes``) it
    has more slashes than a Hub name of that kind."""
    if text.startswith((".", "/", "~", "\\")) or os.path.isabs(text):
        return True
    if max_slashes is not None and text.count("/") > max_slashes:
        return True
    parent = Path(text).parent
    return parent != Path(".") and parent.exists()


def locate_hub_file(
    repo_id: str,
    filenames: Sequence[str],
    *,
    revision: Optional[str] = None,
    cache_dir=None,
    local_files_only: Optional[bool] = None,
    force_download: bool = False,
    token=None,
    proxies=None,
) -> Tuple[str, str]:
    """``(local path, name)`` of the first of ``filenames`` (paths inside ``repo_id``, e.g.
    ``"vae/config.json"``) that the repository holds, downloading it when needed.

    A file already in the cache is chosen without contacting the Hub (online it is then fetched
    with ``hf_hub_download``, which only checks that the cached copy is current). Offline, when
    none is cached, :class:`huggingface_hub.errors.LocalEntryNotFoundError` names them all.
    Online, each is asked for in order; one the Hub does not have (or that the cache records as
    absent) is skipped.

    Raises:
        LocalEntryNotFoundError: offline and none of the files is in the cache.
        FileNotFoundError: the repository holds none of the files.
    """
    offline = hub_offline(local_files_only)
    download_kwargs = dict(revision=revision, cache_dir=cache_dir, force_download=force_download, token=token)
    if proxies is not None:
        download_kwargs["proxies"] = proxies
    cached = {name: try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision) for name in filenames}
    if not force_download:
        for name in filenames:
            if isinstance(cached[name], str):
                path = cached[name] if offline else hf_hub_download(repo_id, name, **download_kwargs)
                return path, name
    where = f"{repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    if offline:
        cache = cache_dir or hub_constants.HF_HUB_CACHE
        raise LocalEntryNotFoundError(
            f"None of {list(filenames)} of the Hub repository {where} is in the local cache ({cache}) and the Hub may "
            "not be contacted (HF_HUB_OFFLINE=1 or local_files_only=True); download it once with network access or "
            "pass a local path."
        )
    for name in filenames:
        if not force_download and cached[name] is _CACHED_NO_EXIST:
            continue  # the cache records that the repository does not have this file
        try:
            return hf_hub_download(repo_id, name, **download_kwargs), name
        except EntryNotFoundError as error:
            if isinstance(error, LocalEntryNotFoundError):  # not cached and the Hub unreachable: not an answer
                raise
    raise FileNotFoundError(f"The Hub repository {where} holds none of {list(filenames)}.")


def pick_dtype(torch_dtype: Optional[torch.dtype], dtype: Optional[torch.dtype]) -> Optional[torch.dtype]:
    """The one dtype of ``torch_dtype`` / ``dtype`` (diffusers' old and new names), checked."""
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ValueError(f"`torch_dtype`={torch_dtype} and `dtype`={dtype} disagree; pass one of them.")
    chosen = dtype if dtype is not None else torch_dtype
    if chosen is not None and (not isinstance(chosen, torch.dtype) or not chosen.is_floating_point):
        raise ValueError(f"`torch_dtype` / `dtype` must be a floating torch.dtype (e.g. torch.float16), got {chosen!r}.")
    return chosen


def single_file_path(source, argument: str, subfolder: Optional[str] = None, revision: Optional[str] = None, **hub) -> str:
    """The local path of a single-file checkpoint given as a local path, a Hub URL or ``org/repo/file``
    (fetched with :func:`locate_hub_file`, the cache first)."""
    from diffusers.loaders.single_file_utils import _extract_repo_id_and_weights_name, is_valid_url

    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        if subfolder:
            raise ValueError(f"`subfolder` {subfolder!r} applies to Hub files, but `{argument}` {text!r} is a local file; leave it out.")
        return str(path)
    if path.is_dir():
        raise ValueError(
            f"`{argument}` {text!r} is a folder; pass the checkpoint file inside it, or load the folder with "
            "UPLiFTLatentUpscaler.from_pretrained."
        )
    if is_valid_url(text):
        url = text
    elif isinstance(source, str) and text.count("/") >= 2 and not looks_like_local_path(text):
        url = "https://huggingface.co/" + text
    else:
        raise FileNotFoundError(f"`{argument}` file not found: {text!r}; pass the path to the .safetensors or .pth file.")
    repo_id, weights_name = _extract_repo_id_and_weights_name(url)
    if not isinstance(repo_id, str) or not weights_name:
        raise ValueError(
            f"`{argument}` {text!r} is not a Hugging Face Hub file URL; expected "
            "https://huggingface.co/<org>/<repo>/blob/<revision>/<file> or '<org>/<repo>/<file>'."
        )
    pinned = re.fullmatch(r"(?:blob|resolve)/([^/]+)/(.+)", weights_name)  # diffusers' helper strips only blob/main/
    if pinned is not None:
        if revision is not None and revision != pinned.group(1):
            raise ValueError(f"`revision`={revision!r} differs from the revision {pinned.group(1)!r} in `{argument}` {text!r}; pass one.")
        revision, weights_name = pinned.groups()
    if subfolder:
        weights_name = f"{subfolder}/{weights_name}"
    return locate_hub_file(repo_id, [weights_name], revision=revision, **hub)[0]


def single_file_options(kwargs: dict, path: str):
    """``(dtype, device)`` of ``from_pretrained`` keyword arguments applied to the single-file
    checkpoint ``path`` (already fetched with the Hub arguments); arguments that cannot apply to a
    single file raise instead of being dropped."""
    known = set(HUB_KWARGS) | set(_SINGLE_FILE_APPLIED) | set(_SINGLE_FILE_NO_EFFECT)
    refused = sorted(key for key, value in kwargs.items() if key not in known and value is not None)
    if refused:
        raise ValueError(
            f"from_pretrained arguments {refused} do not apply to the authors' single-file checkpoint {path!r}; "
            "leave them out (or convert it with `uplift-diffusers convert` and load the converted folder)."
        )
    device = kwargs.get("device_map")
    if device is not None and not isinstance(device, (str, torch.device)):
        raise ValueError(f"`device_map` must be one device (e.g. 'cpu', 'cuda') for the single-file checkpoint, got {device!r}.")
    return pick_dtype(kwargs.get("torch_dtype"), kwargs.get("dtype")), device
