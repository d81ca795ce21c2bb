"""Fast inference for :class:`~uplift_diffusers.UPLiFTLatentUpscaler`.

``enable_fast_inference(model, dtype=torch.bfloat16, compile=True)`` switches a model to:

- weights in ``dtype`` (bfloat16 by default: AMX / AVX-512-BF16 on recent x86 CPUs, tensor
  cores on CUDA), except the first encoder group, which reads the raw image and stays in
  float32 (about 3% of the encoder's work; in bf16 it alone costs a trained model about 3%
  relative error), 4-D weights in ``channels_last``;
- mixed precision: every convolution computes in ``dtype``, while the residual stream
  (the sums of the ConvBlocks, the concatenations, the latents between steps, the Local
  Attender's softmax and mixing) stays float32, so that each block rounds only its own
  update, not the running sum; except in the widest encoder groups (512 channels at full
  image resolution), whose stream is in ``dtype``: they set the peak memory, which a
  float32 stream there would double. The encoder maps are stored in ``dtype``. On the
  official-size model with random weights this takes the relative error from 1.1%
  (everything in bf16) to 0.89% / 0.83% (1 / 2 steps), with the same time and peak memory;
- inputs converted to ``channels_last`` automatically, the output returned in the dtype of
  the caller's ``latents`` (standard memory format);
- the encoder and the 2x step wrapped in ``torch.compile`` when it is available, with
  Inductor's weight freezing in the default mode (weights become graph constants: oneDNN
  pre-packs them and fuses residual adds into the 1x1 convolutions on CPU). If
  compiling is not possible (no ``torch.compile``, no C compiler for the CPU backend, a
  backend error), a ``RuntimeWarning`` says so and the model runs eagerly: never a crash;
- noise drawn exactly as the eager model draws it (same generator calls, same order, in the
  weights' original dtype), so both modes see the same noise.

The forward pass runs under ``torch.no_grad()`` (inference only). The original weights are
kept aside (no copy is made of them) and :func:`disable_fast_inference` puts them back, so the
model is bit-for-bit the float32 eager model again.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from .modeling_uplift import UPLiFTOutput, run_blocks

#: Parameters kept in the original dtype in fast mode (the first encoder group).
FULL_PRECISION_PREFIX = "encoder.groups.0."

#: dtypes accepted by :func:`enable_fast_inference`.
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class FastInference:
    """The fast-inference state of one model: the original weights, the compiled functions
    and the forward pass that uses them. Made by :func:`enable_fast_inference`."""

    def __init__(self, model, dtype: torch.dtype, compile: bool, compile_mode: Optional[str], channels_last: bool):
        self.model = model
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.original_dtype = model.dtype
        self._saved = {}
        for name, tensor in _floating_tensors(model):
            self._saved[name] = tensor.data
            fmt = self.memory_format if tensor.ndim == 4 else torch.contiguous_format
            # the first encoder group reads the raw image and stays in the original dtype: it is
            # ~3% of the encoder's work, and in bf16 it costs a trained model ~3% relative error
            keep = name.startswith(FULL_PRECISION_PREFIX)
            tensor.data = tensor.data.to(dtype=self.original_dtype if keep else dtype, memory_format=fmt)
        # the encoder groups from the first one as wide as the widest (full resolution: they
        # set the peak memory) keep their residual stream in `dtype`; a float32 stream there
        # doubled the peak memory (276 -> 613 MiB at 256 px) for 0.89% -> 0.79% error
        # (official-size model, random weights)
        widths = [group[-1].out_channels for group in model.encoder.groups]
        self.half_stream_from = widths.index(max(widths))
        self._eager = {"encode": self._encode, "step": self._step}
        self._compiled: Dict[str, Optional[Callable]] = {}
        # freezing: weights become constants of the compiled graphs, which lets Inductor
        # pre-pack them for oneDNN and fuse the residual add into the 1x1 convolution (CPU).
        # Dynamo reads the flag while tracing and guards on it, so it is set around every
        # call, not only passed as a compile option (which reaches Inductor alone: weights
        # would stay graph inputs).
        self.freezing = compile and compile_mode is None
        if compile:
            self._compiled = {name: _try_compile(fn, compile_mode) for name, fn in self._eager.items()}

    @property
    def compiled(self) -> bool:
        """Whether compiled functions are in use (False after a fallback to eager)."""
        return any(fn is not None for fn in self._compiled.values())

    def restore(self) -> None:
        """Put the original weights back (exactly) and drop the compiled functions."""
        for name, tensor in _floating_tensors(self.model):
            original = self._saved[name]
            tensor.data = original if original.device == tensor.device else original.to(tensor.device)
        self._saved.clear()
        self._compiled.clear()

    # ----------------------------------------------------------------- the passes
    def _encode(self, image: torch.Tensor, stride: int) -> List[torch.Tensor]:
        """The encoder maps, stored in ``dtype`` (float32 residual stream inside)."""
        features = self.model.encoder(image, last_map_stride=stride, feature_dtype=self.dtype, feature_dtype_stream_from=self.half_stream_from)
        return [f.contiguous(memory_format=self.memory_format) for f in features]

    def _step(self, latents: torch.Tensor, features: List[torch.Tensor], noises: List[Optional[torch.Tensor]]) -> torch.Tensor:
        """:meth:`UPLiFTLatentUpscaler.upscale_step` with the noise given (drawn outside, so
        that a compiled graph contains no random number generation)."""
        model = self.model
        decoder = model.decoder
        x = run_blocks(decoder.in_blocks, _concat(latents, features[-1], noises[0]))
        x = decoder.upsample2x(x)
        guide = run_blocks(decoder.out_blocks, _concat(x, features[-2], noises[1]))
        attended = model.attender(guide, latents)
        group = model.config.refiner_encoder_group
        skip = None if group is None else features[group]
        return model.refiner(_concat(attended, skip, noises[2]))

    def _call(self, name: str, *args):
        compiled = self._compiled.get(name)
        if compiled is not None:
            try:
                if self.freezing:
                    with _freezing():
                        return compiled(*args)
                return compiled(*args)
            except Exception as error:  # a backend failure (e.g. no C compiler): run eagerly
                warnings.warn(
                    f"torch.compile could not compile the UPLiFT {name} pass ({type(error).__name__}: "
                    f"{str(error)[:300]}); running it eagerly in {self.dtype} instead. Call "
                    "enable_fast_inference(compile=False) to skip compiling.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self._compiled[name] = None
        return self._eager[name](*args)

    def _noises(self, latents: torch.Tensor, noise_scale: Optional[float], generator) -> List[Optional[torch.Tensor]]:
        """The three noise tensors of one step, drawn as the eager model draws them."""
        dec_noise, ref_noise = self.model._noise_settings(noise_scale)
        batch, _, h, w = latents.shape
        noises = []
        for (channels, scale), (nh, nw) in ((dec_noise, (h, w)), (dec_noise, (2 * h, 2 * w)), (ref_noise, (2 * h, 2 * w))):
            if not channels:
                noises.append(None)
                continue
            shape = (batch, channels, nh, nw)
            if scale == 0.0:
                noise = torch.zeros(shape, device=latents.device, dtype=self.original_dtype)
            else:
                noise = randn_tensor(shape, generator=generator, device=latents.device, dtype=self.original_dtype) * scale
            noises.append(noise.to(memory_format=self.memory_format))
        return noises

    def forward(self, latents, image, num_steps, generator, noise_scale, output_intermediate, return_dict):
        """The model's forward pass in fast mode (inputs already validated by the model)."""
        out_dtype = latents.dtype
        with torch.no_grad():
            image = image.to(dtype=self.original_dtype, memory_format=self.memory_format)
            z = latents.to(dtype=self.original_dtype, memory_format=self.memory_format)
            features = self._call("encode", image, self.model.encoder_read_stride(num_steps))
            steps = []
            for _ in range(num_steps):
                z = self._call("step", z, features, self._noises(z, noise_scale, generator))
                steps.append(z)
        steps = [s.to(dtype=out_dtype, memory_format=torch.contiguous_format) for s in steps]
        intermediate = steps if output_intermediate else None
        if not return_dict:
            return (steps[-1], intermediate)
        return UPLiFTOutput(sample=steps[-1], intermediate=intermediate)


def _concat(x: torch.Tensor, skip: Optional[torch.Tensor], noise: Optional[torch.Tensor]) -> torch.Tensor:
    parts = [x]
    if skip is not None:
        parts.append(F.interpolate(skip, size=x.shape[-2:], mode="nearest"))
    if noise is not None:
        parts.append(noise)
    return torch.cat(parts, dim=1)


def _floating_tensors(model):
    for name, param in model.named_parameters():
        if param.is_floating_point():
            yield name, param
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            yield name, buffer


def _freezing():
    """Inductor's ``freezing`` switched on (see :attr:`FastInference.freezing`)."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


def _try_compile(fn: Callable, mode: Optional[str]) -> Optional[Callable]:
    """``torch.compile(fn)``, or ``None`` with a warning when that is not possible."""
    compile_fn = getattr(torch, "compile", None)
    if compile_fn is None:
        warnings.warn(
            f"torch.compile is not available in torch {torch.__version__}; UPLiFT fast inference runs eagerly.",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    try:
        return compile_fn(fn, mode=mode, dynamic=False)
    except Exception as error:
        warnings.warn(
            f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); UPLiFT fast inference runs eagerly.",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def enable_fast_inference(
    model,
    dtype: torch.dtype = torch.bfloat16,
    compile: bool = True,
    compile_mode: Optional[str] = None,
    channels_last: bool = True,
) -> FastInference:
    """Switch ``model`` (an :class:`UPLiFTLatentUpscaler`) to fast inference.

    Args:
        model: the upscaler.
        dtype: compute dtype of the weights and activations: ``torch.bfloat16`` (default),
            ``torch.float16`` or ``torch.float32``.
        compile: wrap the encoder and the 2x step in ``torch.compile`` (falls back to eager
            with a ``RuntimeWarning`` when compiling is not possible). Each new input size
            compiles again (``dynamic=False``): the first call at a size is slow (about a
            minute on a 2-core CPU). Weights are frozen into the compiled graphs: after
            changing them, call this again.
        compile_mode: ``mode`` passed to ``torch.compile`` (``None``: its default; e.g.
            ``"max-autotune-no-cudagraphs"``).
        channels_last: put 4-D weights and inputs in ``channels_last`` memory format.

    Returns:
        The :class:`FastInference` state (also stored on the model). Calling this again
        first restores the original weights, then applies the new settings.

    Raises:
        ValueError: for an unsupported ``dtype`` or a non-bool ``compile``/``channels_last``.
    """
    if not isinstance(dtype, torch.dtype) or dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"`dtype` must be one of {', '.join(str(d) for d in SUPPORTED_DTYPES)}, got {dtype!r}; "
            "pass e.g. dtype=torch.bfloat16."
        )
    for name, value in (("compile", compile), ("channels_last", channels_last)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    if compile_mode is not None and not isinstance(compile_mode, str):
        raise ValueError(f"`compile_mode` must be None or a torch.compile mode name, got {compile_mode!r}.")
    disable_fast_inference(model)
    state = FastInference(model, dtype, compile, compile_mode, channels_last)
    model._fast_inference = state
    return state


def disable_fast_inference(model) -> None:
    """Undo :func:`enable_fast_inference`: the original weights (dtype, memory format, values)
    and the eager forward pass. Does nothing when fast inference is not enabled."""
    state = getattr(model, "_fast_inference", None)
    if state is not None:
        state.restore()
        model._fast_inference = None
