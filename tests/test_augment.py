"""DiffAugment: formulas against direct per-sample computations, integer shifts against a loop, gradients."""

import pytest
import torch

from fsgan_fast.augment import (
    DIFF_AUGMENT_POLICIES,
    AugmentStep,
    DiffAugment,
    apply_diff_augment,
    brightness,
    contrast,
    cutout,
    diff_augment,
    draw_diff_augment,
    parse_policy,
    saturation,
    translation,
)

# Minimum-ish, square, odd and non-square (prime) sizes.
SHAPES = [(1, 3, 8, 8), (2, 3, 32, 32), (3, 3, 17, 23), (2, 1, 13, 31)]
POLICIES = ["color", "translation", "cutout", "color,translation", "color,translation,cutout"]


def make_inputs(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _loop_translation(x, shift):
    out = torch.zeros_like(x)
    _, _, H, W = x.shape
    for b in range(x.shape[0]):
        dy, dx = int(shift[b, 0]), int(shift[b, 1])
        for i in range(H):
            for j in range(W):
                if 0 <= i + dy < H and 0 <= j + dx < W:
                    out[b, :, i, j] = x[b, :, i + dy, j + dx]
    return out


def _loop_cutout(x, centre):
    # The reference's construction: a k x k grid of indices around the centre, clamped into the image, zeroed.
    out = x.clone()
    _, _, H, W = x.shape
    kh, kw = int(H * 0.5 + 0.5), int(W * 0.5 + 0.5)
    for b in range(x.shape[0]):
        for a in range(kh):
            for c in range(kw):
                i = min(max(int(centre[b, 0]) + a - kh // 2, 0), H - 1)
                j = min(max(int(centre[b, 1]) + c - kw // 2, 0), W - 1)
                out[b, :, i, j] = 0
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("policy", POLICIES)
def test_diff_augment_changes_images_keeps_shape(shape, policy):
    x = make_inputs(shape)
    # Seeds that draw at least one non-zero shift: a 0-shift translation is the identity.
    y = diff_augment(x, policy, generator=gen(3))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all()
    assert not torch.equal(y, x)


@pytest.mark.parametrize("policy", POLICIES)
def test_diff_augment_differentiable(policy):
    x = make_inputs((2, 3, 32, 32)).requires_grad_()
    y = diff_augment(x, policy, generator=gen(1))
    (y * make_inputs(y.shape, seed=9)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_diff_augment_gradcheck(policy):
    x = make_inputs((2, 3, 8, 9), dtype=torch.float64).requires_grad_()
    steps = draw_diff_augment(x, policy, generator=gen(5))
    assert torch.autograd.gradcheck(lambda v: apply_diff_augment(v, steps), (x,))


def test_diff_augment_draw_then_apply_is_diff_augment():
    x = make_inputs((4, 3, 16, 16))
    steps = draw_diff_augment(x, "color,translation,cutout", generator=gen(7))
    assert [s.op for s in steps] == ["brightness", "saturation", "contrast", "translation", "cutout"]
    torch.testing.assert_close(
        apply_diff_augment(x, steps), diff_augment(x, "color,translation,cutout", generator=gen(7)), rtol=0, atol=0
    )


def test_diff_augment_reproducible_with_generator():
    x = make_inputs((4, 3, 16, 16))
    a = diff_augment(x, "color,translation,cutout", generator=gen(11))
    b = diff_augment(x, "color,translation,cutout", generator=gen(11))
    c = diff_augment(x, "color,translation,cutout", generator=gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_diff_augment_module_matches_function():
    x = make_inputs((3, 3, 16, 16))
    module = DiffAugment("color, translation")
    assert module.policy == ("color", "translation")
    assert "color,translation" in repr(module)
    expected = diff_augment(x, "color,translation", generator=gen(2))
    torch.testing.assert_close(module(x, gen(2)), expected, rtol=0, atol=0)


def test_diff_augment_empty_policy_is_identity():
    x = make_inputs((2, 3, 8, 8))
    assert draw_diff_augment(x, "") == ()
    assert torch.equal(diff_augment(x, ""), x)
    assert torch.equal(diff_augment(x, []), x)


def test_diff_augment_policy_as_sequence():
    x = make_inputs((2, 3, 16, 16))
    torch.testing.assert_close(
        diff_augment(x, ["color", "cutout"], generator=gen(4)),
        diff_augment(x, "color,cutout", generator=gen(4)),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("policy", ["colour", "color,flip", "color,,translation", "Color"])
def test_diff_augment_bad_policy_raises(policy):
    x = make_inputs((2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"valid names are \['color', 'translation', 'cutout'\]"):
        diff_augment(x, policy)
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        DiffAugment(policy)


def test_diff_augment_bad_inputs_raise():
    with pytest.raises(TypeError, match="policy must be"):
        parse_policy(3)
    with pytest.raises(ValueError, match="4-D"):
        diff_augment(make_inputs((3, 8, 8)))
    with pytest.raises(TypeError, match="floating"):
        diff_augment(torch.zeros(2, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown DiffAugment op"):
        apply_diff_augment(make_inputs((1, 3, 8, 8)), [AugmentStep("flip", torch.zeros(1))])
    with pytest.raises(ValueError, match="integer tensor of shape"):
        translation(make_inputs((2, 3, 8, 8)), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        cutout(make_inputs((2, 3, 8, 8)), torch.zeros(3, 2, dtype=torch.int64))


def test_policies_constant():
    assert DIFF_AUGMENT_POLICIES == ("color", "translation", "cutout")


def test_brightness_formula():
    x = make_inputs((3, 3, 8, 8), dtype=torch.float64)
    (step,) = draw_diff_augment(x, "color", generator=gen(1))[:1]
    assert step.op == "brightness" and step.draw.shape == (3,)
    expected = torch.stack([x[b] + step.draw[b] for b in range(3)])
    torch.testing.assert_close(brightness(x, step.draw), expected, rtol=0, atol=1e-15)


def test_saturation_formula():
    x = make_inputs((3, 3, 8, 8), dtype=torch.float64)
    factor = torch.tensor([0.0, 0.7, 1.9], dtype=torch.float64)
    expected = torch.empty_like(x)
    for b in range(3):
        m = (x[b, 0] + x[b, 1] + x[b, 2]) / 3  # per-pixel mean over channels
        expected[b] = (x[b] - m) * factor[b] + m
    torch.testing.assert_close(saturation(x, factor), expected, rtol=0, atol=1e-14)
    # factor 0 is greyscale: every channel equals the channel mean.
    assert torch.allclose(saturation(x, factor)[0], x[0].mean(0).expand(3, -1, -1))


def test_contrast_formula():
    x = make_inputs((3, 3, 8, 8), dtype=torch.float64)
    factor = torch.tensor([0.5, 1.0, 1.49], dtype=torch.float64)
    expected = torch.stack([(x[b] - x[b].mean()) * factor[b] + x[b].mean() for b in range(3)])
    torch.testing.assert_close(contrast(x, factor), expected, rtol=0, atol=1e-14)


def test_color_ops_in_order():
    x = make_inputs((4, 3, 8, 8), dtype=torch.float64)
    b, s, c = draw_diff_augment(x, "color", generator=gen(6))
    expected = contrast(saturation(brightness(x, b.draw), s.draw), c.draw)
    torch.testing.assert_close(diff_augment(x, "color", generator=gen(6)), expected, rtol=0, atol=0)


def test_draw_ranges():
    x = make_inputs((4000, 1, 32, 40))
    steps = {s.op: s.draw for s in draw_diff_augment(x, "color,translation,cutout", generator=gen(0))}
    assert steps["brightness"].dtype == x.dtype
    assert -0.5 <= steps["brightness"].min() and steps["brightness"].max() < 0.5
    assert 0 <= steps["saturation"].min() and steps["saturation"].max() < 2
    assert 0.5 <= steps["contrast"].min() and steps["contrast"].max() < 1.5
    shift = steps["translation"]
    assert shift.dtype == torch.int64 and shift.shape == (4000, 2)
    # int(32 * 0.125 + 0.5) = 4, int(40 * 0.125 + 0.5) = 5; both ends are reachable.
    assert shift[:, 0].min() == -4 and shift[:, 0].max() == 4
    assert shift[:, 1].min() == -5 and shift[:, 1].max() == 5
    centre = steps["cutout"]
    # Sides 16 and 20 are even, so centres span [0, H] and [0, W].
    assert centre[:, 0].min() == 0 and centre[:, 0].max() == 32
    assert centre[:, 1].min() == 0 and centre[:, 1].max() == 40


def test_cutout_odd_side_centre_range():
    x = make_inputs((4000, 1, 10, 10))  # side int(5.5) = 5, odd
    (step,) = draw_diff_augment(x, "cutout", generator=gen(0))
    assert step.draw.min() == 0 and step.draw.max() == 9


@pytest.mark.parametrize("shape", SHAPES)
def test_translation_matches_loop(shape):
    x = make_inputs(shape)
    (step,) = draw_diff_augment(x, "translation", generator=gen(2))
    out = translation(x, step.draw)
    assert torch.equal(out, _loop_translation(x, step.draw))


def test_translation_extreme_shifts_zero_fill():
    x = make_inputs((6, 2, 7, 9))
    shift = torch.tensor([[0, 0], [7, 0], [0, -9], [-20, 30], [6, -8], [-3, 2]])
    out = translation(x, shift)
    assert torch.equal(out, _loop_translation(x, shift))
    assert torch.equal(out[0], x[0])
    assert (out[1:4] == 0).all()
    assert torch.equal(out[4, :, 0, 8], x[4, :, 6, 0]) and (out[4, :, 1:] == 0).all()


def test_translation_keeps_values_exactly_channels_last():
    x = make_inputs((3, 3, 16, 16)).to(memory_format=torch.channels_last)
    shift = torch.tensor([[1, -2], [-2, 2], [2, 0]])
    assert torch.equal(translation(x, shift), _loop_translation(x.contiguous(), shift))


def test_translation_gradient_is_shifted_mask():
    x = make_inputs((2, 1, 6, 6)).requires_grad_()
    shift = torch.tensor([[2, -1], [0, 3]])
    translation(x, shift).sum().backward()
    # Every source pixel that lands inside the image gets gradient 1, the rest 0.
    expected = _loop_translation(torch.ones(2, 1, 6, 6), -shift)
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_cutout_matches_reference_construction(shape):
    x = make_inputs(shape)
    (step,) = draw_diff_augment(x, "cutout", generator=gen(4))
    assert torch.equal(cutout(x, step.draw), _loop_cutout(x, step.draw))


def test_cutout_corners_and_edges():
    x = make_inputs((4, 3, 9, 12))
    centre = torch.tensor([[0, 0], [8, 12], [4, 6], [0, 11]])
    assert torch.equal(cutout(x, centre), _loop_cutout(x, centre))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_diff_augment_keeps_dtype(dtype):
    x = make_inputs((2, 3, 16, 16), dtype=dtype)
    y = diff_augment(x, "color,translation,cutout", generator=gen(0))
    assert y.dtype == dtype and torch.isfinite(y).all()
