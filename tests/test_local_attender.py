"""Tests of the Local Attender against a plain reference formulation.

The reference below materialises all ``n`` shifted copies of the value at output resolution
(fine for the small sizes of a test) and reads the value with explicit clamped indices, which
is replication padding written out by hand. The production code must agree with it in values
and gradients, must never hold ``n`` times the output in memory, and must reject bad inputs.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from uplift_diffusers.models.local_attender import NEIGHBORHOODS, LocalAttender, attend, neighborhood_offsets


# The architecture doc's definitions, written out literally (row by row: dy, then dx, ascending).
DOC_OFFSETS = {
    5: [(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)],
    9: [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)],
    13: [
        (-2, 0),
        (-1, -1), (-1, 0), (-1, 1),
        (0, -2), (0, -1), (0, 0), (0, 1), (0, 2),
        (1, -1), (1, 0), (1, 1),
        (2, 0),
    ],
    17: [
        (-2, -2), (-2, 0), (-2, 2),
        (-1, -1), (-1, 0), (-1, 1),
        (0, -2), (0, -1), (0, 0), (0, 1), (0, 2),
        (1, -1), (1, 0), (1, 1),
        (2, -2), (2, 0), (2, 2),
    ],
    25: [(dy, dx) for dy in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2)],
}
DOC_PADDING = {5: 1, 9: 1, 13: 2, 17: 2, 25: 2}
EXPLICIT = [(0, 0), (-3, 1), (2, -1), (1, 3)]  # an irregular user-given neighbourhood (radius 3)


def reference_logits(attender: LocalAttender, guide: torch.Tensor) -> torch.Tensor:
    """Conv1x1 written as an einsum, plus the guide's first n channels (zero-padded if fewer)."""
    n = len(attender.offsets)
    weight = attender.to_logits.weight[:, :, 0, 0]
    logits = torch.einsum("kc,bchw->bkhw", weight, guide) + attender.to_logits.bias[None, :, None, None]
    residual = guide[:, :n]
    if residual.shape[1] < n:
        pad = guide.new_zeros(guide.shape[0], n - residual.shape[1], *guide.shape[-2:])
        residual = torch.cat([residual, pad], dim=1)
    return logits + residual


def reference_attend(weights: torch.Tensor, value: torch.Tensor, offsets, scale: int) -> torch.Tensor:
    """out[b, c, Y, X] = sum_k weights[b, k, Y, X] * value[b, c, clamp(Y//s + dy_k), clamp(X//s + dx_k)].

    Stacks all n gathered copies (B x n x C x sH x sW) before the weighted sum.
    """
    _, _, height, width = value.shape
    parent_y = torch.arange(height * scale) // scale
    parent_x = torch.arange(width * scale) // scale
    gathered = []
    for dy, dx in offsets:
        rows = (parent_y + dy).clamp(0, height - 1)
        cols = (parent_x + dx).clamp(0, width - 1)
        gathered.append(value[:, :, rows][:, :, :, cols])
    gathered = torch.stack(gathered, dim=1)
    return (weights[:, :, None] * gathered).sum(dim=1)


def reference_forward(attender: LocalAttender, guide: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    scale = guide.shape[-1] // value.shape[-1]
    weights = torch.softmax(reference_logits(attender, guide), dim=1)
    return reference_attend(weights, value, attender.offsets, scale)


def _inputs(batch, guide_channels, value_channels, height, width, scale, dtype):
    guide = torch.randn(batch, guide_channels, height * scale, width * scale, dtype=dtype, requires_grad=True)
    value = torch.randn(batch, value_channels, height, width, dtype=dtype, requires_grad=True)
    return guide, value


# ----------------------------------------------------------------------------- offsets
@pytest.mark.parametrize("n", [5, 9, 13, 17, 25])
def test_neighbourhood_offsets_follow_the_doc(n):
    assert neighborhood_offsets(n) == DOC_OFFSETS[n]
    assert NEIGHBORHOODS[n] == DOC_OFFSETS[n]
    attender = LocalAttender(32, n)
    assert attender.offsets == DOC_OFFSETS[n]
    assert len(attender.offsets) == n
    assert attender.padding == DOC_PADDING[n]
    assert tuple(attender.to_logits.weight.shape) == (n, 32, 1, 1)


def test_explicit_offsets_are_kept_in_order():
    attender = LocalAttender(8, [list(p) for p in EXPLICIT])
    assert attender.offsets == EXPLICIT
    assert attender.padding == 3
    assert len(attender.offsets) == 4


def test_neighbourhood_offsets_returns_a_copy():
    offsets = neighborhood_offsets(17)
    offsets.append((9, 9))
    assert neighborhood_offsets(17) == DOC_OFFSETS[17]


# ----------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("neighborhood", [5, 9, 13, 17, 25, "explicit"])
def test_matches_reference_values_and_gradients_float64(scale, neighborhood):
    neighborhood = EXPLICIT if neighborhood == "explicit" else neighborhood
    guide_channels = 20  # >= n for all but n = 25, which exercises the zero-padded residual
    attender = LocalAttender(guide_channels, neighborhood).double()
    with torch.no_grad():  # make the logits non-trivial (not just the default init)
        attender.to_logits.weight.normal_(0.0, 0.5)
        attender.to_logits.bias.normal_(0.0, 0.5)
    guide, value = _inputs(3, guide_channels, 3, 4, 5, scale, torch.float64)

    out = attender(guide, value)
    expected = reference_forward(attender, guide, value)
    assert out.shape == (3, 3, 4 * scale, 5 * scale)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)

    cotangent = torch.randn_like(out)
    params = [guide, value, attender.to_logits.weight, attender.to_logits.bias]
    grads = torch.autograd.grad((out * cotangent).sum(), params)
    expected_grads = torch.autograd.grad((expected * cotangent).sum(), params)
    for name, got, want in zip(["guide", "value", "conv weight", "conv bias"], grads, expected_grads):
        assert want.abs().max() > 0, name
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=f"gradient w.r.t. {name}")


def test_matches_reference_float32():
    attender = LocalAttender(24, 17)
    with torch.no_grad():
        attender.to_logits.weight.normal_(0.0, 0.3)
    guide, value = _inputs(3, 24, 4, 6, 9, 2, torch.float32)
    out = attender(guide, value)
    expected = reference_forward(attender, guide, value)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    cotangent = torch.randn_like(out)
    params = [guide, value, attender.to_logits.weight, attender.to_logits.bias]
    grads = torch.autograd.grad((out * cotangent).sum(), params)
    expected_grads = torch.autograd.grad((expected * cotangent).sum(), params)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    attender = LocalAttender(6, 9).double()
    guide, value = _inputs(1, 6, 2, 2, 3, 2, torch.float64)
    assert torch.autograd.gradcheck(attender, (guide, value), fast_mode=True)


def test_attend_function_matches_reference():
    weights = torch.softmax(torch.randn(2, 13, 8, 12, dtype=torch.float64), dim=1)
    value = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    out = attend(weights, value, DOC_OFFSETS[13], 2, 2)
    torch.testing.assert_close(out, reference_attend(weights, value, DOC_OFFSETS[13], 2), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- borders
def _one_hot_attender(neighborhood, k: int, guide_channels: int = 4) -> LocalAttender:
    """An attender whose softmax puts (numerically) all weight on offset k when the guide is zero."""
    attender = LocalAttender(guide_channels, neighborhood).double()
    with torch.no_grad():
        attender.to_logits.weight.zero_()
        attender.to_logits.bias.fill_(-200.0)
        attender.to_logits.bias[k] = 200.0
    return attender


@pytest.mark.parametrize("k", range(17))
def test_replication_padding_at_the_borders(k):
    """With all weight on one offset, the output is the value shifted by it, clamped at the border."""
    dy, dx = DOC_OFFSETS[17][k]
    height, width, scale = 4, 5, 2
    ys = torch.arange(height, dtype=torch.float64)[:, None]
    xs = torch.arange(width, dtype=torch.float64)[None, :]
    value = (1.0 + 10.0 * ys + xs)[None, None].expand(1, 2, height, width).clone()  # 1 + 10 y + x, never 0
    value[:, 1] *= -1.0
    attender = _one_hot_attender(17, k)
    guide = torch.zeros(1, 4, height * scale, width * scale, dtype=torch.float64)
    out = attender(guide, value)
    for y in range(height * scale):
        for x in range(width * scale):
            src_y = min(max(y // scale + dy, 0), height - 1)
            src_x = min(max(x // scale + dx, 0), width - 1)
            expected = 1.0 + 10.0 * src_y + src_x
            assert out[0, 0, y, x].item() == pytest.approx(expected, abs=1e-12), (y, x)
            assert out[0, 1, y, x].item() == pytest.approx(-expected, abs=1e-12), (y, x)


def test_constant_border_is_read_from_the_border_not_from_zeros():
    """A value map whose outer ring is a constant c: output pixels whose parent lies on the ring
    and whose weights all point outwards read exactly c (zero padding would give a mix with 0)."""
    value = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    value[:, :, 0, :] = value[:, :, -1, :] = value[:, :, :, 0] = value[:, :, :, -1] = 2.5
    attender = _one_hot_attender(17, 0)  # offset (-2, -2): outwards at the top-left
    out = attender(torch.zeros(1, 4, 12, 12, dtype=torch.float64), value)
    # parents (0..1, any) and (any, 0..1) read row/column 0 after clamping: all 2.5
    torch.testing.assert_close(out[:, :, :4, :], torch.full_like(out[:, :, :4, :], 2.5), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[:, :, :, :4], torch.full_like(out[:, :, :, :4], 2.5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("neighborhood", [5, 9, 13, 17, 25, "explicit"])
def test_constant_value_is_preserved(neighborhood):
    """A convex combination of a constant map is that constant everywhere, borders included."""
    neighborhood = EXPLICIT if neighborhood == "explicit" else neighborhood
    attender = LocalAttender(8, neighborhood).double()
    with torch.no_grad():
        attender.to_logits.weight.normal_()
    value = torch.full((2, 3, 5, 4), -1.75, dtype=torch.float64)
    out = attender(torch.randn(2, 8, 10, 8, dtype=torch.float64), value)
    torch.testing.assert_close(out, torch.full_like(out, -1.75), rtol=0, atol=1e-12)


def test_scale_one_centre_offset_is_identity():
    attender = _one_hot_attender(9, DOC_OFFSETS[9].index((0, 0)))
    value = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    out = attender(torch.zeros(2, 4, 5, 6, dtype=torch.float64), value)
    torch.testing.assert_close(out, value, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- memory
class _LargestAllocation(TorchDispatchMode):
    """Records the largest storage of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.largest_op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for tensor in outputs:
            if isinstance(tensor, torch.Tensor):
                size = tensor.untyped_storage().nbytes()
                if size > self.largest:
                    self.largest, self.largest_op = size, str(func)
        return result


def _allocation_trace(fn):
    """(peak of live bytes allocated during fn, largest single allocation) from the CPU profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = largest = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
        largest = max(largest, event.nbytes())
    return result, peak, largest, live


@pytest.mark.parametrize("grad_enabled", [False, True])
def test_forward_never_materialises_n_times_the_output(grad_enabled):
    n, channels = 17, 64
    attender = LocalAttender(channels, n)
    guide = torch.randn(1, channels, 64, 64)
    value = torch.randn(1, channels, 32, 32)
    out_bytes = channels * 64 * 64 * 4
    inputs_bytes = guide.nbytes + value.nbytes
    with torch.set_grad_enabled(grad_enabled):
        attender(guide, value)  # warm-up (lazy initialisation outside the measurement)
        with _LargestAllocation() as mode:
            attender(guide, value)
        out, peak, largest, live = _allocation_trace(lambda: attender(guide, value))
    assert out.shape == (1, channels, 64, 64)
    biggest_allowed = max(guide.nbytes, value.nbytes, out_bytes)
    assert mode.largest <= biggest_allowed, f"{mode.largest_op} returned a {mode.largest} byte tensor"
    assert largest <= biggest_allowed, f"single allocation of {largest} bytes (allowed {biggest_allowed})"
    # extra memory at the peak: inputs plus about one output (n x output would be 17x that)
    assert peak <= inputs_bytes + 1.1 * out_bytes, f"peak {peak} bytes, inputs {inputs_bytes}, output {out_bytes}"
    assert peak < n * out_bytes / 4
    if not grad_enabled:
        assert live == out_bytes  # only the output survives the call


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "neighborhood, match",
    [
        (7, "`neighborhood` must be one of .* got 7"),
        (0, "`neighborhood` must be one of"),
        (True, "`neighborhood`"),
        ([], "`neighborhood` must be one of .* or a non-empty list .*got \\[\\]"),
        ([(0, 0), (1, 1, 1)], "`neighborhood` must be one of .* non-empty list of distinct \\(dy, dx\\) pairs"),
        ([(0, 0), (1, 0), (0, 0)], "`neighborhood` must be .* list of distinct \\(dy, dx\\) pairs.*got \\[\\(0, 0\\), \\(1, 0\\), \\(0, 0\\)\\]"),
        ("17", "`neighborhood`"),
        (3.5, "`neighborhood`"),
    ],
)
def test_bad_neighbourhood(neighborhood, match):
    with pytest.raises(ValueError, match=match):
        LocalAttender(16, neighborhood)
    with pytest.raises(ValueError, match=match):
        neighborhood_offsets(neighborhood)


@pytest.mark.parametrize("guide_channels", [0, -3, 2.0, "16"])
def test_bad_guide_channels_argument(guide_channels):
    with pytest.raises(ValueError, match="`guide_channels` must be a positive int"):
        LocalAttender(guide_channels, 9)


@pytest.mark.parametrize(
    "guide_shape, value_shape, match",
    [
        ((2, 12, 8, 8), (2, 3, 4, 4), r"`guide` must be B x 16 x sH x sW .*got \(2, 12, 8, 8\)"),
        ((2, 16, 10, 8), (2, 3, 4, 4), r"`guide` must be B x 16 x sH x sW for the value \(2, 3, 4, 4\), one integer s >= 1 .*got \(2, 16, 10, 8\)"),
        ((2, 16, 8, 12), (2, 3, 4, 4), r"`guide` must be .*got \(2, 16, 8, 12\)"),  # s differs per axis
        ((2, 16, 2, 2), (2, 3, 4, 4), r"`guide` must be .*got \(2, 16, 2, 2\)"),  # smaller than value
        ((2, 16, 8, 8), (3, 3, 4, 4), r"`guide` must be .*e.g. \(3, 16, 8, 8\) for s = 2\), got \(2, 16, 8, 8\)"),
        ((16, 8, 8), (2, 3, 4, 4), r"`guide` must be B x 16 x sH x sW .*got \(16, 8, 8\)"),
        ((2, 16, 8, 8), (3, 4, 4), r"`value` must be a non-empty 4-D tensor B x C x H x W, got \(3, 4, 4\)"),
        ((2, 16, 8, 8, 1), (2, 3, 4, 4), r"`guide` must be .*got \(2, 16, 8, 8, 1\)"),
    ],
)
def test_bad_forward_inputs(guide_shape, value_shape, match):
    attender = LocalAttender(16, 9)
    with pytest.raises(ValueError, match=match):
        attender(torch.randn(guide_shape), torch.randn(value_shape))


def test_non_tensor_inputs():
    attender = LocalAttender(16, 9)
    with pytest.raises(ValueError, match="`value` must be a non-empty 4-D tensor .*got list"):
        attender(torch.randn(1, 16, 4, 4), [[1.0]])
