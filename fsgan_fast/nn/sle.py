"""Skip-layer excitation (FastGAN): the layer that owns the gate's spectral-normalised weights."""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from fsgan_fast.ops import sle_gate
from fsgan_fast.ops.sle_gate import ACTIVATIONS


class SkipLayerExcitation(nn.Module):
    """``y = x_high * sigmoid(conv1x1(act(conv4x4(adaptive_avg_pool(x_low, 4)))))`` via :func:`fsgan_fast.ops.sle_gate`.

    Both convs are bias-free and spectral-normalised, as in FastGAN's code; ``act`` is ``"swish"`` (the code) or
    ``"lrelu"`` (LeakyReLU(0.1), the paper's text). ``gate(x_low)`` returns the ``[B, Ch, 1, 1]`` gate alone (for
    inspection and style mixing).
    """

    def __init__(self, ch_low: int, ch_high: int, act: str = "swish", sn: bool = True,
                 init: Callable[[nn.Module], object] | None = None):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        self.act = act
        conv1 = nn.Conv2d(ch_low, ch_high, 4, bias=False)
        conv2 = nn.Conv2d(ch_high, ch_high, 1, bias=False)
        if init is not None:  # before spectral norm, whose power iteration starts from these weights
            init(conv1)
            init(conv2)
        self.conv1 = spectral_norm(conv1) if sn else conv1
        self.conv2 = spectral_norm(conv2) if sn else conv2

    def forward(self, x_low: Tensor, x_high: Tensor) -> Tensor:
        # the weights follow the activations' dtype under autocast (the op computes the gate in float32 anyway)
        return sle_gate(x_low, x_high, self.conv1.weight, self.conv2.weight, self.act)

    def gate(self, x_low: Tensor) -> Tensor:
        from fsgan_fast.ops.sle_gate import sle_gate_value_reference

        return sle_gate_value_reference(x_low, self.conv1.weight, self.conv2.weight, self.act)

    def extra_repr(self) -> str:
        return f"act={self.act!r}"


__all__ = ["SkipLayerExcitation"]
