"""DiffAugment (Zhao et al. 2020), as FastGAN applies it to every image its discriminator sees.

Contract for ``diff_augment(x, policy, generator=generator)``:

1. ``x [B, C, H, W]`` is a floating tensor, nominally in ``[-1, 1]``; the result has the same shape, dtype and
   device, and every op is differentiable w.r.t. ``x``.
2. ``policy`` is a comma-separated string (or a sequence) of names from :data:`DIFF_AUGMENT_POLICIES`, applied in
   the order given; ``""`` is the identity. FastGAN uses ``"color,translation"`` (ALGORITHMS.md §2).
3. Each name expands to ops, each with its own per-sample draw (:func:`draw_diff_augment`):

   - ``color`` = brightness, saturation, contrast, in that order:
     - brightness: ``x + b`` with ``b ~ U(-0.5, 0.5)``;
     - saturation: ``(x - m) * s + m`` with ``m`` the mean over channels at each pixel and ``s ~ U(0, 2)``;
     - contrast: ``(x - m) * c + m`` with ``m`` the mean of the whole image and ``c ~ U(0.5, 1.5)``;
   - ``translation``: ``out[..., i, j] = x[..., i + dy, j + dx]``, zero where that falls outside the image, with
     integers ``dy`` in ``[-r_h, r_h]``, ``dx`` in ``[-r_w, r_w]`` and ``r = int(0.125 * size + 0.5)``;
   - ``cutout``: zeroes the square of side ``k = int(0.5 * size + 0.5)`` whose rows are
     ``[cy - k_h // 2, cy - k_h // 2 + k_h)`` (likewise columns), clipped to the image, with integer centres
     ``cy`` in ``[0, H - k_h % 2]`` (likewise ``cx``).

The ranges are those of the reference code. The draws come from ``generator`` (a ``torch.Generator`` on
``x``'s device) when one is given, else from the global RNG. :func:`draw_diff_augment` and
:func:`apply_diff_augment` split the two halves, so the same draws can be replayed or checked.

Errors: an unknown policy name raises ``ValueError`` listing the valid ones; a non-4-D or non-floating ``x``
raises ``ValueError`` / ``TypeError``; a generator on another device type raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

DIFF_AUGMENT_POLICIES = ("color", "translation", "cutout")
_POLICY_OPS = {
    "color": ("brightness", "saturation", "contrast"),
    "translation": ("translation",),
    "cutout": ("cutout",),
}
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


@dataclass(frozen=True)
class AugmentStep:
    """One op of a drawn policy: ``op`` names it, ``draw`` holds its per-sample parameters.

    ``draw`` is ``[B]`` in ``x``'s dtype for brightness (the offset), saturation and contrast (the factors), and
    ``[B, 2]`` int64 for translation (``dy, dx``) and cutout (the centre ``cy, cx``).
    """

    op: str
    draw: Tensor


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """The policy names, stripped and validated; ``""`` or ``()`` gives ``()``."""
    if isinstance(policy, str):
        names = [p.strip() for p in policy.split(",")] if policy.strip() else []
    elif isinstance(policy, Sequence) and all(isinstance(p, str) for p in policy):
        names = [p.strip() for p in policy]
    else:
        raise TypeError(f"policy must be a comma-separated string or a sequence of strings, got {policy!r}")
    bad = [p for p in names if p not in _POLICY_OPS]
    if bad:
        raise ValueError(
            f"unknown DiffAugment policy name(s) {bad} in {policy!r}; valid names are {list(DIFF_AUGMENT_POLICIES)} "
            "(comma-separated, e.g. 'color,translation')"
        )
    return tuple(names)


def _check_input(x: object, generator: torch.Generator | None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [B, C, H, W], got {x.dim()}-D shape {list(x.shape)}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device} but x is on {x.device}; create it on x's device")


def _shift_radius(size: int) -> int:
    return int(size * TRANSLATION_RATIO + 0.5)


def _cutout_side(size: int) -> int:
    return int(size * CUTOUT_RATIO + 0.5)


def draw_diff_augment(
    x: Tensor, policy: str | Sequence[str] = "color,translation", *, generator: torch.Generator | None = None
) -> tuple[AugmentStep, ...]:
    """Draw the per-sample parameters of ``policy`` for a batch shaped like ``x`` (see the module docstring)."""
    _check_input(x, generator)
    B, _, H, W = x.shape
    rand = dict(device=x.device, generator=generator)
    steps = []
    for name in parse_policy(policy):
        for op in _POLICY_OPS[name]:
            if op == "brightness":
                draw = torch.rand(B, dtype=x.dtype, **rand) - 0.5
            elif op == "saturation":
                draw = torch.rand(B, dtype=x.dtype, **rand) * 2
            elif op == "contrast":
                draw = torch.rand(B, dtype=x.dtype, **rand) + 0.5
            elif op == "translation":
                rh, rw = _shift_radius(H), _shift_radius(W)
                draw = torch.stack(
                    [torch.randint(-rh, rh + 1, (B,), **rand), torch.randint(-rw, rw + 1, (B,), **rand)], dim=1
                )
            else:  # cutout
                kh, kw = _cutout_side(H), _cutout_side(W)
                # The reference's centre range; with an odd side it stops one short so the square stays in-bounds
                # on the far side as often as on the near one.
                draw = torch.stack(
                    [
                        torch.randint(0, H + 1 - kh % 2, (B,), **rand),
                        torch.randint(0, W + 1 - kw % 2, (B,), **rand),
                    ],
                    dim=1,
                )
            steps.append(AugmentStep(op, draw))
    return tuple(steps)


def brightness(x: Tensor, offset: Tensor) -> Tensor:
    """``x + offset[b]`` for every sample ``b``; ``offset [B]``."""
    return x + offset.to(x.dtype).view(-1, 1, 1, 1)


def saturation(x: Tensor, factor: Tensor) -> Tensor:
    """``(x - m) * factor[b] + m`` with ``m`` the channel mean at each pixel; ``factor [B]``."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * factor.to(x.dtype).view(-1, 1, 1, 1) + mean


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """``(x - m) * factor[b] + m`` with ``m`` the mean of sample ``b`` over C, H, W; ``factor [B]``."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor.to(x.dtype).view(-1, 1, 1, 1) + mean


def _shift_along(x: Tensor, shift: Tensor, dim: int) -> Tensor:
    # Gather each sample's shifted rows (or columns) with a clamped index, then zero what fell outside. The
    # index is [B] x size values broadcast (stride 0) over the other dims, so no full-size index tensor is
    # materialised, and nothing reads the shift back to the host. Gather's backward is a scatter-add, so the
    # gradient of every kept pixel lands exactly on its source pixel.
    size = x.shape[dim]
    source = torch.arange(size, device=x.device).unsqueeze(0) + shift.to(x.device).unsqueeze(1)
    view = [x.shape[0], 1, 1, 1]
    view[dim] = size
    outside = ((source < 0) | (source >= size)).view(view)
    return x.gather(dim, source.clamp(0, size - 1).view(view).expand(x.shape)).masked_fill(outside, 0)


def translation(x: Tensor, shift: Tensor) -> Tensor:
    """``out[b, :, i, j] = x[b, :, i + shift[b, 0], j + shift[b, 1]]``, zero outside; ``shift [B, 2]`` integers."""
    if shift.dtype.is_floating_point or shift.shape != (x.shape[0], 2):
        raise ValueError(
            f"shift must be an integer tensor of shape [B={x.shape[0]}, 2], got {shift.dtype} {list(shift.shape)}"
        )
    return _shift_along(_shift_along(x, shift[:, 0], 2), shift[:, 1], 3)


def cutout(x: Tensor, centre: Tensor) -> Tensor:
    """Zero a square of side ``int(0.5 * size + 0.5)`` around ``centre [B, 2]`` (rows, cols) in each sample."""
    if centre.dtype.is_floating_point or centre.shape != (x.shape[0], 2):
        raise ValueError(
            f"centre must be an integer tensor of shape [B={x.shape[0]}, 2], got {centre.dtype} {list(centre.shape)}"
        )
    B, _, H, W = x.shape
    kh, kw = _cutout_side(H), _cutout_side(W)
    start = centre.to(x.device) - torch.tensor([kh // 2, kw // 2], device=x.device)
    rows = torch.arange(H, device=x.device)
    cols = torch.arange(W, device=x.device)
    # Row and column masks broadcast to the square: [B,1,H,1] & [B,1,1,W], again no full-size index.
    in_rows = (rows >= start[:, :1]) & (rows < start[:, :1] + kh)
    in_cols = (cols >= start[:, 1:]) & (cols < start[:, 1:] + kw)
    hole = in_rows.view(B, 1, H, 1) & in_cols.view(B, 1, 1, W)
    return x.masked_fill(hole, 0)


_OPS = {
    "brightness": brightness,
    "saturation": saturation,
    "contrast": contrast,
    "translation": translation,
    "cutout": cutout,
}


def apply_diff_augment(x: Tensor, steps: Sequence[AugmentStep]) -> Tensor:
    """Apply drawn ``steps`` (from :func:`draw_diff_augment`) to ``x`` in order."""
    _check_input(x, None)
    for step in steps:
        if step.op not in _OPS:
            raise ValueError(f"unknown DiffAugment op {step.op!r}; valid ops are {list(_OPS)}")
        x = _OPS[step.op](x, step.draw)
    return x


def diff_augment(
    x: Tensor, policy: str | Sequence[str] = "color,translation", *, generator: torch.Generator | None = None
) -> Tensor:
    """DiffAugment ``x [B, C, H, W]`` with ``policy``, drawing fresh parameters per sample (module docstring)."""
    return apply_diff_augment(x, draw_diff_augment(x, policy, generator=generator))


class DiffAugment(nn.Module):
    """:func:`diff_augment` as a module; the policy is validated at construction."""

    def __init__(self, policy: str | Sequence[str] = "color,translation"):
        super().__init__()
        self.policy = parse_policy(policy)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return diff_augment(x, self.policy, generator=generator)

    def extra_repr(self) -> str:
        return f"policy={','.join(self.policy)!r}"


__all__ = [
    "DIFF_AUGMENT_POLICIES",
    "AugmentStep",
    "DiffAugment",
    "apply_diff_augment",
    "brightness",
    "contrast",
    "cutout",
    "diff_augment",
    "draw_diff_augment",
    "parse_policy",
    "saturation",
    "translation",
]
