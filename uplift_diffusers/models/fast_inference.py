"""Fast inference for :class:`~uplift_diffusers.UPLiFTLatentUpscaler`, applied from outside the model.

``apply_fast_inference(model)`` keeps the model's own ``forward`` (its input checks and its one
step loop) and swaps its two passes, :meth:`~UPLiFTLatentUpscaler.encode` and
:meth:`~UPLiFTLatentUpscaler.upscale_step`, for faster versions of themselves (the same blocks and
weights, no copy):

- ``torch.autocast`` in ``dtype`` (bfloat16 by default: AMX / AVX-512-BF16 CPUs, tensor cores):
  the convolutions compute in ``dtype`` while the residual stream stays float32, so each block
  rounds only its own update; the first encoder group, which reads the raw image, runs without
  autocast (in bf16 it alone costs a trained model about 3% relative error);
- the exact strided evaluation of the encoder's last group (:func:`encoder_read_stride`);
- ``torch.compile`` with Inductor's weight freezing (oneDNN pre-packs the weights and fuses the
  residual adds on CPU), ``channels_last`` inputs, and the noise drawn by the model's own
  ``step_noise`` outside the compiled graphs (same calls, same order as the eager model).

What each costs and gains, measured: docs/fast-inference.md. :func:`remove_fast_inference` gives
the model its own passes back. The model never imports this module.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.validation import check_flag
from .modeling_uplift import UPLiFTOutput

#: dtypes accepted by :func:`apply_fast_inference`.
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# =============================================================================== the encoder's last group, strided
def encoder_read_stride(model, num_steps: int) -> int:
    """Stride of the grid on which ``num_steps`` steps of ``model`` read the last encoder map.

    The map is at image size ``f * h`` (``f = vae_scale_factor``) and is read by nearest
    resampling at ``2**k * h`` for ``k = 0 .. K`` (``K = num_steps`` when the refiner reads
    it, else ``num_steps - 1``): source pixel ``dst * f / 2**k``. When ``2**K`` divides ``f``
    all reads fall on every ``f / 2**K``-th pixel; otherwise 1 (dense)."""
    groups = len(model.encoder.groups)
    group = model.config.refiner_encoder_group
    refiner_reads_last = group is not None and group % groups == groups - 1
    finest = 2 ** (num_steps if refiner_reads_last else num_steps - 1)
    factor = model.config.vae_scale_factor
    return factor // finest if factor % finest == 0 else 1


def last_group_strided(group: nn.Sequential, x: torch.Tensor, stride: int) -> torch.Tensor:
    """``group(x)[..., ::stride, ::stride]`` (the encoder's last group), from its dense input:
    the blocks before the last run densely; the last one computes only the pixels read (its
    3x3 convolution with ``stride`` and the same zero padding, the rest is per pixel)."""
    x = group[:-1](x)
    block = group[-1]
    conv_out = F.conv2d(x, block.conv.weight, None, stride=stride, padding=1)
    return block.pointwise(conv_out, x[:, :, ::stride, ::stride])


# =============================================================================== the fast passes
class FastInference:
    """The fast-inference state of one model: settings, compiled passes and the replacements
    of the model's passes. Made by :func:`apply_fast_inference`; holds no copy of the weights."""

    def __init__(self, model, dtype: torch.dtype, compile: bool, compile_mode: Optional[str], channels_last: bool):
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last
        # the groups from the first widest one carry their stream in `dtype`: in float32 it doubled
        # the peak memory (276 -> 613 MiB at 256 px) for 0.89% -> 0.79% error (official-size model, random weights)
        widths = [group[-1].out_channels for group in model.encoder.groups]
        self.half_stream_from = widths.index(max(widths))
        #: stride of the last encoder map for the call in progress (set by :meth:`forward`)
        self.read_stride = 1
        # freezing makes the weights constants of the compiled graphs. Dynamo reads the flag
        # while tracing and guards on it, so it is set around every call (as a compile option
        # it would reach Inductor alone and the weights would stay graph inputs).
        self.freezing = compile and compile_mode is None
        #: the compiled passes by name; a pass that fails to compile is dropped (runs eagerly)
        self.compiled = {}
        if compile:
            try:
                for name in ("encode", "step"):
                    self.compiled[name] = torch.compile(getattr(self, name), mode=compile_mode, dynamic=False)
            except Exception as error:
                self.compiled.clear()
                warnings.warn(
                    f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); UPLiFT fast inference runs eagerly.",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def _layout(self, tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if tensor is None or not self.channels_last:
            return tensor
        return tensor.contiguous(memory_format=torch.channels_last)

    def _autocast(self, device_type: str, enabled: bool = True):
        """Autocast to the fast dtype; no context at all when off."""
        if not enabled or self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def encode(self, image: torch.Tensor, stride: int) -> List[torch.Tensor]:
        """The encoder pass, uncompiled: the maps of the model's own encoder groups, the last
        one on the grid the steps read, stored in ``dtype``."""
        groups = self.model.encoder.groups
        maps, x = [], image
        for index, group in enumerate(groups):
            if index >= self.half_stream_from:
                x = x.to(self.dtype)
            with self._autocast(image.device.type, enabled=index > 0):  # the first group reads the raw image
                x = group(x) if index < len(groups) - 1 else last_group_strided(group, x, stride)
            maps.append(self._layout(x.to(self.dtype)))
        return maps

    def step(self, latents: torch.Tensor, features: List[torch.Tensor], noise) -> torch.Tensor:
        """The model's own 2x step under autocast, uncompiled, with the noise drawn outside
        (a compiled graph holds no random numbers)."""
        with self._autocast(latents.device.type):
            return type(self.model).upscale_step(self.model, latents, features, noise)

    def model_encode(self, image: torch.Tensor) -> List[torch.Tensor]:
        """Replaces :meth:`UPLiFTLatentUpscaler.encode` while applied."""
        return self._call("encode", self._layout(image.to(self.model.dtype)), self.read_stride)

    def model_upscale_step(self, latents: torch.Tensor, features: List[torch.Tensor], noise) -> torch.Tensor:
        """Replaces :meth:`UPLiFTLatentUpscaler.upscale_step` while applied."""
        return self._call("step", self._layout(latents), features, tuple(self._layout(n) for n in noise))

    def _call(self, name: str, *args):
        compiled = self.compiled.get(name)
        if compiled is not None:
            import torch._inductor.config as inductor_config  # slow to import: only when compiling

            freezing = inductor_config.patch(freezing=True) if self.freezing else contextlib.nullcontext()
            try:
                with freezing:
                    return compiled(*args)
            except Exception as error:  # a backend failure (e.g. no C compiler): run eagerly
                warnings.warn(
                    f"torch.compile could not compile the UPLiFT {name} pass ({type(error).__name__}: "
                    f"{str(error)[:300]}); running it eagerly in {self.dtype} instead. Call "
                    "apply_fast_inference(model, compile=False) to skip compiling.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                del self.compiled[name]
        return getattr(self, name)(*args)

    def forward(self, latents, image, num_steps=1, *args, **kwargs):
        """The model's own ``forward`` (same arguments, checks and step loop) without gradients,
        its outputs in the dtype of the caller's ``latents`` (standard memory format); ``callback``
        receives each step's latents as the step computed them (maybe channels_last)."""
        model = self.model
        self.read_stride = encoder_read_stride(model, num_steps) if isinstance(num_steps, int) else 1
        with torch.no_grad():
            output = type(model).forward(model, latents, image, num_steps, *args, **kwargs)
        sample, intermediate = output if isinstance(output, tuple) else (output.sample, output.intermediate)
        back = dict(dtype=latents.dtype, memory_format=torch.contiguous_format)
        sample = sample.to(**back)
        intermediate = None if intermediate is None else [z.to(**back) for z in intermediate]
        if isinstance(output, tuple):
            return (sample, intermediate)
        return UPLiFTOutput(sample=sample, intermediate=intermediate)


def apply_fast_inference(
    model,
    dtype: torch.dtype = torch.bfloat16,
    compile: bool = True,
    compile_mode: Optional[str] = None,
    channels_last: bool = True,
) -> FastInference:
    """Make ``model`` (an :class:`UPLiFTLatentUpscaler`) run its forward pass fast.

    Args:
        model: the upscaler (float32 weights for the mixed precision described above).
        dtype: compute dtype of the convolutions, one of :data:`SUPPORTED_DTYPES`; ``torch.float32``
            is the exact model (no autocast: only the strided encoder evaluation and compiling).
        compile: wrap the encoder and the 2x step in ``torch.compile`` (falls back to eager
            with a ``RuntimeWarning`` when compiling is not possible). Each new input size
            compiles again (``dynamic=False``): the first call at a size is slow (about a
            minute on a 2-core CPU). Weights are frozen into the compiled graphs: after
            changing them, call this again.
        compile_mode: ``mode`` passed to ``torch.compile`` (``None``: its default; e.g.
            ``"max-autotune-no-cudagraphs"``).
        channels_last: pass the inputs and the encoder maps in ``channels_last`` memory format.

    Returns:
        The :class:`FastInference` state (also ``model._fast_inference``). Calling this
        again replaces the previous state.
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"`dtype` must be one of {', '.join(map(str, SUPPORTED_DTYPES))} (e.g. torch.bfloat16), got {dtype!r}."
        )
    check_flag("compile", compile)
    check_flag("channels_last", channels_last)
    if compile_mode is not None and not isinstance(compile_mode, str):
        raise ValueError(f"`compile_mode` must be None or a torch.compile mode name, got {compile_mode!r}.")
    remove_fast_inference(model)
    state = FastInference(model, dtype, compile, compile_mode, channels_last)
    model.encode = state.model_encode
    model.upscale_step = state.model_upscale_step
    # accelerate's hooks (CPU offload) replace `forward` on the instance and call `_old_forward`:
    # then that is replaced, so the hook still moves the weights first
    under_hook = hasattr(model, "_hf_hook") and hasattr(model, "_old_forward")
    setattr(model, "_old_forward" if under_hook else "forward", state.forward)
    model._fast_inference = state
    return state


def remove_fast_inference(model) -> None:
    """Undo :func:`apply_fast_inference`: the model's own (float32 eager) passes and ``forward``
    again, the compiled passes dropped. Does nothing when fast inference is not applied."""
    state = getattr(model, "_fast_inference", None)
    if state is None:
        return
    for name in ("encode", "upscale_step"):
        model.__dict__.pop(name, None)
    if model.__dict__.get("forward") == state.forward:
        del model.forward
    if model.__dict__.get("_old_forward") == state.forward:  # under an accelerate hook: it calls this again
        model._old_forward = type(model).forward.__get__(model)
    model._fast_inference = None
    state.compiled.clear()
