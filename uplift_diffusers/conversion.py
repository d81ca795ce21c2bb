"""Loading the authors' released UPLiFT checkpoints (official YAML config + key layout).

The official config's ``uplift:`` section becomes an :class:`UPLiFTLatentUpscaler` config
(:func:`config_from_original`); the official state-dict keys are renamed to ours
(:func:`convert_original_state_dict`). Checkpoints are read without executing pickled code:
``.safetensors`` directly, ``.pth`` / ``.pt`` / ``.ckpt`` with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
import yaml

from .state_dicts import state_dict_differences

PathLike = Union[str, os.PathLike]

#: Hub location of the authors' released SD1.5-VAE model.
ORIGINAL_REPO_ID = "mwalmer/uplift"
ORIGINAL_CHECKPOINT_NAME = "uplift_sd1.5vae.safetensors"

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


def _official_name(key: str) -> str:
    """The official checkpoint key of one of our parameter names (``key`` itself if none)."""
    for pattern, template in _OFFICIAL_RULES:
        match = re.fullmatch(pattern, key)
        if match is not None:
            return template.format(*(_CONV_INDEX.get(g, g) for g in match.groups()))
    return key


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


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an official UPLiFT state dict to this package's keys.

    Raises:
        ValueError: listing the keys that belong to no part of the model.
    """
    converted, unknown = {}, []
    for key, value in state_dict.items():
        new_key = _rename(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise ValueError(f"Unexpected keys in the UPLiFT checkpoint (not in the official layout): {sorted(unknown)}")
    return converted


def load_state_dict_file(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.ckpt`` state dict without running pickled code.

    A ``.pth`` holding ``{"state_dict": ...}`` / ``{"model": ...}`` is unwrapped, and a
    ``module.`` prefix (DataParallel) is removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"`checkpoint` file not found: {str(path)!r}; pass the path to the .safetensors or .pth file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    elif path.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model", "uplift"):
            if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
                state_dict = state_dict[wrapper]
    else:
        raise ValueError(f"`checkpoint` {str(path)!r} has suffix {path.suffix!r}; expected .safetensors, .pth, .pt, .ckpt or .bin.")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"`checkpoint` {str(path)!r} does not hold a state dict of tensors.")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


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
    per_group = {len(w) for w in encoder_channels}
    uniform = all(len(set(w)) == 1 for w in encoder_channels) and len(per_group) == 1
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
        encoder_channels=[w[0] for w in encoder_channels] if uniform else encoder_channels,
        encoder_blocks_per_group=per_group.pop() if uniform else 2,
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
    )


def load_original_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy an official state dict into ``model``; any missing / unexpected key or shape mismatch
    raises one ValueError listing all of them."""
    converted = convert_original_state_dict(state_dict)
    expected = model.state_dict()
    missing, unexpected, mismatched = state_dict_differences(converted, expected)
    # problems are listed under the official key names, as the user's checkpoint spells them
    missing = sorted(_official_name(k) for k in missing)
    unexpected = sorted(_official_name(k) for k in unexpected)
    mismatched = [f"{_official_name(k)}: checkpoint {have} vs model {want}" for k, have, want in mismatched]
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ValueError(
            "The UPLiFT checkpoint does not match the config (pass the YAML the checkpoint was trained with): "
            + "; ".join(problems)
        )
    model.load_state_dict(converted, strict=True)
