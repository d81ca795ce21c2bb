"""The Hugging Face Hub, through ``huggingface_hub``: the file of a repository a loader reads
(:func:`locate_hub_file`, the cache first), Hub file names (:func:`hub_file_of`), one clear error
when the Hub cannot be used and a model is not cached (:func:`from_hub`), and the check of every
model a command needs before loading any (:func:`check_models_available`,
:func:`hub_models_available`: every missing model named in one :class:`MissingModelsError`
within seconds).

This module imports neither torch nor diffusers, so that the checks answer before those imports.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union
from urllib.parse import urlparse

from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled

if TYPE_CHECKING:
    import torch

#: Keyword arguments of ``from_pretrained`` that say where and how to fetch Hub files.
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
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


def locate_hub_file(repo_id: str, filenames: Sequence[str], **hub) -> Tuple[str, str]:
    """``(local path, name)`` of the first of ``filenames`` (paths inside ``repo_id``, e.g.
    ``"vae/config.json"``) that the repository holds, by ``hf_hub_download`` (``hub``: its
    :data:`HUB_KWARGS`). A file missing from the repository, or offline from the cache, is
    skipped, so that a root ``config.json`` the cache lacks does not hide a cached ``vae/config.json``.

    Raises:
        LocalEntryNotFoundError: none of the files is in the cache and the Hub cannot be used.
        FileNotFoundError: the repository holds none of the files.
    """
    hub = {key: value for key, value in hub.items() if value is not None}
    errors = []
    for name in filenames:
        try:
            return hf_hub_download(repo_id, name, **hub), name
        except EntryNotFoundError as error:  # LocalEntryNotFoundError too: not in the cache, offline
            errors.append(error)
    where = f"{repo_id!r}" + (f" (revision {hub['revision']!r})" if hub.get("revision") else "")
    if all(isinstance(error, LocalEntryNotFoundError) for error in errors):
        raise LocalEntryNotFoundError(
            f"None of {list(filenames)} of the Hub repository {where} is in the local cache and the Hub cannot be "
            "used (HF_HUB_OFFLINE=1, local_files_only=True or no network); download it once with network access "
            "or pass a local path."
        ) from errors[-1]
    raise FileNotFoundError(f"The Hub repository {where} holds none of {list(filenames)}.") from errors[-1]


_HUB_URL_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "https://hf.co/", "hf.co/")


def hub_file_of(source, argument: str = "source") -> Optional[Tuple[str, str, Optional[str]]]:
    """``(repo_id, filename, revision or None)`` of a Hub file given as a URL
    (``https://huggingface.co/<org>/<repo>/blob|resolve/<revision>/<file>``, ``hf.co``, with or
    without the scheme, with or without ``blob/<revision>/``) or as ``"<org>/<repo>/<file>"``; ``None`` for anything else (a local path,
    a repository id). No network, no file-system access beyond :func:`looks_like_local_path`.

    Raises:
        ValueError: a URL that names no file of a Hub repository.
    """
    if not isinstance(source, (str, os.PathLike)):
        return None
    text = os.fspath(source)
    parsed = urlparse(text)
    if (parsed.scheme and parsed.netloc) or text.startswith(_HUB_URL_PREFIXES):
        rest = next((text[len(prefix):] for prefix in _HUB_URL_PREFIXES if text.startswith(prefix)), None)
    elif isinstance(source, str) and text.count("/") >= 2 and not looks_like_local_path(text):
        rest = text
    else:
        return None
    match = None if rest is None else re.fullmatch(r"([^/]+)/([^/]+)/(?:(?:blob|resolve)/([^/]+)/)?(.+)", rest)
    if match is None:
        raise ValueError(
            f"`{argument}` {text!r} is not a Hugging Face Hub file URL; expected "
            "https://huggingface.co/<org>/<repo>/blob/<revision>/<file> or '<org>/<repo>/<file>'."
        )
    org, name, revision, filename = match.groups()
    return f"{org}/{name}", filename, revision



# ---------------------------------------------------------------------------------------------
# Checking every model a command needs before loading any (no torch, no diffusers)
# ---------------------------------------------------------------------------------------------
#: Seconds :func:`hub_reachable` waits for the Hub's answer.
QUICK_TIMEOUT = 3.0
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class HubModel:
    """A model a command needs, as :func:`missing_from_cache` checks it.

    Attributes:
        source: a Hub repository id, a Hub file (URL or ``"org/repo/file"``) or a local path
            (local paths are never "missing from the cache": their loader reports them).
        files: for a repository id, files of which any one in the cache counts as "cached" (e.g.
            ``("model_index.json",)``); empty: any file of the repository's snapshot.
        what: how messages name it (default ``repr(source)``).
        hint: how to pass a local copy instead (e.g. ``"--model DIR"``).
        revision: the branch, tag or commit (default ``main``, or the one in a file URL).
    """

    source: str
    files: Tuple[str, ...] = ()
    what: Optional[str] = None
    hint: Optional[str] = None
    revision: Optional[str] = None

    def __post_init__(self):
        if not isinstance(self.source, (str, os.PathLike)) or not os.fspath(self.source):
            raise ValueError(f"HubModel `source` must be a non-empty string, got {self.source!r}.")
        object.__setattr__(self, "source", os.fspath(self.source))
        object.__setattr__(self, "files", tuple(self.files))

    @property
    def label(self) -> str:
        return self.what or repr(self.source)


def _as_model(model: Union[str, "os.PathLike", HubModel]) -> HubModel:
    return model if isinstance(model, HubModel) else HubModel(os.fspath(model))


def _hub_location(model: HubModel) -> Optional[Tuple[str, Tuple[str, ...], Optional[str]]]:
    """``(repo_id, files, revision)`` the cache must serve for ``model``; None for a local path
    (or a string that is no Hub name: its loader reports it)."""
    text = model.source
    if Path(text).expanduser().exists():
        return None
    try:
        single = hub_file_of(text)
    except ValueError:
        return None
    if single is not None:
        repo_id, filename, revision = single
        return repo_id, (filename,), model.revision or revision
    if looks_like_local_path(text, max_slashes=1) or _REPO_ID.fullmatch(text) is None:
        return None
    return text, model.files, model.revision


def _snapshot_cached(repo_id: str, revision: Optional[str], cache_dir) -> bool:
    """Whether the cache holds a snapshot of ``repo_id`` at ``revision`` with at least one file."""
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, ValueError):
        return False
    return any(path.is_file() for path in Path(folder).rglob("*"))


def not_found_anywhere(models: Iterable[Union[str, "os.PathLike", HubModel]]) -> List[HubModel]:
    """The entries of ``models`` that are neither an existing local path nor a Hub name (a
    repository id ``org/name``, ``org/repo/file`` or a Hub URL): no loader can find them."""
    found = []
    for entry in models:
        model = _as_model(entry)
        if not Path(model.source).expanduser().exists() and _hub_location(model) is None:
            found.append(model)
    return found


def missing_from_cache(models: Iterable[Union[str, "os.PathLike", HubModel]], cache_dir=None) -> List[HubModel]:
    """The entries of ``models`` that the local Hub cache cannot serve, in order (file system only).

    Each entry is a :class:`HubModel` or a plain string (a Hub repository id, a Hub file URL,
    ``"org/repo/file"`` or a local path). Local paths are never missing here. The cache is
    ``cache_dir`` or huggingface_hub's (``HF_HUB_CACHE`` / ``HF_HOME``).
    """
    missing = []
    for entry in models:
        model = _as_model(entry)
        location = _hub_location(model)
        if location is None:
            continue
        repo_id, files, revision = location
        if files:
            cached = any(
                isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision), str) for name in files
            )
        else:
            cached = _snapshot_cached(repo_id, revision, cache_dir)
        if not cached:
            missing.append(model)
    return missing


def hub_reachable(timeout: float = QUICK_TIMEOUT) -> bool:
    """Whether the Hugging Face Hub answers within ``timeout`` seconds (one HEAD request to its
    endpoint, which must answer with a success: a proxy's or firewall's error page is no answer);
    False at once in offline mode (``HF_HUB_OFFLINE``)."""
    if hub_constants.is_offline_mode():
        return False
    from huggingface_hub.utils import get_session

    try:
        response = get_session().head(hub_constants.ENDPOINT, timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure means no answer
        return False
    return getattr(response, "status_code", 200) < 400


class MissingModelsError(HubUnavailableError):
    """Models a command needs are not in the local cache and the Hub cannot be used; ``missing``
    lists them (:class:`HubModel`), ``str()`` is one line naming each and how to get it."""

    def __init__(self, missing: Sequence[HubModel], offline: bool, cache_dir=None):
        self.missing = list(missing)
        cache = cache_dir or hub_constants.HF_HUB_CACHE
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        names = "; ".join(m.label + (f" (or pass {m.hint})" if m.hint else "") for m in self.missing)
        count = "a model it needs is" if len(self.missing) == 1 else f"{len(self.missing)} models it needs are"
        super().__init__(
            f"{why} and {count} not in the local Hub cache ({cache}): {names}. Download them on a connected machine "
            "(`hf download <repo>`) into a cache that HF_HOME / HF_HUB_CACHE then points to, or pass local paths."
        )


def check_models_available(
    models: Iterable[Union[str, "os.PathLike", HubModel]], *, timeout: float = QUICK_TIMEOUT, cache_dir=None
) -> bool:
    """Check, before loading anything, that every model of ``models`` can be had.

    Returns True when the Hub may be used (online and reachable), False when only the local
    cache can (``HF_HUB_OFFLINE``, or the Hub did not answer within ``timeout`` s) and it holds
    everything. The Hub is asked only when some entry is a Hub model.

    Raises:
        MissingModelsError: one or more models are missing from the cache and the Hub cannot be
            used; it names all of them at once.
    """
    models = [_as_model(m) for m in models]
    if not any(_hub_location(m) is not None for m in models):
        return not hub_constants.is_offline_mode()
    missing = missing_from_cache(models, cache_dir=cache_dir)
    offline = hub_constants.is_offline_mode()
    if offline or not hub_reachable(timeout):
        if missing:
            raise MissingModelsError(missing, offline, cache_dir)
        return False
    return True


@contextlib.contextmanager
def hub_models_available(
    models: Iterable[Union[str, "os.PathLike", HubModel]],
    *,
    timeout: float = QUICK_TIMEOUT,
    cache_dir=None,
    notify: Optional[Callable[[str], None]] = None,
) -> Iterator[bool]:
    """:func:`check_models_available`, then the block; when the Hub cannot be reached (but every
    model is cached), huggingface_hub's offline mode is on inside the block, so no file lookup
    waits on the network, and ``notify`` is called once with a message saying so. Yields whether
    the Hub is used."""
    models = list(models)
    online = check_models_available(models, timeout=timeout, cache_dir=cache_dir)
    if online or hub_constants.is_offline_mode() or not any(_hub_location(_as_model(m)) for m in models):
        yield online
        return
    if notify is not None:
        notify("the Hugging Face Hub cannot be reached; using the local cache only (HF_HUB_OFFLINE=1 skips this check).")
    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield False
    finally:
        hub_constants.HF_HUB_OFFLINE = previous
