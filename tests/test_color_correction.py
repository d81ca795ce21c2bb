"""color_correct: per-channel mean shift in pixel space."""
import pytest
import torch

from uplift_diffusers.utils.color_correction import color_correct


def test_means_match_reference_without_clamping():
    generator = torch.Generator().manual_seed(0)
    image = 0.3 + 0.4 * torch.rand(2, 3, 32, 48, generator=generator)  # [0.3, 0.7]
    reference = 0.4 + 0.2 * torch.rand(2, 3, 8, 12, generator=generator)  # other size, [0.4, 0.6]
    out = color_correct(image, reference)
    assert out.shape == image.shape and out.dtype == image.dtype
    torch.testing.assert_close(out.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-6, rtol=0)
    # a pure shift: the per-channel differences to the input are constant
    shift = out - image
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6, rtol=0)


def test_exact_numbers_per_image_and_channel():
    image = torch.full((2, 3, 2, 2), 0.5)
    image[1] = 0.2
    reference = torch.tensor([[0.6, 0.5, 0.4], [0.2, 0.3, 0.1]])[:, :, None, None].expand(2, 3, 4, 4)
    out = color_correct(image, reference)
    expected = torch.tensor([[0.6, 0.5, 0.4], [0.2, 0.3, 0.1]])[:, :, None, None].expand(2, 3, 2, 2)
    torch.testing.assert_close(out, expected)


def test_clamps_to_unit_range():
    image = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()  # mean 0.5
    reference = torch.full((1, 3, 1, 1), 0.9)
    out = color_correct(image, reference)
    # shifted by +0.4: [0.4, 1.4] -> clamped to [0.4, 1.0]
    torch.testing.assert_close(out, torch.tensor([0.4, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2))


def test_half_precision_keeps_dtype():
    image = torch.full((1, 3, 4, 4), 0.25, dtype=torch.float16)
    reference = torch.full((1, 3, 2, 2), 0.5, dtype=torch.float16)
    out = color_correct(image, reference)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.full((1, 3, 4, 4), 0.5))


@pytest.mark.parametrize(
    "image, reference, match",
    [
        (torch.rand(3, 8, 8), torch.rand(1, 3, 8, 8), "`image` must have shape B x 3"),
        (torch.rand(1, 4, 8, 8), torch.rand(1, 3, 8, 8), "`image` must have 3 channels, got 4"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8), "`reference` must have 3 channels, got 1"),
        (torch.rand(2, 3, 8, 8), torch.rand(1, 3, 8, 8), "`reference` has batch size 1, expected 2"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.rand(1, 3, 8, 8), "floating-point"),
        (torch.rand(1, 3, 0, 8), torch.rand(1, 3, 8, 8), "empty"),
        (torch.full((1, 3, 2, 2), float("nan")), torch.rand(1, 3, 8, 8), "NaN"),
        (torch.rand(1, 3, 8, 8) * 2 - 1.5, torch.rand(1, 3, 8, 8), r"\[0, 1\]"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8) * 255, r"\[0, 1\]"),
        ([[0.5]], torch.rand(1, 3, 8, 8), "torch.Tensor"),
    ],
)
def test_validation(image, reference, match):
    with pytest.raises(ValueError, match=match):
        color_correct(image, reference)
