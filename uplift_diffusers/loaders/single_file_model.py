"""Loading the authors' single-file UPLiFT checkpoints into :class:`~uplift_diffusers.UPLiFTLatentUpscaler`.

:class:`FromOriginalUPLiFTMixin` gives the model diffusers' ``from_single_file`` (official key
layout: a local file, a Hub URL, ``org/repo/file`` or a state dict) and a ``from_pretrained`` that
also accepts a folder or Hub repository holding only that single file (the authors' release).
These two are the package's only ways to load an upscaler.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from diffusers.utils import CONFIG_NAME, logging
from torch import nn

from ..constants import UPLIFT_SD15_WEIGHTS_NAME
from .hub import HUB_KWARGS, hub_file_of, hub_kwargs_of, locate_hub_file, looks_like_local_path

logger = logging.get_logger(__name__)

#: ``from_pretrained`` arguments applied to the authors' single file, and those that change nothing there.
_SINGLE_FILE_APPLIED = ("subfolder", "torch_dtype", "dtype", "device_map")
_SINGLE_FILE_NO_EFFECT = ("low_cpu_mem_usage", "disable_mmap", "use_safetensors")


def _pick_dtype(torch_dtype: Optional[torch.dtype], dtype: Optional[torch.dtype]) -> Optional[torch.dtype]:
    """The one dtype of ``torch_dtype`` / ``dtype`` (diffusers' old and new names), checked."""
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ValueError(f"`torch_dtype`={torch_dtype} and `dtype`={dtype} disagree; pass one of them.")
    chosen = dtype if dtype is not None else torch_dtype
    if chosen is not None and (not isinstance(chosen, torch.dtype) or not chosen.is_floating_point):
        raise ValueError(f"`torch_dtype` / `dtype` must be a floating torch.dtype (e.g. torch.float16), got {chosen!r}.")
    return chosen


def _single_file_path(source, subfolder: Optional[str] = None, revision: Optional[str] = None, **hub) -> str:
    """The local path of a checkpoint given as a local path, a Hub URL or ``org/repo/file``."""
    argument = "pretrained_model_link_or_path"
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
    found = hub_file_of(source, argument)
    if found is None:
        raise FileNotFoundError(f"`{argument}` file not found: {text!r}; pass the path to the .safetensors or .pth file.")
    repo_id, weights_name, pinned = found
    if pinned is not None:
        if revision is not None and revision != pinned:
            raise ValueError(f"`revision`={revision!r} differs from the revision {pinned!r} in `{argument}` {text!r}; pass one.")
        revision = pinned
    if subfolder:
        weights_name = f"{subfolder}/{weights_name}"
    return locate_hub_file(repo_id, [weights_name], revision=revision, **hub)[0]


def _check_config_file(config_file: Path) -> None:
    """A local model folder's ``config.json`` must be a JSON object (diffusers' own error for
    another JSON value blames the network)."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"`pretrained_model_name_or_path`: its {str(config_file)!r} is not valid JSON ({error}); restore it, "
            "or save the model again (save_pretrained, or `uplift-diffusers convert` for the authors' file)."
        ) from error
    if not isinstance(config, dict):
        raise ValueError(
            f"`pretrained_model_name_or_path`: its {str(config_file)!r} holds a JSON {type(config).__name__}, not a "
            "model config object; restore it, or save the model again."
        )


class FromOriginalUPLiFTMixin:
    """``from_single_file`` and a single-file-aware ``from_pretrained``."""

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path: Union[str, "os.PathLike", Mapping[str, torch.Tensor]],
        config: Union[str, "os.PathLike", Mapping, None] = None,
        torch_dtype: Optional[torch.dtype] = None,
        cache_dir: Union[str, "os.PathLike", None] = None,
        revision: Optional[str] = None,
        local_files_only: Optional[bool] = None,
        token: Union[str, bool, None] = None,
        force_download: bool = False,
        proxies: Optional[dict] = None,
        subfolder: Optional[str] = None,
        *,
        original_config: Union[str, "os.PathLike", Mapping, None] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> "UPLiFTLatentUpscaler":
        """Load the authors' single-file checkpoint (official key layout), like diffusers' ``from_single_file``.

        >>> UPLiFTLatentUpscaler.from_single_file(
        ...     "https://huggingface.co/UPLiFT-upsampler/uplift_sd1.5vae/blob/main/uplift_sd1.5vae.safetensors")

        Args:
            pretrained_model_link_or_path: a local ``.safetensors`` / ``.pth`` file (read without
                executing pickled code); a Hub URL (``https://huggingface.co/<org>/<repo>/blob/<revision>/<file>``,
                also ``resolve/`` or ``hf.co``); ``"<org>/<repo>/<file>"``; or an official state dict.
            config: the official YAML (path or parsed dict). ``None``: read off the weights'
                shapes (:func:`~uplift_diffusers.loaders.single_file.config_from_state_dict`), which for
                the authors' release is exactly the default ``UPLiFTLatentUpscaler()``.
            original_config: diffusers' name for ``config``; pass one of the two.
            torch_dtype, dtype: cast the weights to this floating dtype (``dtype`` is diffusers' newer name).
            cache_dir, revision, local_files_only, token, force_download, proxies, subfolder: where
                and how to fetch a Hub file, as in ``hf_hub_download`` (offline, ``HF_HUB_OFFLINE=1``,
                the cache is the only source). A revision in the URL is used when ``revision`` is not given.

        Raises:
            FileNotFoundError: a local path that does not exist.
            ValueError: listing missing / unexpected keys and shape mismatches, or a bad argument.
        """
        from .single_file import already_converted_error, config_from_original, config_from_state_dict, load_original_into, load_state_dict_file

        if config is not None and original_config is not None:
            raise ValueError("Pass the official YAML as `config` or as `original_config`, not both.")
        config = original_config if config is None else config
        torch_dtype = _pick_dtype(torch_dtype, dtype)
        source = pretrained_model_link_or_path
        if isinstance(source, Mapping):
            state_dict, where = dict(source), "the state dict"
        elif isinstance(source, (str, os.PathLike)):
            hub = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token, force_download=force_download, proxies=proxies)
            where = _single_file_path(source, subfolder, revision, **hub)
            state_dict = load_state_dict_file(where, "pretrained_model_link_or_path")
        else:
            raise ValueError(
                f"`pretrained_model_link_or_path` must be a file path or a state dict, got {type(source).__name__}; "
                "(a Hub file may also be given as its URL or as 'org/repo/file')."
            )
        converted = already_converted_error(state_dict, "pretrained_model_link_or_path", where)
        if converted is not None:
            raise converted
        model = cls(**(config_from_state_dict(state_dict) if config is None else config_from_original(config)))
        load_original_into(model, state_dict)
        if torch_dtype is not None:
            # nn.Module.to: diffusers' ModelMixin.to warns about float32-kept modules on every
            # dtype cast, even when a model (as this one) keeps none
            model = nn.Module.to(model, torch_dtype)
        return model.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, "os.PathLike"], **kwargs) -> "UPLiFTLatentUpscaler":
        """diffusers' ``from_pretrained``, also for the authors' single-file layout.

        A folder or Hub repository holding a diffusers ``config.json`` (``save_pretrained``,
        ``uplift-diffusers convert``) loads as in diffusers, unchanged. One holding instead the
        authors' single file (the official release, :data:`~uplift_diffusers.constants.UPLIFT_SD15_REPO_ID`
        holding :data:`~uplift_diffusers.constants.UPLIFT_SD15_WEIGHTS_NAME`) loads it with
        :meth:`from_single_file`, honouring ``torch_dtype`` / ``dtype``, ``cache_dir``, ``revision``,
        ``local_files_only``, ``token``, ``subfolder``, ``force_download``, ``proxies`` and
        ``device_map`` (a device); ``low_cpu_mem_usage``, ``disable_mmap`` and ``use_safetensors``
        have no effect there, other diffusers options are refused.

        Args:
            pretrained_model_name_or_path: a folder or a Hub repository id.
            weight_name: the single file's name (default ``uplift_sd1.5vae.safetensors``).
            original_config: the official YAML for a single file not trained with the official
                configuration (by default the configuration is read off the weights' shapes).
            **kwargs: every other argument of diffusers' ``ModelMixin.from_pretrained``.
        """
        weight_name = kwargs.pop("weight_name", None) or UPLIFT_SD15_WEIGHTS_NAME
        original_config = kwargs.pop("original_config", None)
        if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)) or not os.fspath(pretrained_model_name_or_path):
            raise ValueError(
                f"`pretrained_model_name_or_path` must be a folder or a Hub repository id, got {pretrained_model_name_or_path!r}."
            )
        text = os.fspath(pretrained_model_name_or_path)
        subfolder = kwargs.get("subfolder") or ""
        path = Path(text).expanduser()
        where = repr(text) + (f" (subfolder {subfolder!r})" if subfolder else "")
        if path.is_file():
            raise ValueError(
                f"`pretrained_model_name_or_path` {text!r} is a file; load it with UPLiFTLatentUpscaler.from_single_file."
            )
        if path.is_dir():
            folder = path / subfolder
            if (folder / CONFIG_NAME).is_file():
                _check_config_file(folder / CONFIG_NAME)
                single_file = None
            elif (folder / weight_name).is_file():
                single_file = str(folder / weight_name)
            else:
                raise FileNotFoundError(
                    f"`pretrained_model_name_or_path` {where} holds neither a diffusers config.json nor the authors' "
                    f"single file {weight_name!r}; pass a folder written by save_pretrained, or one holding that file."
                )
        elif looks_like_local_path(text, max_slashes=1):
            raise FileNotFoundError(f"`pretrained_model_name_or_path`: local path not found: {text!r}.")
        else:
            prefix = f"{subfolder}/" if subfolder else ""
            found, name = locate_hub_file(text, [prefix + CONFIG_NAME, prefix + weight_name], **hub_kwargs_of(kwargs))
            single_file = None if name == prefix + CONFIG_NAME else found
        if single_file is None:
            if original_config is not None:
                raise ValueError(
                    f"`original_config` is for the authors' single file, but {where} holds a diffusers config.json; leave it out."
                )
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        logger.info(f"{where} holds the authors' single file {weight_name} (no config.json): loading it with from_single_file.")
        known = set(HUB_KWARGS) | set(_SINGLE_FILE_APPLIED) | set(_SINGLE_FILE_NO_EFFECT)
        refused = sorted(key for key, value in kwargs.items() if key not in known and value is not None)
        if refused:
            raise ValueError(
                f"from_pretrained arguments {refused} do not apply to the authors' single-file checkpoint {single_file!r}; "
                "leave them out (or convert it with `uplift-diffusers convert` and load the converted folder)."
            )
        device = kwargs.get("device_map")
        if device is not None and not isinstance(device, (str, torch.device)):
            raise ValueError(f"`device_map` must be one device (e.g. 'cpu', 'cuda') for the single-file checkpoint, got {device!r}.")
        torch_dtype = _pick_dtype(kwargs.get("torch_dtype"), kwargs.get("dtype"))
        model = cls.from_single_file(single_file, original_config=original_config, torch_dtype=torch_dtype)
        return model if device is None else model.to(device)
