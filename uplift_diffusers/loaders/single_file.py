"""Loading the authors' released UPLiFT checkpoints (official YAML config + key layout).

The official config's ``uplift:`` section becomes an :class:`UPLiFTLatentUpscaler` config
(:func:`config_from_original`); without it, the config is read off the checkpoint's shapes
(:func:`config_from_state_dict`). The official state-dict keys are renamed to ours
(:func:`convert_original_state_dict`, and back with :func:`convert_to_original_state_dict`).
Checkpoints are read without executing pickled code
(:func:`~uplift_diffusers.utils.state_dicts.load_state_dict_file`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
import yaml

from ..utils.state_dicts import load_state_dict_file, state_dict_problems

__all__ = [
    "config_from_original",
    "config_from_state_dict",
    "convert_original_state_dict",
    "convert_to_original_state_dict",
    "already_converted_error",
    "load_original_into",
    "load_state_dict_file",
    "OFFICIAL_FIELDS_NOT_IN_WEIGHTS",
]

PathLike = Union[str, os.PathLike]

# official key (regex) -> our key (format string); ConvBlock keys end in `.conv.<index>.<param>`
_KEY_RULES = [
    (r"encoder\.block_(\d+)\.blocks\.(\d+)\.conv\.(\d)\.(weight|bias)", "encoder.groups.{0}.{1}.{2}.{3}"),
    (r"decoder\.block_0\.blocks\.(\d+)\.conv\.(\d)\.(weight|bias)", "decoder.in_blocks.{0}.{1}.{2}"),
    (r"decoder\.block_1\.blocks\.(\d+)\.conv\.(\d)\.(weight|bias)", "decoder.out_blocks.{0}.{1}.{2}"),
    (r"refiner\.blocks\.(\d+)\.conv\.(\d)\.(weight|bias)", "refiner.blocks.{0}.{1}.{2}"),
    (r"decoder\.up_1\.up\.(weight|bias)", "decoder.upsample.{0}"),
    (r"attender\.conv1\.(weight|bias)", "attender.to_logits.{0}"),
    (r"ref_outc\.(weight|bias)", "refiner.out.{0}"),
]
# index inside the official ConvBlock's nn.Sequential -> our ConvBlock attribute
_CONV_PARTS = {"0": "conv", "1": "norm", "3": "proj"}
# our key (regex) -> official key, the inverse of _KEY_RULES (used to name keys in error messages)
_OFFICIAL_RULES = [
    (r"encoder\.groups\.(\d+)\.(\d+)\.(conv|norm|proj)\.(weight|bias)", "encoder.block_{0}.blocks.{1}.conv.{2}.{3}"),
    (r"decoder\.in_blocks\.(\d+)\.(conv|norm|proj)\.(weight|bias)", "decoder.block_0.blocks.{0}.conv.{1}.{2}"),
    (r"decoder\.out_blocks\.(\d+)\.(conv|norm|proj)\.(weight|bias)", "decoder.block_1.blocks.{0}.conv.{1}.{2}"),
    (r"refiner\.blocks\.(\d+)\.(conv|norm|proj)\.(weight|bias)", "refiner.blocks.{0}.conv.{1}.{2}"),
    (r"decoder\.upsample\.(weight|bias)", "decoder.up_1.up.{0}"),
    (r"attender\.to_logits\.(weight|bias)", "attender.conv1.{0}"),
    (r"refiner\.out\.(weight|bias)", "ref_outc.{0}"),
]
_CONV_INDEX = {part: index for index, part in _CONV_PARTS.items()}


def _official_key(key: str) -> Optional[str]:
    """The official checkpoint key of one of our parameter names, or None."""
    for pattern, template in _OFFICIAL_RULES:
        match = re.fullmatch(pattern, key)
        if match is not None:
            return template.format(*(_CONV_INDEX.get(g, g) for g in match.groups()))
    return None


def _official_name(key: str) -> str:
    """The official checkpoint key of one of our parameter names (``key`` itself if none)."""
    return _official_key(key) or key


def _rename_keys(state_dict: Mapping[str, torch.Tensor], rename, problem: str) -> Dict[str, torch.Tensor]:
    """``state_dict`` with every key renamed by ``rename``; keys it maps to None raise one
    ValueError (``problem``: the list of them)."""
    converted, unknown = {}, []
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise ValueError(f"{problem}: {sorted(unknown)}")
    return converted


def _rename(key: str) -> Optional[str]:
    for pattern, template in _KEY_RULES:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        groups = list(match.groups())
        if pattern.endswith(r"conv\.(\d)\.(weight|bias)"):  # a sequential index inside a ConvBlock
            if groups[-2] not in _CONV_PARTS:
                return None
            groups[-2] = _CONV_PARTS[groups[-2]]
        return template.format(*groups)
    return None


def already_converted_error(state_dict: Mapping[str, torch.Tensor], argument: str, where: str) -> Optional[ValueError]:
    """The error for a state dict that is already in this package's (diffusers) layout, as
    ``save_pretrained`` / ``uplift-diffusers convert`` write it, or None when it is not: such a
    file has nothing to convert and must be loaded with its folder's ``config.json``."""
    if not state_dict or not all(isinstance(k, str) and _official_key(k) is not None for k in state_dict):
        return None
    folder = Path(where).parent if Path(where).is_file() else None
    if folder is not None and (folder / "config.json").is_file():
        load = f"load its folder {str(folder)!r} with UPLiFTLatentUpscaler.from_pretrained or `--upscaler {folder}`"
    else:
        load = "load the folder holding it and its config.json with UPLiFTLatentUpscaler.from_pretrained or `--upscaler FOLDER`"
    return ValueError(
        f"`{argument}` {where!r} is already converted (it has this package's diffusers keys, as save_pretrained "
        f"and `uplift-diffusers convert` write them): there is nothing to convert; {load}."
    )


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an official UPLiFT state dict to this package's keys.

    Raises:
        ValueError: listing the keys that belong to no part of the model.
    """
    return _rename_keys(state_dict, _rename, "Unexpected keys in the UPLiFT checkpoint (not in the official layout)")


def convert_to_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a state dict of :class:`UPLiFTLatentUpscaler` to the official key layout (the
    inverse of :func:`convert_original_state_dict`).

    Raises:
        ValueError: listing the keys that have no official name.
    """
    return _rename_keys(state_dict, _official_key, "Keys without an official UPLiFT name (not an UPLiFTLatentUpscaler state dict?)")


def _require(section: Mapping, key: str, where: str, allowed=None) -> Any:
    if key not in section:
        raise ValueError(f"Official UPLiFT config: `{where}.{key}` is missing.")
    value = section[key]
    if allowed is not None and value not in allowed:
        raise ValueError(
            f"Official UPLiFT config: `{where}.{key}` = {value!r} is not supported by this implementation "
            f"(supported: {allowed})."
        )
    return value


def _block_widths(section: Mapping, name: str, where: str) -> list:
    block = _require(section, name, where)
    _require(block, "block", f"{where}.{name}", ["SingleConv"])
    _require(block, "norm", f"{where}.{name}", ["layer"])
    widths = [int(c) for c in _require(block, "hc", f"{where}.{name}")]
    if len(widths) != int(block.get("count", len(widths))):
        raise ValueError(f"Official UPLiFT config: `{where}.{name}.count` = {block.get('count')} but `hc` lists {len(widths)} widths.")
    return widths


def _encoder_kwargs(widths: list) -> Dict[str, Any]:
    """``encoder_channels`` / ``encoder_blocks_per_group`` for per-group lists of block widths:
    one width per group when every group has the same number of blocks of one width, else the
    lists themselves."""
    per_group = {len(w) for w in widths}
    if all(len(set(w)) == 1 for w in widths) and len(per_group) == 1:
        return dict(encoder_channels=[w[0] for w in widths], encoder_blocks_per_group=per_group.pop())
    return dict(encoder_channels=widths, encoder_blocks_per_group=2)


def trained_factors_from_original(train: Mapping) -> Optional[List[int]]:
    """The upscale factors an official ``train:`` section trained (the ``trained_upscale_factors``
    config key). With ``multi_step`` every step of every depth is supervised (the authors' loop puts
    a loss on each returned step), so depths 1 ... ``down_steps`` train 2 ... 2 ** ``down_steps`` (also
    with ``only_deepest``); without it every run is one 2x step. ``None`` when the section does not say."""
    if not isinstance(train, Mapping) or "down_steps" not in train:
        return None
    if not train.get("multi_step", False):
        return [2]
    return [2 ** depth for depth in range(1, int(train["down_steps"]) + 1)]


def config_from_original(config: Union[PathLike, Mapping, None] = None) -> Dict[str, Any]:
    """Translate an official UPLiFT YAML (path or parsed dict) to ``UPLiFTLatentUpscaler`` kwargs.

    ``None`` gives the official SD1.5-VAE model (this class's defaults).
    """
    if config is None:
        return {}
    if isinstance(config, (str, os.PathLike)):
        path = Path(config).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"`config` file not found: {str(path)!r}; pass the official UPLiFT YAML or a dict.")
        with open(path) as handle:
            config = yaml.safe_load(handle)
    if not isinstance(config, Mapping):
        raise ValueError(f"`config` must be a path to an official UPLiFT YAML or a dict, got {type(config).__name__}.")
    uplift = _require(config, "uplift", "<root>")
    _require(uplift, "up_factor", "uplift", [2])
    _require(uplift, "no_UEP", "uplift", [True])
    _require(uplift, "enc_share", "uplift", [True])
    encoder = _require(uplift, "encoder", "uplift")
    decoder = _require(uplift, "decoder", "uplift")
    refiner = _require(uplift, "refiner", "uplift")

    groups = int(_require(encoder, "down_steps", "uplift.encoder")) + 1
    encoder_channels = []
    for g in range(groups):
        encoder_channels.append(_block_widths(encoder, f"block_{g}", "uplift.encoder"))
        if g:
            _require(_require(encoder, f"down_{g}", "uplift.encoder"), "down_op", f"uplift.encoder.down_{g}", ["none"])
    _require(decoder, "up_steps", "uplift.decoder", [1])
    _require(decoder, "enc_resample", "uplift.decoder", ["nearest"])
    _require(refiner, "enc_resample", "uplift.refiner", ["nearest"])
    before = _block_widths(decoder, "block_0", "uplift.decoder")
    after = _block_widths(decoder, "block_1", "uplift.decoder")
    up = _require(decoder, "up_1", "uplift.decoder")
    _require(up, "up_op", "uplift.decoder.up_1", ["tconv"])
    _require(up, "factor", "uplift.decoder.up_1", [2])
    residual = _require(up, "residual", "uplift.decoder.up_1", ["bilinear", "none", None])
    refiner_widths = _block_widths(refiner, "block_0", "uplift.refiner")
    decoder_widths = set(before + after)
    if len(decoder_widths) != 1 or len(set(refiner_widths)) != 1:
        raise ValueError(
            "Official UPLiFT config: decoder and refiner blocks of different widths within a stage are not supported "
            f"(decoder {before + after}, refiner {refiner_widths})."
        )
    ref_con = refiner.get("ref_con", -1)
    if ref_con is not None and not (-groups <= int(ref_con) < groups):
        raise ValueError(f"Official UPLiFT config: `uplift.refiner.ref_con` = {ref_con} names no encoder group (there are {groups}).")
    attender = _require(uplift, "attender", "uplift")
    backbone = config.get("backbone") or {}
    return dict(
        latent_channels=int(backbone.get("channel", 4)),
        **_encoder_kwargs(encoder_channels),
        decoder_channels=before[0],
        decoder_blocks_before_upsample=len(before),
        decoder_blocks_after_upsample=len(after),
        refiner_channels=refiner_widths[0],
        refiner_blocks=len(refiner_widths),
        refiner_encoder_group=None if ref_con is None else int(ref_con),
        neighborhood=attender if isinstance(attender, int) else [list(p) for p in attender],
        noise_channels=int(decoder.get("ncat_c", 0) or 0),
        noise_scale=float(decoder.get("ncat_s", 0) or 0),
        refiner_noise_channels=int(refiner.get("ncat_c", 0) or 0),
        refiner_noise_scale=float(refiner.get("ncat_s", 0) or 0),
        bilinear_residual=residual == "bilinear",
        vae_scale_factor=int(backbone.get("stride", 8)),
        trained_upscale_factors=trained_factors_from_original(config.get("train") or {}),
    )


#: The config fields that the weights do not determine: :func:`config_from_state_dict` gives them
#: the official SD1.5-VAE model's values (noise of scale 1 in every noise channel, the bilinear
#: residual, 8 pixels per latent). The trained factors stay unknown (``None``, no warning): a single
#: file does not say how deep it was trained; its YAML does (:func:`trained_factors_from_original`).
OFFICIAL_FIELDS_NOT_IN_WEIGHTS = dict(noise_scale=1.0, refiner_noise_scale=None, bilinear_residual=True, vae_scale_factor=8)


def _conv_shapes(state_dict: Mapping[str, torch.Tensor], prefix: str) -> list:
    """Shapes of the 3x3 convolutions of the ConvBlocks ``{prefix}.0``, ``{prefix}.1``, ... (official keys)."""
    shapes = []
    while f"{prefix}.{len(shapes)}.conv.0.weight" in state_dict:
        shapes.append(tuple(state_dict[f"{prefix}.{len(shapes)}.conv.0.weight"].shape))
    return shapes


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """``UPLiFTLatentUpscaler`` kwargs read off the shapes of an official state dict (no YAML).

    The shapes give the latent channels, every block's width, the blocks per stage, the Local
    Attender's neighbourhood size and the noise channels. The refiner's encoder connection is
    the encoder group whose width its input implies, assuming the refiner has as many noise
    channels as the decoder (as in the official configs); of equally wide groups the last one
    (the official ``ref_con: -1``). The rest is :data:`OFFICIAL_FIELDS_NOT_IN_WEIGHTS`; pass
    the official YAML to :func:`config_from_original` for a model trained otherwise (e.g.
    ``ncat_s: 0``). For the authors' released SD1.5-VAE file this is exactly the default
    ``UPLiFTLatentUpscaler()``.

    Raises:
        ValueError: the state dict is not in the official layout or its widths do not fit together.
    """
    def cannot(reason: str) -> ValueError:
        return ValueError(
            f"Cannot infer the UPLiFT config from the checkpoint: {reason}; pass the official YAML the checkpoint "
            "was trained with as `config`."
        )

    groups = []
    while True:
        blocks = _conv_shapes(state_dict, f"encoder.block_{len(groups)}.blocks")
        if not blocks:
            break
        groups.append([shape[0] for shape in blocks])
    stages = {name: _conv_shapes(state_dict, f"{name}.blocks") for name in ("decoder.block_0", "decoder.block_1", "refiner")}
    for key in ("ref_outc.weight", "attender.conv1.weight"):
        if key not in state_dict:
            raise cannot(f"it has no {key!r} (not the official key layout?)")
    if len(groups) < 2 or not all(stages.values()):
        missing = "encoder.block_1" if len(groups) < 2 else next(name for name, shapes in stages.items() if not shapes)
        raise cannot(f"it has no {missing}.blocks.0 (not the official key layout?)")
    before, after, refiner = stages["decoder.block_0"], stages["decoder.block_1"], stages["refiner"]
    latent = state_dict["ref_outc.weight"].shape[0]
    noise = before[0][1] - latent - groups[-1][-1]
    if noise < 0 or after[0][1] != before[0][0] + groups[-2][-1] + noise:
        raise cannot(
            f"the decoder's input widths ({before[0][1]}, {after[0][1]}) do not fit {latent} latent channels and "
            f"encoder widths {groups[-1][-1]}, {groups[-2][-1]}"
        )
    skip = refiner[0][1] - latent - noise
    matches = [g for g, widths in enumerate(groups) if widths[-1] == skip]
    if skip and not matches:
        raise cannot(f"the refiner's input width {refiner[0][1]} matches no encoder group (widths {[w[-1] for w in groups]})")
    return dict(
        latent_channels=latent,
        **_encoder_kwargs(groups),
        decoder_channels=before[0][0],
        decoder_blocks_before_upsample=len(before),
        decoder_blocks_after_upsample=len(after),
        refiner_channels=refiner[0][0],
        refiner_blocks=len(refiner),
        refiner_encoder_group=matches[-1] - len(groups) if skip else None,
        neighborhood=state_dict["attender.conv1.weight"].shape[0],
        noise_channels=noise,
        refiner_noise_channels=None,
        trained_upscale_factors=None,  # unknown: the weights do not say
        **OFFICIAL_FIELDS_NOT_IN_WEIGHTS,
    )


def load_original_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy an official state dict into ``model``; any missing / unexpected key or shape mismatch
    raises one ValueError listing all of them (under the official key names, as the user's
    checkpoint spells them)."""
    converted = convert_original_state_dict(state_dict)
    problems = state_dict_problems(converted, model.state_dict(), display=_official_name)
    if problems:
        raise ValueError(
            "The UPLiFT checkpoint does not match the config (pass the YAML the checkpoint was trained with): "
            + "; ".join(problems)
        )
    model.load_state_dict(converted, strict=True)
