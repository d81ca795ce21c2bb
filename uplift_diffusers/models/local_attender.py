"""The Local Attender: UPLiFT's last operator.

Every output pixel is re-expressed as a softmax-weighted mix of a fixed neighbourhood of
input pixels. The guide (high resolution features) predicts, per output pixel, one logit per
neighbourhood offset; the value (low resolution latents) is read at those offsets around the
output pixel's parent. Because the output is a convex combination of input latents, the
latent distribution is kept intact.

The computation loops over the offsets and accumulates into the output in place, so it
never holds a tensor of ``n`` times the output size: peak extra memory is the attention
weights (``n`` channels at output resolution, no larger than the guide when ``n`` does not
exceed its channel count) plus one output.
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

Offsets = List[Tuple[int, int]]

#: The paper's neighbourhoods, listed row by row (dy, then dx, ascending).
NEIGHBORHOODS = {
    5: [(dy, dx) for dy in range(-1, 2) for dx in range(-1, 2) if abs(dy) + abs(dx) <= 1],
    9: [(dy, dx) for dy in range(-1, 2) for dx in range(-1, 2)],
    13: [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if abs(dy) + abs(dx) <= 2],
    17: [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if {abs(dy), abs(dx)} != {1, 2}],  # 5x5 minus knight moves
    25: [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)],
}


def neighborhood_offsets(neighborhood: Union[int, Sequence[Sequence[int]]]) -> Offsets:
    """Return the list of (dy, dx) offsets for a neighbourhood size or an explicit list."""
    if isinstance(neighborhood, int) and neighborhood in NEIGHBORHOODS:  # True == 1 is not a key either
        return list(NEIGHBORHOODS[neighborhood])
    try:
        offsets = [tuple(int(v) for v in pair) for pair in neighborhood]
    except (TypeError, ValueError):  # not a list of integer pairs
        offsets = []
    if not offsets or any(len(pair) != 2 for pair in offsets) or len(set(offsets)) != len(offsets):
        raise ValueError(
            f"`neighborhood` must be one of {sorted(NEIGHBORHOODS)} or a non-empty list of distinct (dy, dx) pairs "
            f"of ints, got {neighborhood!r}."
        )
    return offsets


#: Whether the ``triton`` package can be imported (it is not imported here).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def channel_residual(x: torch.Tensor, channels: int) -> torch.Tensor:
    """UPLiFT's residual rule for mismatched widths: keep the first ``channels`` channels
    of ``x`` when it has more, zero-pad at the end when it has fewer."""
    if x.shape[1] >= channels:
        return x[:, :channels]
    return F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))


class LocalAttender(nn.Module):
    """Softmax-weighted mix of a fixed ``neighborhood`` of ``value`` pixels, guided by ``guide``:
    5, 9, 13, 17 or 25 (the paper's shapes) or an explicit list of (dy, dx) offsets.

    ``forward(guide, value)``: guide ``B x Cg x sH x sW``, value ``B x Cv x H x W`` for any
    integer ``s >= 1`` -> ``B x Cv x sH x sW``. The value is replication-padded. How it is
    computed is the ``processor``'s choice (:meth:`set_processor`), as with diffusers' attention
    processors.
    """

    def __init__(self, guide_channels: int, neighborhood: Union[int, Sequence[Sequence[int]]] = 17):
        super().__init__()
        if not isinstance(guide_channels, int) or guide_channels < 1:
            raise ValueError(f"`guide_channels` must be a positive int, got {guide_channels!r}.")
        self.offsets = neighborhood_offsets(neighborhood)
        self.padding = max(max(abs(dy), abs(dx)) for dy, dx in self.offsets)
        self.to_logits = nn.Conv2d(guide_channels, len(self.offsets), kernel_size=1)
        self.processor = AutoLocalAttenderProcessor()

    def logits(self, guide: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits over the neighbourhood, ``B x n x sH x sW``: a 1x1 convolution
        plus the guide's first ``n`` channels."""
        return self.to_logits(guide) + channel_residual(guide, len(self.offsets))

    def attention(self, guide: torch.Tensor) -> torch.Tensor:
        """Per-pixel softmax weights over the neighbourhood, ``B x n x sH x sW``."""
        logits = self.logits(guide)
        # at least float32 for the softmax (half precision is upcast; float64 stays float64)
        softmax_dtype = torch.promote_types(logits.dtype, torch.float32)
        return torch.softmax(logits, dim=1, dtype=softmax_dtype).to(logits.dtype)

    def set_processor(self, processor: "LocalAttenderProcessor") -> None:
        """Choose how the operator is computed: :class:`LocalAttenderProcessor` (PyTorch),
        :class:`FusedLocalAttenderProcessor` (Triton, CUDA, errors raised) or
        :class:`AutoLocalAttenderProcessor` (the default)."""
        if not callable(processor):
            raise ValueError(f"`processor` must be callable as processor(attender, guide, value, scale), got {processor!r}.")
        self.processor = processor

    def forward(self, guide: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.ndim != 4 or min(value.shape[-2:]) < 1:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"`value` must be a non-empty 4-D tensor B x C x H x W, got {got}.")
        batch, _, height, width = value.shape
        scale = guide.shape[-2] // height if isinstance(guide, torch.Tensor) and guide.ndim == 4 else 0
        channels = self.to_logits.in_channels
        if scale < 1 or guide.shape != (batch, channels, scale * height, scale * width):
            got = tuple(guide.shape) if isinstance(guide, torch.Tensor) else type(guide).__name__
            raise ValueError(
                f"`guide` must be B x {channels} x sH x sW for the value {tuple(value.shape)}, one integer s >= 1 for "
                f"both sides (e.g. {(batch, channels, 2 * height, 2 * width)} for s = 2), got {got}."
            )
        return self.processor(self, guide, value, scale)


# =============================================================================== processors
class LocalAttenderProcessor:
    """The PyTorch formulation: softmax weights, then :func:`attend` (offset by offset, in place)."""

    def __call__(self, attender: LocalAttender, guide: torch.Tensor, value: torch.Tensor, scale: int) -> torch.Tensor:
        return attend(attender.attention(guide), value, attender.offsets, attender.padding, scale)


class FusedLocalAttenderProcessor:
    """Softmax and mix in one Triton kernel (:mod:`uplift_diffusers.models.triton_local_attender`),
    allocating only the output. CUDA tensors (or ``TRITON_INTERPRET=1`` on CPU); no gradient."""

    def __call__(self, attender: LocalAttender, guide: torch.Tensor, value: torch.Tensor, scale: int) -> torch.Tensor:
        from .triton_local_attender import fused_local_attention

        return fused_local_attention(attender.logits(guide), value, attender.offsets, scale)


class AutoLocalAttenderProcessor:
    """The default: the fused kernel for CUDA tensors when Triton is installed, no gradient is
    needed and ``torch.compile`` is not tracing (it fuses the PyTorch form itself); PyTorch
    everywhere else. If the kernel fails (Triton / driver), one ``RuntimeWarning`` and PyTorch
    from then on: never a crash."""

    kernel_failed = False

    def use_fused(self, attender: LocalAttender, guide: torch.Tensor, value: torch.Tensor) -> bool:
        if self.kernel_failed or torch.compiler.is_compiling() or not (value.is_cuda and guide.is_cuda):
            return False
        if torch.is_grad_enabled() and (guide.requires_grad or value.requires_grad or any(p.requires_grad for p in attender.parameters())):
            return False
        return TRITON_INSTALLED

    def __call__(self, attender: LocalAttender, guide: torch.Tensor, value: torch.Tensor, scale: int) -> torch.Tensor:
        if self.use_fused(attender, guide, value):
            try:
                return FusedLocalAttenderProcessor()(attender, guide, value, scale)
            except Exception as error:  # a Triton / driver failure: never a crash
                warnings.warn(
                    f"The fused Triton Local Attender failed ({type(error).__name__}: {str(error)[:300]}); "
                    "using the PyTorch formulation from now on. Call `set_processor(LocalAttenderProcessor())` to skip it.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.kernel_failed = True
        return LocalAttenderProcessor()(attender, guide, value, scale)


def attend(weights: torch.Tensor, value: torch.Tensor, offsets: Offsets, padding: int, scale: int) -> torch.Tensor:
    """``out[:, :, s*y+i, s*x+j] = sum_k weights[:, k, s*y+i, s*x+j] * value_pad[:, :, y+dy_k, x+dx_k]``,
    accumulated one offset at a time into a ``B x C x H x s x W x s`` view of the output, so that nothing
    of ``n`` times the output size is ever held (the module's memory note)."""
    batch, channels, height, width = value.shape
    padded = F.pad(value, (padding,) * 4, mode="replicate") if padding else value
    out = value.new_zeros(batch, channels, height * scale, width * scale, dtype=torch.promote_types(weights.dtype, value.dtype))
    out_view = out.view(batch, channels, height, scale, width, scale)
    weights_view = weights.reshape(batch, len(offsets), 1, height, scale, width, scale)
    for k, (dy, dx) in enumerate(offsets):
        shifted = padded[:, :, padding + dy : padding + dy + height, padding + dx : padding + dx + width]
        out_view.addcmul_(weights_view[:, k], shifted[:, :, :, None, :, None])
    return out
