"""The FID Inception-v3: the TensorFlow graph (2015-12-05) that published FID figures use, as pytorch-fid ports it.

Differences from torchvision's Inception-v3, all kept: average pools inside the mixed blocks exclude the zero
padding (TF's behaviour), the last block (``Mixed_7c``) pools its side branch with a max-pool, and the classifier
has 1008 classes. Module and parameter names follow torchvision / pytorch-fid, so the weight file
``pt_inception-2015-12-05-6726825d.pth`` loads as it is.

Input: ``[B, 3, H, W]`` images in ``[-1, 1]`` (this package's convention). :meth:`FIDInception.pool3` resizes to
299x299 (bilinear, no corner alignment, as pytorch-fid) and returns the 2048-d pool3 features FID and KID use;
:meth:`FIDInception.early` returns the 64-channel maps of the stem before the first max-pool, at the input's own
resolution, which SinGAN's SIFID uses (its ``InceptionV3`` block 0 with ``resize_input=False``).

Weights: ``weights_path`` argument, else ``$FSGAN_FAST_INCEPTION``; with neither, :class:`InceptionWeightsMissing`
says where to download the file. ``random_weights=True`` builds a seeded random network for plumbing and tests:
its figures are not comparable with anything (:attr:`FIDInception.comparable` is False).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILENAME}"
INCEPTION_ENV = "FSGAN_FAST_INCEPTION"
FID_SIZE = 299
POOL3_DIM = 2048
EARLY_DIM = 64
_RANDOM_SEED = 0


class InceptionWeightsMissing(FileNotFoundError):
    """The FID Inception weights were needed but not given; the message says where to get them."""


def weights_missing_message() -> str:
    return (f"FID/KID/SIFID need the FID Inception weights {INCEPTION_FILENAME}: download them from {INCEPTION_URL} "
            f"and pass --inception PATH (or set ${INCEPTION_ENV}); --random-weights runs with a random network "
            f"instead, for plumbing only (figures not comparable)")


class BasicConv2d(nn.Module):
    """conv (no bias) + BatchNorm (eps 1e-3, TF's) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TF averages over the valid window only
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class ReductionB(nn.Module):
    """35 -> 17 reduction (torchvision's InceptionB)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c, 1)
        self.branch7x7_2 = BasicConv2d(c, c, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c, 1)
        self.branch7x7dbl_2 = BasicConv2d(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c, c, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class ReductionD(nn.Module):
    """17 -> 8 reduction (torchvision's InceptionD)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs; ``max_pool`` selects the TF graph's last-block max-pool branch."""

    def __init__(self, cin: int, *, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


def _weights_file(weights_path: str | os.PathLike | None) -> Path:
    if weights_path is None:
        env = os.environ.get(INCEPTION_ENV)
        if not env:
            raise InceptionWeightsMissing(weights_missing_message())
        path, source = Path(env), f"${INCEPTION_ENV}"
    else:
        path, source = Path(weights_path), "--inception"
    if not path.is_file():
        raise InceptionWeightsMissing(f"{source} names {str(path)!r}, which is not a file. "
                                      + weights_missing_message())
    return path


class FIDInception(nn.Module):
    """The FID Inception-v3 feature extractor (module docstring); frozen, always in eval mode."""

    def __init__(self, weights_path: str | os.PathLike | None = None, *, random_weights: bool = False):
        super().__init__()
        if random_weights and weights_path is not None:
            raise ValueError("pass either weights_path or random_weights=True, not both")
        file = None if random_weights else _weights_file(weights_path)  # fail before building anything
        self.comparable = not random_weights
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = MixedA(192, 32)
        self.Mixed_5c = MixedA(256, 64)
        self.Mixed_5d = MixedA(288, 64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = MixedC(768, 128)
        self.Mixed_6c = MixedC(768, 160)
        self.Mixed_6d = MixedC(768, 160)
        self.Mixed_6e = MixedC(768, 192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = MixedE(1280, max_pool=False)
        self.Mixed_7c = MixedE(2048, max_pool=True)
        if file is not None:
            self.load_weights(file)
        else:
            self._init_random()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FIDInception:
        return super().train(False)  # BatchNorm must use the stored statistics

    def _init_random(self) -> None:
        # He-normal convs and randomised BN statistics (so tests exercise them); a private generator leaves the
        # global RNG alone and makes every random network the same.
        g = torch.Generator().manual_seed(_RANDOM_SEED)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                elif isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(1 + 0.1 * torch.rand(m.running_var.shape, generator=g))

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load pytorch-fid's weight file (its ``fc.*`` classifier entries are not needed and are skipped)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read the Inception weights {str(path)!r}: {e}") from None
        if not isinstance(state, dict):
            raise ValueError(f"{str(path)!r} is not a state dict (expected {INCEPTION_FILENAME})")
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{str(path)!r} does not hold the FID Inception weights ({INCEPTION_FILENAME}): "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")

    @staticmethod
    def _check(x: object) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got "
                             f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if x.shape[1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels, got {x.shape[1]}: repeat grayscale images to 3 "
                             f"channels (x.expand(-1, 3, -1, -1)) before measuring them")
        if not x.is_floating_point():
            raise ValueError(f"images must be floating point in [-1, 1], got {x.dtype} (map uint8 with x / 127.5 - 1)")
        return x

    def _stem(self, x: Tensor) -> Tensor:
        return self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))

    def _dtype_of(self, x: Tensor) -> Tensor:
        p = self.Conv2d_1a_3x3.conv.weight
        return x.to(device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def pool3(self, images: Tensor) -> Tensor:
        """``[B, 2048]`` pool3 features of ``images [B, 3, H, W]`` in [-1, 1], resized to 299 (bilinear)."""
        x = self._dtype_of(self._check(images))
        if x.shape[-2:] != (FID_SIZE, FID_SIZE):
            x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
        x = F.max_pool2d(self._stem(x), 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean((2, 3))

    @torch.no_grad()
    def early(self, images: Tensor) -> Tensor:
        """``[B, 64, h, w]`` stem maps before the first max-pool, at the input resolution (SinGAN's SIFID)."""
        x = self._dtype_of(self._check(images))
        if min(x.shape[-2:]) < 7:
            raise ValueError(f"images must be at least 7x7 for the Inception stem, got {list(x.shape[-2:])}")
        return self._stem(x)

    @torch.no_grad()
    def pool3_batched(self, images: Tensor, batch_size: int = 50) -> Tensor:
        return torch.cat([self.pool3(images[i:i + batch_size]).float().cpu()
                          for i in range(0, len(images), batch_size)]) if len(images) else torch.empty(0, POOL3_DIM)


__all__ = ["FIDInception", "InceptionWeightsMissing", "INCEPTION_FILENAME", "INCEPTION_URL", "INCEPTION_ENV",
           "POOL3_DIM", "EARLY_DIM", "weights_missing_message"]
