"""The authors' single-file checkpoints: their key layout, the model config from their YAML or
from the weights' shapes, and the loaders of :class:`FromOriginalUPLiFTMixin`."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
import yaml
from diffusers.utils import CONFIG_NAME
from torch import nn

from ..constants import SD15_MODEL_ID, UPLIFT_SD15_WEIGHTS_NAME
from ..utils.state_dicts import load_state_dict_file, state_dict_problems
from .hub import HUB_KWARGS, hub_file_of, local_folder, locate_file, read_model_config

#: The official ConvBlock's layers (indices in its nn.Sequential) and ours.
_BLOCK_LAYERS = (("conv.0", "conv"), ("conv.1", "norm"), ("conv.3", "proj"))
_BLOCKS = (("encoder.block_{g}.blocks.{i}", "encoder.groups.{g}.{i}"),
           ("decoder.block_0.blocks.{i}", "decoder.in_blocks.{i}"),
           ("decoder.block_1.blocks.{i}", "decoder.out_blocks.{i}"),
           ("refiner.blocks.{i}", "refiner.blocks.{i}"))
#: Official module names <-> ours (each with its ``.weight`` / ``.bias``).
_LAYOUT = [(f"{official}.{a}", f"{ours}.{b}") for official, ours in _BLOCKS for a, b in _BLOCK_LAYERS] + [
    ("decoder.up_1.up", "decoder.upsample"), ("attender.conv1", "attender.to_logits"), ("ref_outc", "refiner.out")]
#: The ``diff_pipe_name`` values of an official YAML that mean the Stable Diffusion 1.5 VAE.
_SD15_PIPELINES = (None, SD15_MODEL_ID, "runwayml/stable-diffusion-v1-5")


def _rename(key: str, to_ours: bool) -> Optional[str]:
    """``key`` in the other layout (official -> ours with ``to_ours``), or None when it has no counterpart."""
    for official, ours in _LAYOUT:
        source, target = (official, ours) if to_ours else (ours, official)
        pattern = source.replace(".", r"\.").format(g=r"(?P<g>\d+)", i=r"(?P<i>\d+)")
        match = re.fullmatch(pattern + r"\.(?P<p>weight|bias)", key)
        if match is not None:
            return f"{target.format(**match.groupdict())}.{match['p']}"
    return None


def _rename_all(state_dict: Mapping[str, torch.Tensor], to_ours: bool, problem: str) -> Dict[str, torch.Tensor]:
    renamed = {key: _rename(key, to_ours) for key in state_dict}
    unknown = sorted(key for key, new in renamed.items() if new is None)
    if unknown:
        raise ValueError(f"{problem}: {unknown}")
    return {renamed[key]: value for key, value in state_dict.items()}


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An official UPLiFT state dict with this package's keys."""
    return _rename_all(state_dict, True, "Unexpected keys in the UPLiFT checkpoint (not in the official layout)")


def convert_to_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An :class:`UPLiFTLatentUpscaler` state dict with the official keys."""
    return _rename_all(state_dict, False, "Keys without an official UPLiFT name (not an UPLiFTLatentUpscaler state dict?)")


def _value(config: Mapping, path: str, allowed: Optional[list] = None) -> Any:
    """The value at the dotted ``path`` of an official YAML, checked against ``allowed``."""
    value, keys = config, path.split(".")
    for depth, key in enumerate(keys, start=1):
        if not isinstance(value, Mapping) or key not in value:
            raise ValueError(f"Official UPLiFT config: `{'.'.join(keys[:depth])}` is missing.")
        value = value[key]
    if allowed is not None and value not in allowed:
        raise ValueError(
            f"Official UPLiFT config: `{path}` = {value!r} is not supported by this implementation (supported: {allowed})."
        )
    return value


#: The settings of the official code that this implementation has; others are refused by name.
_SUPPORTED = {
    "uplift.up_factor": [2],
    "uplift.no_UEP": [True],
    "uplift.enc_share": [True],
    "uplift.decoder.up_steps": [1],
    "uplift.decoder.enc_resample": ["nearest"],
    "uplift.decoder.up_1.up_op": ["tconv"],
    "uplift.decoder.up_1.factor": [2],
    "uplift.decoder.up_1.residual": ["bilinear", "none", None],
    "uplift.refiner.enc_resample": ["nearest"],
    "uplift.attender": None,
}


def _widths(config: Mapping, path: str) -> List[int]:
    """The block widths (``hc``) of one official stage of single convolutions with layer norm."""
    _value(config, f"{path}.block", ["SingleConv"])
    _value(config, f"{path}.norm", ["layer"])
    widths = [int(c) for c in _value(config, f"{path}.hc")]
    count = _value(config, path).get("count", len(widths))
    if len(widths) != int(count):
        raise ValueError(f"Official UPLiFT config: `{path}.count` = {count} but `hc` lists {len(widths)} widths.")
    return widths


def _architecture(latent: int, encoder: List[List[int]], before: List[int], after: List[int], refiner: List[int],
                  pipeline: Optional[str] = None, **rest) -> Dict[str, Any]:
    """The kwargs of a model of these per-block widths (the encoder's per group), plus ``rest``:
    one width per encoder group when every group has the same number of equal blocks. The latent
    space is ``"sd15"`` (the VAE of the authors' release and their training code's default) for 4
    latent channels unless the YAML names another ``pipeline`` (``backbone.diff_pipe_name``)."""
    per_group = {len(w) for w in encoder}
    if all(len(set(w)) == 1 for w in encoder) and len(per_group) == 1:
        rest.update(encoder_channels=[w[0] for w in encoder], encoder_blocks_per_group=per_group.pop())
    else:
        rest.update(encoder_channels=encoder, encoder_blocks_per_group=2)
    return dict(latent_channels=latent, decoder_channels=before[0], decoder_blocks_before_upsample=len(before),
                decoder_blocks_after_upsample=len(after), refiner_channels=refiner[0], refiner_blocks=len(refiner),
                latent_space="sd15" if latent == 4 and pipeline in _SD15_PIPELINES else None, **rest)


def config_from_original(config: Union[str, os.PathLike, Mapping]) -> Dict[str, Any]:
    """``UPLiFTLatentUpscaler`` kwargs of an official UPLiFT YAML (a path or the parsed dict)."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"`config` file not found: {str(path)!r}; pass the official UPLiFT YAML or a dict.")
        config = yaml.safe_load(path.read_text())
    if not isinstance(config, Mapping):
        raise ValueError(f"`config` must be a path to an official UPLiFT YAML or a dict, got {type(config).__name__}.")
    for path, allowed in _SUPPORTED.items():
        _value(config, path, allowed)
    groups = int(_value(config, "uplift.encoder.down_steps")) + 1
    encoder = [_widths(config, f"uplift.encoder.block_{g}") for g in range(groups)]
    for g in range(1, groups):
        _value(config, f"uplift.encoder.down_{g}.down_op", ["none"])
    before, after = _widths(config, "uplift.decoder.block_0"), _widths(config, "uplift.decoder.block_1")
    refiner_widths = _widths(config, "uplift.refiner.block_0")
    if len(set(before + after)) != 1 or len(set(refiner_widths)) != 1:
        raise ValueError(
            "Official UPLiFT config: decoder and refiner blocks of different widths within a stage are not supported "
            f"(decoder {before + after}, refiner {refiner_widths})."
        )
    uplift = config["uplift"]
    decoder, refiner = uplift["decoder"], uplift["refiner"]
    ref_con = refiner.get("ref_con", -1)
    if ref_con is not None and not -groups <= int(ref_con) < groups:
        raise ValueError(f"Official UPLiFT config: `uplift.refiner.ref_con` = {ref_con} names no encoder group (there are {groups}).")
    backbone, train = config.get("backbone") or {}, config.get("train") or {}
    factors = None  # unknown when the train: section does not say
    if isinstance(train, Mapping) and "down_steps" in train:
        # with multi_step every step of every depth is supervised (also with only_deepest), so depths
        # 1 ... down_steps train 2 ... 2 ** down_steps; without it every run is one 2x step
        factors = [2 ** depth for depth in range(1, int(train["down_steps"]) + 1)] if train.get("multi_step") else [2]
    attender = uplift["attender"]
    return _architecture(
        int(backbone.get("channel", 4)), encoder, before, after, refiner_widths,
        refiner_encoder_group=None if ref_con is None else int(ref_con),
        neighborhood=attender if isinstance(attender, int) else [list(p) for p in attender],
        noise_channels=int(decoder.get("ncat_c") or 0),
        noise_scale=float(decoder.get("ncat_s") or 0),
        refiner_noise_channels=int(refiner.get("ncat_c") or 0),
        refiner_noise_scale=float(refiner.get("ncat_s") or 0),
        bilinear_residual=decoder["up_1"]["residual"] == "bilinear",
        vae_scale_factor=int(backbone.get("stride", 8)),
        pipeline=backbone.get("diff_pipe_name"),
        trained_upscale_factors=factors,
    )


#: The config fields the weights do not determine, at the official SD1.5-VAE model's values. The trained
#: factors stay unknown: a single file does not say how deep it was trained; its YAML does.
OFFICIAL_FIELDS_NOT_IN_WEIGHTS = dict(noise_scale=1.0, refiner_noise_scale=None, bilinear_residual=True,
                                      vae_scale_factor=8, trained_upscale_factors=None)


def _conv_shapes(state_dict: Mapping[str, torch.Tensor], prefix: str) -> List[tuple]:
    """Shapes of the 3x3 convolutions of the official blocks ``{prefix}.0``, ``{prefix}.1``, ..."""
    shapes = []
    while f"{prefix}.{len(shapes)}.conv.0.weight" in state_dict:
        shapes.append(tuple(state_dict[f"{prefix}.{len(shapes)}.conv.0.weight"].shape))
    return shapes


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """``UPLiFTLatentUpscaler`` kwargs read off the shapes of an official state dict (no YAML); for
    the authors' release, the default ``UPLiFTLatentUpscaler()`` in the ``"sd15"`` latent space.

    The refiner's encoder connection is the group whose width its input implies, assuming as many
    refiner noise channels as decoder ones (as in the official configs); of equally wide groups the
    last (the official ``ref_con: -1``). The rest is :data:`OFFICIAL_FIELDS_NOT_IN_WEIGHTS`.
    """
    def cannot(reason: str) -> ValueError:
        return ValueError(f"Cannot infer the UPLiFT config from the checkpoint: {reason}; pass the official YAML the "
                          "checkpoint was trained with as `config`.")

    stages = ("encoder.block_0", "encoder.block_1", "decoder.block_0", "decoder.block_1", "refiner")
    for key in ("ref_outc.weight", "attender.conv1.weight", *(f"{stage}.blocks.0.conv.0.weight" for stage in stages)):
        if key not in state_dict:
            raise cannot(f"it has no {key!r} (not the official key layout?)")
    groups = []
    while blocks := _conv_shapes(state_dict, f"encoder.block_{len(groups)}.blocks"):
        groups.append([shape[0] for shape in blocks])
    before, after, refiner = (_conv_shapes(state_dict, f"{stage}.blocks") for stage in stages[2:])
    latent = state_dict["ref_outc.weight"].shape[0]
    noise = before[0][1] - latent - groups[-1][-1]
    if noise < 0 or after[0][1] != before[0][0] + groups[-2][-1] + noise:
        raise cannot(f"the decoder's input widths ({before[0][1]}, {after[0][1]}) do not fit {latent} latent channels "
                     f"and encoder widths {groups[-1][-1]}, {groups[-2][-1]}")
    skip = refiner[0][1] - latent - noise
    matches = [g for g, widths in enumerate(groups) if widths[-1] == skip]
    if skip and not matches:
        raise cannot(f"the refiner's input width {refiner[0][1]} matches no encoder group (widths {[w[-1] for w in groups]})")
    return _architecture(
        latent, groups, *([shape[0] for shape in stage] for stage in (before, after, refiner)),
        refiner_encoder_group=matches[-1] - len(groups) if skip else None,
        neighborhood=state_dict["attender.conv1.weight"].shape[0],
        noise_channels=noise,
        refiner_noise_channels=None,
        **OFFICIAL_FIELDS_NOT_IN_WEIGHTS,
    )


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
        shapes. The other arguments are ``hf_hub_download``'s (the revision defaults to the URL's).
        Errors list every missing or unexpected key and shape mismatch at once.
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
        if state_dict and all(_rename(key, to_ours=False) is not None for key in state_dict):  # this package's keys
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
        authors' single file (``weight_name``, default their release's; ``original_config`` its YAML),
        as their release does; a ``config.json`` comes first. The file loads with :meth:`from_single_file`,
        with the dtype, the Hub arguments, ``subfolder`` and a one-device ``device_map``; options that
        would change nothing there pass, others are refused."""
        weight_name = kwargs.pop("weight_name", None) or UPLIFT_SD15_WEIGHTS_NAME
        original_config = kwargs.pop("original_config", None)
        source, subfolder = pretrained_model_name_or_path, kwargs.get("subfolder") or ""
        path = local_folder(source, f"`{_FOLDER}`", "load it with UPLiFTLatentUpscaler.from_single_file")
        names = [f"{subfolder}/{name}".lstrip("/") for name in (CONFIG_NAME, weight_name)]
        found = locate_file(path or os.fspath(source), names, **{key: kwargs.get(key) for key in HUB_KWARGS})
        if found is None:
            where = repr(os.fspath(source)) + (f" (subfolder {subfolder!r})" if subfolder else "")
            raise FileNotFoundError(f"`{_FOLDER}` {where} holds neither a diffusers config.json nor the authors' single "
                                    f"file {weight_name!r}; pass a folder written by save_pretrained, or one holding that file.")
        single_file, name = found
        if name == names[0]:  # a diffusers config.json comes first
            read_model_config(single_file, f"`{_FOLDER}`")
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
