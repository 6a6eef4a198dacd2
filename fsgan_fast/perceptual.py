"""LPIPS (Zhang et al. 2018, VGG16 "net-lin" v0.1) and FastGAN's reconstruction loss, without torchvision.

Contract for ``LPIPS()(x, y)``:

1. ``x, y [B, 3, H, W]``, same shape, floating, nominally in ``[-1, 1]``, ``H, W >= 16`` (relu5_3 sits behind four
   2x2 max-pools). Returns ``[B]`` distances; FastGAN sums them over the batch, callers reduce as they like.
2. Both inputs are mapped to ``(v - shift) / scale`` with LPIPS's ScalingLayer constants, then run through the
   VGG16 ``features`` trunk (torchvision's layer layout, so its state-dict keys ``features.{i}.weight/bias`` load).
3. At each tap (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) the features are unit-normalised over channels,
   ``f / (||f||_2 + 1e-10)``, the squared difference is weighted per channel by the LPIPS linear head (a 1x1
   conv without bias), averaged over space, and the five tap values are summed.
4. The normalisation and heads run in at least fp32, so fp16/bf16 trunks cannot overflow the squared norms; the
   result is fp32 (fp64 for fp64 inputs). Gradients flow to both inputs; the module's own weights are frozen.

Weights (two files, neither bundled here):

- VGG16 trunk: torchvision's ImageNet checkpoint ``vgg16-397923af.pth`` (:data:`VGG16_URL`). Looked up, first
  one *given* wins: the ``vgg_path`` argument, the ``FSGAN_FAST_VGG16`` environment variable, then torch hub's
  cache ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`` (where ``torchvision.models.vgg16(weights=...)``
  saves it).
- Linear heads: ``lpips/weights/v0.1/vgg.pth`` from the ``lpips`` PyPI package (``pip install --no-deps lpips``;
  ``--no-deps`` because its requirements pull torchvision, which can replace the installed torch). The file is
  found via ``importlib.util.find_spec`` without importing lpips; ``heads_path`` or ``FSGAN_FAST_LPIPS_HEADS``
  override it.

Fallback: :func:`lpips_available` returns ``None`` when both files are found, else the reason. ``LPIPS()`` raises
:class:`PerceptualWeightsMissing` with that reason. ``reconstruction_loss("auto")`` resolves to LPIPS when
available, otherwise to per-pixel MSE (lightweight-gan's choice for the same decoders) and logs a warning on the
``fsgan_fast`` logger that repeats the reason; the returned module's ``.kind`` says which one it resolved to and
``.fallback_reason`` why. MSE is not FastGAN's loss: record ``.kind`` with any result.

``LPIPS(random_backbone=True)`` builds a seeded random trunk instead (still with the real heads), for tests and
plumbing only; its distances mean nothing perceptually.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger("fsgan_fast")

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILENAME}"
VGG16_ENV = "FSGAN_FAST_VGG16"
HEADS_ENV = "FSGAN_FAST_LPIPS_HEADS"
HEADS_RELPATH = ("weights", "v0.1", "vgg.pth")
RECONSTRUCTION_KINDS = ("lpips", "mse", "l1", "auto")

# torchvision's vgg16 "D" configuration: conv3x3 widths, "M" = 2x2 max-pool; each conv is followed by a ReLU.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices in torchvision's vgg16().features of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3. The trunk stops at
# relu5_3 (index 29); the final max-pool (30) has no parameters, so the state-dict keys are unaffected.
VGG16_TAPS = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's ScalingLayer: ImageNet normalisation re-expressed for inputs in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10
MIN_SIZE = 16
_RANDOM_BACKBONE_SEED = 0


class PerceptualWeightsMissing(FileNotFoundError):
    """LPIPS was requested but its VGG16 trunk or linear-head weights were not found; the message says where
    to get them."""


def vgg16_features() -> nn.Sequential:
    """An uninitialised VGG16 ``features`` trunk up to relu5_3, indexed exactly like torchvision's."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU()]
            in_ch = v
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------------- weight lookup
def _vgg16_location(vgg_path: str | os.PathLike | None) -> tuple[Path, str]:
    """Where the trunk should be, and how that place was chosen (for messages)."""
    if vgg_path is not None:
        return Path(vgg_path), "the vgg_path argument"
    env = os.environ.get(VGG16_ENV)
    if env:
        return Path(env), f"${VGG16_ENV}"
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME, "torch hub's cache"


def _heads_location(heads_path: str | os.PathLike | None) -> tuple[Path | None, str]:
    if heads_path is not None:
        return Path(heads_path), "the heads_path argument"
    env = os.environ.get(HEADS_ENV)
    if env:
        return Path(env), f"${HEADS_ENV}"
    package = _lpips_package_dir()
    if package is None:
        return None, "the lpips package (not installed)"
    return package.joinpath(*HEADS_RELPATH), "the lpips package"


def _lpips_package_dir() -> Path | None:
    # find_spec locates the package without running lpips/__init__, which imports torchvision.
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _unavailable(vgg_path, heads_path, *, need_vgg: bool = True) -> str | None:
    problems = []
    vgg, vgg_src = _vgg16_location(vgg_path)
    if need_vgg and not vgg.is_file():
        problems.append(
            f"the VGG16 backbone '{VGG16_FILENAME}' (torchvision's ImageNet weights) is not at {vgg} (from "
            f"{vgg_src}); download {VGG16_URL} and pass its path as vgg_path, point ${VGG16_ENV} at it, or put it "
            f"in {Path(torch.hub.get_dir()) / 'checkpoints'}"
        )
    heads, heads_src = _heads_location(heads_path)
    if heads is None or not heads.is_file():
        where = f"at {heads} (from {heads_src})" if heads is not None else f"in {heads_src}"
        problems.append(
            f"the LPIPS linear heads '{'/'.join(('lpips',) + HEADS_RELPATH)}' are not {where}; run "
            f"`pip install --no-deps lpips` (--no-deps: its requirements pull torchvision) or point ${HEADS_ENV} "
            "at a copy"
        )
    if not problems:
        return None
    return "LPIPS is unavailable: " + "; and ".join(problems) + "."


def lpips_available(
    vgg_path: str | os.PathLike | None = None, *, heads_path: str | os.PathLike | None = None
) -> str | None:
    """``None`` when both LPIPS weight files are found, else a one-paragraph reason (module docstring)."""
    return _unavailable(vgg_path, heads_path)


def _load_state(path: Path) -> dict[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


# ------------------------------------------------------------------------------------------------------ checks
def _check_pair(x: object, y: object) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {list(x.shape)} and {list(y.shape)}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x and y must be RGB images [B, 3, H, W] in [-1, 1], got shape {list(x.shape)}")
    if min(x.shape[-2:]) < MIN_SIZE:
        raise ValueError(
            f"images must be at least {MIN_SIZE}x{MIN_SIZE} (VGG16's relu5_3 is behind four 2x2 pools), "
            f"got {x.shape[-2]}x{x.shape[-1]}"
        )


# ------------------------------------------------------------------------------------------------------- LPIPS
class LPIPS(nn.Module):
    """LPIPS distance with the VGG16 backbone (module docstring): ``forward(x, y) -> [B]``; frozen, always eval.

    Raises :class:`PerceptualWeightsMissing` if a weight file is missing, ``ValueError`` if a file has the wrong
    keys or shapes, or if ``vgg_path`` is combined with ``random_backbone=True``.
    """

    kind = "lpips"
    fallback_reason = None

    def __init__(
        self,
        vgg_path: str | os.PathLike | None = None,
        *,
        random_backbone: bool = False,
        heads_path: str | os.PathLike | None = None,
    ):
        super().__init__()
        if random_backbone and vgg_path is not None:
            raise ValueError("pass either vgg_path or random_backbone=True, not both")
        # A random trunk still needs the real heads, but not the VGG16 file.
        reason = _unavailable(vgg_path, heads_path, need_vgg=not random_backbone)
        if reason is not None:
            raise PerceptualWeightsMissing(reason)
        heads_file, _ = _heads_location(heads_path)

        # Built on the meta device and then allocated empty: every weight is overwritten below, so torch's default
        # init would only cost time (14.7M parameters) and draw from the global RNG.
        with torch.device("meta"):
            self.features = vgg16_features()
            self.lin = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in TAP_CHANNELS)
        self.to_empty(device="cpu")
        if random_backbone:
            self._init_random_backbone()
        else:
            vgg_file, _ = _vgg16_location(vgg_path)
            self._load_backbone(vgg_file)
        self._load_heads(heads_file)

        # fp64 so that an fp64 run sees the exact constants; forward casts them to the input's dtype.
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT, dtype=torch.float64).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE, dtype=torch.float64).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _init_random_backbone(self) -> None:
        # He-normal weights keep activations O(1) through all 13 convs; small random biases so that tests
        # exercise them. A private generator leaves the global RNG untouched.
        g = torch.Generator().manual_seed(_RANDOM_BACKBONE_SEED)
        with torch.no_grad():
            for m in self.features:
                if isinstance(m, nn.Conv2d):
                    fan_in = m.in_channels * 9
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.1)

    def _load_backbone(self, path: Path) -> None:
        # Accept a whole torchvision vgg16 state dict (features.* + classifier.*) or just its features.* part.
        state = {k[len("features."):]: v for k, v in _load_state(path).items() if k.startswith("features.")}
        expected = set(self.features.state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"{path} is not torchvision's vgg16 state dict: features.* keys missing {missing[:4]}, "
                f"unexpected {extra[:4]}"
            )
        try:
            self.features.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{path} does not match VGG16's layer shapes: {e}") from e

    def _load_heads(self, path: Path) -> None:
        state = _load_state(path)
        with torch.no_grad():
            for i, (lin, c) in enumerate(zip(self.lin, TAP_CHANNELS)):
                key = f"lin{i}.model.1.weight"
                w = state.get(key)
                if w is None or tuple(w.shape) != (1, c, 1, 1):
                    got = "missing" if w is None else f"shape {list(w.shape)}"
                    raise ValueError(
                        f"{path} is not LPIPS's v0.1 VGG heads file: {key} should be [1, {c}, 1, 1], {got}"
                    )
                lin.weight.copy_(w)

    def train(self, mode: bool = True) -> LPIPS:
        # A fixed metric: stays in eval even inside a model that is switched to train().
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        _check_pair(x, y)
        B = x.shape[0]
        # One trunk pass over both inputs: half the launches, same memory.
        h = (torch.cat([x, y]) - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        acc_dtype = torch.promote_types(x.dtype, torch.float32)
        total = x.new_zeros(B, dtype=acc_dtype)
        taps = iter(zip(VGG16_TAPS, self.lin))
        tap, lin = next(taps)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i != tap:
                continue
            f = h.to(acc_dtype)
            # A pixel whose channels are all zero has an infinite sqrt gradient, but it only occurs behind a ReLU
            # whose backward zeroes it, as in LPIPS itself.
            f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS)
            d = (f[:B] - f[B:]).pow(2)
            # The 1x1 head commutes with the spatial mean: sum_c w_c * mean_hw(d_c).
            total = total + (d.mean(dim=(2, 3)) * lin.weight.to(acc_dtype).view(1, -1)).sum(dim=1)
            tap, lin = next(taps, (None, None))
            if tap is None:
                break
        return total


# ------------------------------------------------------------------------------------------ reconstruction loss
class PixelLoss(nn.Module):
    """Per-sample ``mean((x - y)**2)`` (``kind="mse"``) or ``mean(|x - y|)`` (``"l1"``) over C, H, W -> ``[B]``."""

    def __init__(self, kind: str, fallback_reason: str | None = None):
        super().__init__()
        if kind not in ("mse", "l1"):
            raise ValueError(f"PixelLoss kind must be 'mse' or 'l1', got {kind!r}")
        self.kind = kind
        self.fallback_reason = fallback_reason

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        # Same input contract as LPIPS, so switching kinds (e.g. via "auto") never changes what is accepted.
        _check_pair(x, y)
        diff = x - y
        err = diff.pow(2) if self.kind == "mse" else diff.abs()
        return err.mean(dim=(1, 2, 3))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def reconstruction_loss(
    kind: str = "auto",
    *,
    vgg_path: str | os.PathLike | None = None,
    heads_path: str | os.PathLike | None = None,
) -> nn.Module:
    """FastGAN's decoder reconstruction loss as a module ``(x, y) -> [B]``, with ``.kind`` and ``.fallback_reason``.

    ``kind``: ``"lpips"`` (FastGAN's; raises :class:`PerceptualWeightsMissing` without weights), ``"mse"``,
    ``"l1"``, or ``"auto"``: LPIPS when :func:`lpips_available` is ``None``, else MSE with a logged warning that
    repeats the reason. ``.kind`` is the resolved kind; move the module to the images' device before use.
    """
    if kind not in RECONSTRUCTION_KINDS:
        raise ValueError(f"kind must be one of {list(RECONSTRUCTION_KINDS)}, got {kind!r}")
    if kind in ("mse", "l1"):
        return PixelLoss(kind)
    if kind == "lpips":
        return LPIPS(vgg_path, heads_path=heads_path)
    reason = lpips_available(vgg_path, heads_path=heads_path)
    if reason is None:
        return LPIPS(vgg_path, heads_path=heads_path)
    log.warning("reconstruction_loss('auto') falls back to per-pixel MSE (lightweight-gan's choice for the same "
                "decoders), which is not FastGAN's LPIPS loss. %s", reason)
    return PixelLoss("mse", fallback_reason=reason)


__all__ = [
    "LPIPS",
    "LPIPS_EPS",
    "LPIPS_SCALE",
    "LPIPS_SHIFT",
    "PerceptualWeightsMissing",
    "PixelLoss",
    "RECONSTRUCTION_KINDS",
    "VGG16_ENV",
    "HEADS_ENV",
    "VGG16_TAPS",
    "VGG16_URL",
    "lpips_available",
    "reconstruction_loss",
    "vgg16_features",
]
