"""Reusable convolution blocks: padded conv + norm + activation, and FUNIT's pre-activation ResBlock.

Every conv here is initialised when it is built, before spectral norm wraps it: kaiming normal
(fan_in, gain sqrt(2)) weights and zero biases, as LoFGAN's ``weights_init('kaiming')`` does. Doing it
before wrapping matters: ``torch.nn.utils.parametrizations.spectral_norm`` runs 15 power iterations at
registration, so its ``u``/``v`` then match the weights that are actually trained.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

NORMS = ("bn", "in", "none")
ACTIVATIONS = ("lrelu", "relu", "tanh", "none")
PAD_MODES = ("reflect", "zeros", "replicate", "circular")
INITS = ("kaiming", "torch")


def kaiming_init_(module: nn.Module) -> nn.Module:
    """kaiming_normal_(a=0, mode='fan_in') on the weights of every Conv2d / Linear in ``module``, zero biases.

    Spectral-normed convs get it on their raw weight (``parametrizations.weight.original``); their power
    iteration estimate then catches up over the next training forwards (one iteration each), as in the
    official code, whose init also lands on the raw weight. Returns ``module``.
    """
    for m in module.modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if hasattr(m, "parametrizations") and "weight" in m.parametrizations:
            weight = m.parametrizations.weight.original
        else:
            weight = m.weight
        nn.init.kaiming_normal_(weight, a=0, mode="fan_in")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return module


def _activation(name: str, slope: float) -> nn.Module:
    if name == "lrelu":
        return nn.LeakyReLU(slope)
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    return nn.Identity()


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class Conv2dBlock(nn.Module):
    """``pad -> conv -> norm -> act``, or ``act -> pad -> conv -> norm`` with ``act_first=True``.

    Defaults are LoFGAN's generator block: reflect padding of ``kernel_size // 2``, conv with bias,
    BatchNorm, LeakyReLU(0.2). ``sn=True`` wraps the conv in spectral norm (after the init).
    ``norm``: ``"bn" | "in" | "none"``; ``act``: ``"lrelu" | "relu" | "tanh" | "none"``;
    ``init``: ``"kaiming"`` (see the module docstring) or ``"torch"`` (PyTorch's default).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        padding: int | None = None,
        pad_mode: str = "reflect",
        norm: str = "bn",
        act: str = "lrelu",
        bias: bool = True,
        sn: bool = False,
        act_first: bool = False,
        slope: float = 0.2,
        init: str = "kaiming",
    ):
        super().__init__()
        _check_choice("norm", norm, NORMS)
        _check_choice("act", act, ACTIVATIONS)
        _check_choice("pad_mode", pad_mode, PAD_MODES)
        _check_choice("init", init, INITS)
        padding = kernel_size // 2 if padding is None else padding
        # a 1x1 / unpadded conv skips the (no-op) pad copy that padding_mode would insert
        mode = pad_mode if padding > 0 else "zeros"
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=padding, padding_mode=mode, bias=bias)
        if init == "kaiming":
            kaiming_init_(conv)
        self.conv = spectral_norm(conv) if sn else conv
        if norm == "bn":
            self.norm = nn.BatchNorm2d(out_channels)
        elif norm == "in":
            self.norm = nn.InstanceNorm2d(out_channels)
        else:
            self.norm = nn.Identity()
        self.act = _activation(act, slope)
        self.act_first = act_first

    def forward(self, x: Tensor) -> Tensor:
        if self.act_first:
            return self.norm(self.conv(self.act(x)))
        return self.act(self.norm(self.conv(x)))


class ActFirstResBlock(nn.Module):
    """FUNIT's pre-activation residual block, as LoFGAN's discriminator uses it.

    ``out = shortcut(x) + conv_1(conv_0(x))`` (a plain sum, no 1/sqrt(2)), where each ``conv_i`` is
    LeakyReLU(0.2) -> reflect pad 1 -> 3x3 conv (with bias, spectral norm if ``sn``), and
    ``conv_0: fin -> fhid``, ``conv_1: fhid -> fout``. ``fhid`` defaults to ``max(fin, fout)``
    (LoFGAN's blocks; FUNIT's own default is the min). The shortcut is the identity when
    ``fin == fout``, else a 1x1 conv without bias and without spectral norm.
    """

    def __init__(
        self,
        fin: int,
        fout: int,
        fhid: int | None = None,
        *,
        sn: bool = True,
        slope: float = 0.2,
        pad_mode: str = "reflect",
        init: str = "kaiming",
    ):
        super().__init__()
        fhid = max(fin, fout) if fhid is None else fhid
        common = dict(norm="none", act="lrelu", act_first=True, sn=sn, slope=slope, pad_mode=pad_mode, init=init)
        self.conv_0 = Conv2dBlock(fin, fhid, 3, **common)
        self.conv_1 = Conv2dBlock(fhid, fout, 3, **common)
        if fin != fout:
            self.shortcut = nn.Conv2d(fin, fout, 1, bias=False)
            if init == "kaiming":
                kaiming_init_(self.shortcut)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.conv_1(self.conv_0(x))


__all__ = ["Conv2dBlock", "ActFirstResBlock", "kaiming_init_"]
