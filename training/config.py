"""The training configuration: one dataclass per section of the YAML recipes (training/configs/).

Every key is a dataclass field with its type, its default and its allowed values (:func:`option`).
:func:`load_config` lays dotted overrides (``optimization.lr``) over a recipe and checks every
value, each problem one ``ValueError`` line that names the key and says what it must be.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import operator
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml
from diffusers.optimization import SchedulerType

from uplift_diffusers.constants import DEFAULT_BACK_PROJECTION_STEPS, SD15_MODEL_ID

from training.data import CROP_MODES


def option(default=None, *, factory=None, **rule) -> Any:
    """A config field with its allowed values: ``min`` (>=), ``above`` (>), ``below`` (<),
    ``length`` (of a list), ``choices`` and ``expected`` (the text of its error)."""
    if factory is not None:
        return field(default_factory=factory, metadata=rule)
    return field(default=default, metadata=rule)


@dataclass
class DataConfig:
    train_dirs: List[str] = option(factory=list, expected="a folder or a list of folders (pass --train-data DIR [DIR ...])")
    resolution: int = option(1024, min=8)
    crop: str = "random_resized"  # these three: checked together by check_config
    crops_per_image: Optional[int] = None
    max_upscale_crop: float = 1.0
    cache_dir: Optional[str] = None
    num_workers: int = option(0, min=0)

    def __post_init__(self):
        if isinstance(self.train_dirs, str):
            self.train_dirs = [self.train_dirs]


@dataclass
class OptimizationConfig:
    depths: List[int] = option(factory=lambda: [1, 2, 3, 4], min=1, expected="a non-empty list of integers >= 1")
    lat_aug: float = option(1.0, min=0)
    lat_aug_noisy_targets: bool = False
    pixel_loss_weight: float = option(0.0, min=0)
    pixel_loss_back_projection: int = option(0, min=0)
    lr: float = option(1e-3, above=0)
    adam_betas: List[float] = option(factory=lambda: [0.9, 0.999], min=0, below=1, length=2,
                                     expected="a list of two numbers in [0, 1), e.g. [0.9, 0.999]")
    weight_decay: float = option(0.0, min=0)
    batch_size: int = option(1, min=1)
    epochs: int = option(5, min=1)
    max_steps: Optional[int] = option(None, min=0)
    max_minutes: Optional[float] = option(None, above=0)
    stop_at_step: Optional[int] = option(None, min=1)
    gradient_accumulation_steps: int = option(1, min=1)
    max_grad_norm: Optional[float] = option(1.0, above=0, expected="a number > 0, or null for no gradient clipping")
    lr_scheduler: str = option("constant", choices=[kind.value for kind in SchedulerType])
    lr_warmup_steps: int = option(0, min=0)
    mixed_precision: str = option("no", choices=["no", "fp16", "bf16", "fp8"])
    ema_decay: Optional[float] = option(None, min=0, below=1, expected="null or a number in [0, 1) (0 / null = no EMA)")
    seed: int = option(0, min=0)

    def __post_init__(self):
        if self.mixed_precision is False:  # YAML reads an unquoted `no` as false
            self.mixed_precision = "no"


@dataclass
class CheckpointingConfig:
    every_steps: Optional[int] = option(1000, min=0)
    keep_last: Optional[int] = option(3, min=0)


@dataclass
class ValidationConfig:
    dir: Optional[str] = None
    every_steps: Optional[int] = option(1000, min=0)
    num_images: int = option(8, min=1)
    hr_size: int = option(256, min=8)
    lr_size: int = option(64, min=8)
    num_samples: int = option(4, min=0)
    back_projection_steps: int = option(DEFAULT_BACK_PROJECTION_STEPS, min=0)


@dataclass
class LoggingConfig:
    report_to: Optional[str] = option("none", expected="null, none, tensorboard, wandb, ... (accelerate trackers)")
    log_every: int = option(1, min=1)


@dataclass
class TrainingConfig:
    vae: str = option(SD15_MODEL_ID, expected="a Hub id or a folder")
    output_dir: str = option("runs/uplift", expected="a folder path")
    init_from: Optional[str] = option(None, expected="a model folder or null")
    model: Dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


#: the model arguments the training script sets itself
SET_BY_THE_SCRIPT = {"latent_channels": "it is taken from the VAE", "trained_upscale_factors": "it is set from optimization.depths"}


def read_recipe(path) -> Dict[str, Any]:
    """The mapping in the YAML file ``path`` (FileNotFoundError / one-line ValueError)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--config file not found: {str(path)!r}.")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"--config {str(path)!r} is not valid YAML: {' '.join(str(error).split())}") from None


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(item: str):
    """``"SECTION.KEY=VALUE"`` -> ``("SECTION.KEY", value)``, the value parsed as YAML (``1e-4``
    too, which YAML 1.1 reads as a string; ``null`` is None)."""
    dotted, sep, text = item.partition("=")
    if not sep or "." not in dotted:
        raise ValueError(f"--set expects SECTION.KEY=VALUE, got {item!r}.")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(f"--set {item!r}: the value is not valid YAML; quote strings, e.g. {dotted}='\"text\"'.") from None
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
        value = float(value)
    return dotted, value


def _unknown_key(dotted: str, choices) -> ValueError:
    where, _, name = dotted.rpartition(".")
    close = difflib.get_close_matches(name, list(choices), n=1)
    hint = f" (did you mean `{where + '.' if where else ''}{close[0]}`?)" if close else ""
    known = f"known keys of {where}" if where else "known sections"
    return ValueError(f"unknown config key `{dotted}`{hint}; {known}: {', '.join(sorted(choices))}.")


def _build(cls, values, where: str):
    """``cls`` made of the mapping ``values``: unknown keys refused, every field checked."""
    if not isinstance(values, dict):
        raise ValueError(f"config section `{where}` must be a mapping of keys to values, got {values!r}.")
    hints = typing.get_type_hints(cls)
    prefix = where + "." if where else ""
    for key in values:
        if key not in hints:
            raise _unknown_key(prefix + key, hints)
    config = cls(**{key: _build(hints[key], value or {}, key) if dataclasses.is_dataclass(hints[key]) else value
                    for key, value in values.items()})
    for item in dataclasses.fields(config):
        if not dataclasses.is_dataclass(hints[item.name]):
            check_value(prefix + item.name, getattr(config, item.name), hints[item.name], dict(item.metadata))
    return config


def load_config(raw: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None) -> TrainingConfig:
    """The checked configuration of the recipe mapping ``raw`` with ``overrides``
    (``{"optimization.lr": 0.01}``) laid over it: unknown keys refused, every value checked."""
    if not isinstance(raw, dict):
        raise ValueError(f"a recipe must be a mapping of sections, got {raw!r}.")
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        *sections, key = dotted.split(".")
        target = raw
        for section in sections:
            if target.get(section) is None:
                target[section] = {}
            target = target[section]
            if not isinstance(target, dict):
                raise ValueError(f"cannot set `{dotted}`: `{section}` is not a section.")
        target[key] = value
    config = _build(TrainingConfig, raw, "")
    check_config(config)
    return config


_KINDS = {
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), "a number"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    str: (lambda v: isinstance(v, str) and bool(v), "a string"),
}
_BOUNDS = {"min": (">=", operator.ge), "above": (">", operator.gt), "below": ("<", operator.lt)}


def check_value(dotted: str, value, hint, rule: Dict) -> None:
    """ValueError unless ``value`` has the type ``hint`` (int, float, bool, str, Optional[...],
    List[...]) and obeys ``rule`` (see :func:`option`)."""
    optional = type(None) in typing.get_args(hint)
    if optional and value is None:
        return
    if optional:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    is_list = typing.get_origin(hint) in (list, List)
    kind = typing.get_args(hint)[0] if is_list else hint
    if kind not in _KINDS:
        return
    test, text = _KINDS[kind]
    bounds = [(sign, compare, rule[name]) for name, (sign, compare) in _BOUNDS.items() if name in rule]
    choices = rule.get("choices")

    def ok(v) -> bool:
        return test(v) and all(compare(v, bound) for _, compare, bound in bounds) and (choices is None or v in choices)

    if is_list:
        good = isinstance(value, list) and bool(value) and all(map(ok, value)) and len(value) == rule.get("length", len(value))
    else:
        good = ok(value)
    if good:
        return
    expected = rule.get("expected")
    if expected is None:
        limits = " and ".join(f"{sign} {bound:g}" for sign, _, bound in bounds)
        expected = f"one of {', '.join(choices)}" if choices else f"{text} {limits}".strip()
        expected = ("null or " if optional else "") + expected
    raise ValueError(f"config key `{dotted}` must be {expected}, got {value!r} ({type(value).__name__}).")


def check_config(config: TrainingConfig) -> None:
    """What one field alone does not say: the rules across keys, the model section, init_from."""
    data, opt, val = config.data, config.optimization, config.validation
    if data.resolution % (8 * 2 ** max(opt.depths)):
        raise ValueError(f"data.resolution {data.resolution} must be divisible by 8 * 2^max(depths) = {8 * 2 ** max(opt.depths)}.")
    if len(set(opt.depths)) != len(opt.depths):
        raise ValueError(f"optimization.depths {opt.depths!r} repeats a depth; list each depth once.")
    crops, largest = data.crops_per_image, data.max_upscale_crop
    if crops is not None and crops < 1:
        raise ValueError(f"data: `crops_per_image` must be an integer >= 1 or None, got {crops!r}.")
    if data.crop not in CROP_MODES:
        raise ValueError(f"data: `crop` must be one of {', '.join(CROP_MODES)}, got {data.crop!r}.")
    if not 0 < largest <= 1:
        raise ValueError(f"data: `max_upscale_crop` must be a number in (0, 1], got {largest!r}.")
    if data.crop != "random_resized" and largest != 1.0:
        raise ValueError(
            f"data: `max_upscale_crop={largest}` applies to crop='random_resized' only (crop={data.crop!r} always "
            "resizes the whole shorter side to `resolution`): set it to 1.0 or use crop='random_resized'."
        )
    if data.crop == "center" and crops not in (None, 1):
        raise ValueError(
            f"data: `crops_per_image={crops}` with crop='center' would repeat the same crop: set it to None, or use crop='random'."
        )
    if val.hr_size % val.lr_size:
        raise ValueError(f"validation.hr_size {val.hr_size} must be a multiple of validation.lr_size {val.lr_size}.")
    check_model(config)


def check_model(config: TrainingConfig) -> None:
    """The ``model`` section against ``UPLiFTLatentUpscaler``'s arguments and its own checks (built
    on the meta device: no weights), and ``init_from`` (a folder saved by ``save_pretrained``)
    against the architecture it describes, read from its ``config.json``."""
    from uplift_diffusers import UPLiFTLatentUpscaler

    model = config.model
    if not isinstance(model, dict):
        raise ValueError(f"config section `model` must be a mapping of UPLiFTLatentUpscaler arguments, got {model!r}.")
    hints = typing.get_type_hints(UPLiFTLatentUpscaler.__init__)
    for name in ("return", *SET_BY_THE_SCRIPT):
        hints.pop(name, None)
    for key, value in model.items():
        if key in SET_BY_THE_SCRIPT:
            raise ValueError(f"config key `model.{key}` cannot be set: {SET_BY_THE_SCRIPT[key]}.")
        if key not in hints:
            raise _unknown_key(f"model.{key}", hints)
        check_value(f"model.{key}", value, hints[key], {})
    try:
        with torch.device("meta"):
            wanted = UPLiFTLatentUpscaler(**model).config
    except (TypeError, ValueError) as error:
        raise ValueError(f"config section `model`: {error}") from None
    if config.init_from is None:
        return
    try:
        saved = UPLiFTLatentUpscaler.load_config(Path(config.init_from).expanduser())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"config key `init_from`: cannot read {config.init_from!r} ({type(error).__name__}); pass a folder written by "
            "UPLiFTLatentUpscaler.save_pretrained (e.g. OUTPUT/model of an earlier run)."
        ) from None
    plain = json.loads(json.dumps({key: wanted[key] for key in wanted if not key.startswith("_")}))
    differ = [f"{key}={value!r} here but {saved.get(key)!r} there" for key, value in plain.items()
              if key not in SET_BY_THE_SCRIPT and value != saved.get(key)]
    if differ:
        raise ValueError(
            f"config key `init_from` ({config.init_from!r}) holds another architecture: {'; '.join(differ)}; "
            "make the `model` section match its config.json."
        )
