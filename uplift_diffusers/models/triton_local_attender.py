"""The Local Attender as one fused Triton kernel (CUDA).

One pass per output pixel: read its ``n`` logits, take the softmax in float32, gather the ``n``
neighbours of its parent pixel in the value (replicate padding = clamped coordinates) and write the
weighted sum. Only the output is allocated (no softmax weights, nothing of ``n`` times the output),
and it is written once instead of once per offset as in
:func:`~uplift_diffusers.models.local_attender.attend`. ``TRITON_INTERPRET=1`` (set before this
module is imported) runs it on CPU tensors, for the tests. This module imports Triton; import it
only where the kernel is wanted.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import triton
import triton.language as tl

#: Output pixels per program.
BLOCK_PIXELS = 128


@triton.jit
def _local_attention_kernel(
    logits_ptr, value_ptr, out_ptr, dy_ptr, dx_ptr,
    total, channels, height, width, out_height, out_width, scale, n,
    l_sb, l_sk, l_sh, l_sw,
    v_sb, v_sc, v_sh, v_sw,
    o_sb, o_sc, o_sh, o_sw,
    BLOCK: tl.constexpr, NP: tl.constexpr,
):
    pix = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    pixel_mask = pix < total
    ox = pix % out_width
    rest = pix // out_width
    oy = rest % out_height
    b = rest // out_height

    k = tl.arange(0, NP)
    k_mask = k < n
    mask = pixel_mask[:, None] & k_mask[None, :]

    # softmax over the n offsets, in float32
    logits = tl.load(
        logits_ptr + b[:, None] * l_sb + k[None, :] * l_sk + oy[:, None] * l_sh + ox[:, None] * l_sw,
        mask=mask, other=0.0,
    ).to(tl.float32)
    logits = tl.where(k_mask[None, :], logits, float("-inf"))
    exp = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    weights = exp / tl.sum(exp, axis=1)[:, None]

    # the neighbours of the parent pixel, clamped to the image (replicate padding)
    dy = tl.load(dy_ptr + k, mask=k_mask, other=0)
    dx = tl.load(dx_ptr + k, mask=k_mask, other=0)
    sy = tl.minimum(tl.maximum((oy // scale)[:, None] + dy[None, :], 0), height - 1)
    sx = tl.minimum(tl.maximum((ox // scale)[:, None] + dx[None, :], 0), width - 1)
    source = value_ptr + b[:, None] * v_sb + sy * v_sh + sx * v_sw
    target = out_ptr + b * o_sb + oy * o_sh + ox * o_sw
    for c in range(0, channels):
        value = tl.load(source + c * v_sc, mask=mask, other=0.0).to(tl.float32)
        mixed = tl.sum(weights * value, axis=1)
        tl.store(target + c * o_sc, mixed.to(out_ptr.dtype.element_ty), mask=pixel_mask)


def fused_local_attention(logits: torch.Tensor, value: torch.Tensor, offsets: Sequence[Tuple[int, int]], scale: int) -> torch.Tensor:
    """``attend(softmax(logits), value, offsets, padding, scale)`` in one kernel: logits ``B x n x sH x sW``
    and value ``B x C x H x W`` of any float dtypes and strides -> ``B x C x sH x sW``, contiguous,
    accumulated in float32, in the promoted dtype of the two (as
    :func:`~uplift_diffusers.models.local_attender.attend` gives)."""
    batch, channels, height, width = value.shape
    expected = (batch, len(offsets), height * scale, width * scale)
    # the kernel reads raw pointers: a wrong shape would read outside the tensors, silently
    if tuple(logits.shape) != expected or logits.device != value.device:
        raise ValueError(
            f"`logits` must be B x n x sH x sW = {expected} on {value.device} for a {tuple(value.shape)} value, "
            f"{len(offsets)} offsets and scale {scale}; got {tuple(logits.shape)} on {logits.device}."
        )
    dtype = torch.promote_types(logits.dtype, value.dtype)
    out = torch.empty(expected[:1] + (channels,) + expected[2:], dtype=dtype, device=value.device)
    dy, dx = torch.tensor(offsets, dtype=torch.int32, device=value.device).T.contiguous()
    total = batch * expected[2] * expected[3]
    grid = (triton.cdiv(total, BLOCK_PIXELS),)
    _local_attention_kernel[grid](
        logits, value, out, dy, dx,
        total, channels, height, width, expected[2], expected[3], scale, len(offsets),
        *logits.stride(), *value.stride(), *out.stride(),
        BLOCK=BLOCK_PIXELS, NP=triton.next_power_of_2(len(offsets)),
    )
    return out
