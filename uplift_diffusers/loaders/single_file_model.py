"""``from_single_file`` (the authors' checkpoint format, as diffusers' single-file loaders read
original checkpoints) and ``from_pretrained`` (diffusers', also for a folder or Hub repository that
holds only the authors' single file: their release has no ``config.json``) of
:class:`~uplift_diffusers.UPLiFTLatentUpscaler`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from diffusers.utils import CONFIG_NAME
from torch import nn

from ..constants import UPLIFT_SD15_WEIGHTS_NAME
from ..utils.state_dicts import load_state_dict_file, state_dict_problems
from .hub import HUB_KWARGS, hub_file_of, local_folder, locate_file, read_model_config
from .single_file import (config_from_original, config_from_state_dict, convert_original_state_dict,
                          convert_to_original_state_dict, is_converted)

_SOURCE = "pretrained_model_link_or_path"
_FOLDER = "pretrained_model_name_or_path"
#: ``from_pretrained`` arguments that apply to the authors' single file (with the Hub's), or change nothing there.
_SINGLE_FILE_KWARGS = {*HUB_KWARGS, "subfolder", "torch_dtype", "dtype", "device_map", "low_cpu_mem_usage",
                       "disable_mmap", "use_safetensors"}


def _single_file_path(source, revision: Optional[str], hub: dict) -> str:
    """The local path of a checkpoint given as a local path, a Hub URL or ``org/repo/file``."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        raise ValueError(f"`{_SOURCE}` {text!r} is a folder; pass the checkpoint file inside it, or load the folder "
                         "with UPLiFTLatentUpscaler.from_pretrained.")
    found = None if path.is_file() else hub_file_of(source, _SOURCE)
    if found is None:  # a local file; load_state_dict_file names a missing one
        return str(path)
    repo_id, name, pinned = found
    if pinned is not None and revision is not None and revision != pinned:
        raise ValueError(f"`revision`={revision!r} differs from the revision {pinned!r} in `{_SOURCE}` {text!r}; pass one.")
    return locate_file(repo_id, [name], revision=revision or pinned, **hub)[0]


def _authors_file_in(source, weight_name: str, kwargs: dict) -> Optional[str]:
    """The local path of the authors' single file in the folder or Hub repository ``source``, or
    None when it holds a diffusers ``config.json`` (that comes first)."""
    subfolder = kwargs.get("subfolder") or ""
    path = local_folder(source, f"`{_FOLDER}`", "load it with UPLiFTLatentUpscaler.from_single_file")
    names = [f"{subfolder}/{name}".lstrip("/") for name in (CONFIG_NAME, weight_name)]
    found = locate_file(path or os.fspath(source), names, **{key: kwargs.get(key) for key in HUB_KWARGS})
    if found is None:
        where = repr(os.fspath(source)) + (f" (subfolder {subfolder!r})" if subfolder else "")
        raise FileNotFoundError(f"`{_FOLDER}` {where} holds neither a diffusers config.json nor the authors' single file "
                                f"{weight_name!r}; pass a folder written by save_pretrained, or one holding that file.")
    if found[1] == names[1]:
        return found[0]
    read_model_config(found[0], f"`{_FOLDER}`")
    return None


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
        *,
        original_config: Union[str, "os.PathLike", Mapping, None] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        """Load the authors' checkpoint format, e.g. ``from_single_file("https://huggingface.co/
        UPLiFT-upsampler/uplift_sd1.5vae/blob/main/uplift_sd1.5vae.safetensors")``.

        ``pretrained_model_link_or_path`` is a local ``.safetensors`` / ``.pth`` file (read without
        running pickled code), a Hub URL (``blob/`` or ``resolve/``, ``huggingface.co`` or ``hf.co``),
        ``"<org>/<repo>/<file>"``, or the state dict itself. ``config`` (or ``original_config``) is
        the official YAML, a path or the parsed dict; without it the config is read off the weights'
        shapes. ``torch_dtype`` / ``dtype`` casts the weights; the other arguments are
        ``hf_hub_download``'s (the revision defaults to the URL's). The ``latent_space`` is
        ``"sd15"`` for 4 latent channels (the authors' format is that of their SD1.5-VAE model)
        unless the YAML's ``backbone.diff_pipe_name`` names another pipeline. Errors list every
        missing or unexpected key and shape mismatch at once.
        """
        if config is not None and original_config is not None:
            raise ValueError("Pass the official YAML as `config` or as `original_config`, not both.")
        config = original_config if config is None else config
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise ValueError(f"`torch_dtype`={torch_dtype} and `dtype`={dtype} disagree; pass one of them.")
        dtype = dtype if dtype is not None else torch_dtype
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise ValueError(f"`torch_dtype` / `dtype` must be a floating torch.dtype (e.g. torch.float16), got {dtype!r}.")
        source = pretrained_model_link_or_path
        if isinstance(source, Mapping):
            state_dict, where = dict(source), "the state dict"
        elif isinstance(source, (str, os.PathLike)):
            hub = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token, force_download=force_download, proxies=proxies)
            where = _single_file_path(source, revision, hub)
            state_dict = load_state_dict_file(where, _SOURCE)
        else:
            raise ValueError(f"`{_SOURCE}` must be a file path or a state dict, got {type(source).__name__} "
                             "(a Hub file may also be given as its URL or as 'org/repo/file').")
        if is_converted(state_dict):
            folder = Path(where).parent
            load = "the folder holding it and its config.json"
            if Path(where).is_file() and (folder / CONFIG_NAME).is_file():
                load = f"its folder {str(folder)!r}"
            raise ValueError(f"`{_SOURCE}` {where!r} is already converted (it has this package's diffusers keys, as "
                             "save_pretrained and `uplift-diffusers convert` write them): there is nothing to convert; "
                             f"load {load} with UPLiFTLatentUpscaler.from_pretrained or `--upscaler FOLDER`.")
        model = cls(**(config_from_state_dict(state_dict) if config is None else config_from_original(config)))
        converted = convert_original_state_dict(state_dict)
        # compared in the official names, as the user's file spells them
        problems = state_dict_problems(state_dict, convert_to_original_state_dict(model.state_dict()))
        if problems:
            raise ValueError("The UPLiFT checkpoint does not match the config (pass the YAML the checkpoint was trained "
                             "with): " + "; ".join(problems))
        model.load_state_dict(converted)
        if dtype is not None:
            # nn.Module.to: diffusers' ModelMixin.to warns about float32-kept modules on every cast
            model = nn.Module.to(model, dtype)
        return model.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, "os.PathLike"], **kwargs):
        """diffusers' ``from_pretrained``, also for a folder or Hub repository that holds only the
        authors' single file, as their release :data:`~uplift_diffusers.constants.UPLIFT_SD15_REPO_ID`
        does (a ``config.json`` comes first). That file (``weight_name``, default
        ``uplift_sd1.5vae.safetensors``; ``original_config`` its YAML) loads with
        :meth:`from_single_file`, with the dtype, the Hub arguments, ``subfolder`` and a one-device
        ``device_map``; options that would change nothing pass, others are refused.
        """
        weight_name = kwargs.pop("weight_name", None) or UPLIFT_SD15_WEIGHTS_NAME
        original_config = kwargs.pop("original_config", None)
        single_file = _authors_file_in(pretrained_model_name_or_path, weight_name, kwargs)
        if single_file is None:
            if original_config is not None:
                raise ValueError(f"`original_config` is for the authors' single file, but {str(pretrained_model_name_or_path)!r} "
                                 "holds a diffusers config.json; leave it out.")
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        refused = sorted(key for key, value in kwargs.items() if key not in _SINGLE_FILE_KWARGS and value is not None)
        if refused:
            raise ValueError(f"from_pretrained arguments {refused} do not apply to the authors' single-file checkpoint "
                             f"{single_file!r}; leave them out (or convert it with `uplift-diffusers convert`).")
        device = kwargs.get("device_map")
        if device is not None and not isinstance(device, (str, torch.device)):
            raise ValueError(f"`device_map` must be one device (e.g. 'cpu', 'cuda') for the single-file checkpoint, got {device!r}.")
        model = cls.from_single_file(single_file, original_config=original_config, torch_dtype=kwargs.get("torch_dtype"),
                                     dtype=kwargs.get("dtype"))
        return model if device is None else model.to(device)
