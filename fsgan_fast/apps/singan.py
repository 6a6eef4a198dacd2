"""SinGAN's applications (ALGORITHMS.md §3), as functions and as ``fsgan-fast app singan APP`` commands.

- random samples at any size and aspect: :meth:`fsgan_fast.models.singan.SinGAN.sample` (``generate singan``);
- :func:`inject`: generation that starts at scale n from a given image;
- :func:`harmonize` / :func:`edit`: a pasted object (harmonisation) or a rough edit (editing) is re-rendered from
  scale n, then blended into the training image through its mask, dilated (disk of radius 7 / 20) and blurred
  (Gaussian, sigma 5): ``out = (1 - m) * real + m * generated``;
- :func:`paint_to_image`: a clip-art painting injected at scale n (the optional k-means quantisation and
  retraining of the official ``paint_train`` is not implemented);
- :func:`super_resolve`: the paper's procedure: k = round(log(1/sf) / log(2^(-1/3))) repeats of "upsample by
  sf^(1/k), then the finest generator with its noise amplitude" (train with --min-size 18 and --rec-weight 100 for
  the paper's setting; every step draws the finest scale's 3-channel noise, where the official script's first step
  draws 1-channel noise through its scale counter);
- :func:`animate`: a random walk in noise space, z_t = a Z_opt + (1-a)(z_{t-1} + d_t), d_t = b (z_{t-1} - z_{t-2})
  + (1-b) N(0, 1) (a = 0.1), with the reconstruction noise below ``start_scale``; written as a GIF.

Injection inputs follow the official scripts: a reference image is resized to the training image's size, shrunk
by r^(N-n+1), cropped to scale n-1, upsampled by 1/r and cropped to scale n.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.models.registry import ModelApp
from fsgan_fast.models.singan import PAD, SinGAN, SinGANInputError

HARMONIZE_RADIUS = 7
EDIT_RADIUS = 20
MASK_SIGMA = 5.0
WALK_ALPHA = 0.1  # the walk's pull towards the reconstruction noise


def _ops():
    from fsgan_fast import ops

    return ops


def _require_trained(model: SinGAN) -> None:
    if model.finished < model.num_scales:
        raise SinGANInputError(f"this application needs a fully trained model; the checkpoint has {model.finished} of "
                               f"{model.num_scales} scales")


# ---------------------------------------------------------------------------------------------------
# Images and masks


def read_rgb(path: str | Path, what: str = "image") -> Tensor:
    """An image file as ``[1, 3, h, w]`` in [-1, 1] at its own size (grey and RGBA files become RGB)."""
    from fsgan_fast.utils.images import read_image

    try:
        img = read_image(path)
    except ValueError as e:
        raise SinGANInputError(f"{what}: {e}") from None
    return img[None].float() / 127.5 - 1.0


def load_image(path: str | Path, model: SinGAN, what: str = "image") -> Tensor:
    """An image file as ``[1, 3, H, W]`` in [-1, 1] at the training image's size (resized when it differs, as the
    official scripts). Too small an image (shorter side under the coarsest scale's) is refused."""
    return fit_image(read_rgb(path, what), model, what)


def fit_image(image: Tensor, model: SinGAN, what: str = "image") -> Tensor:
    """``image [1, 3, h, w]`` in [-1, 1] resized to the training image's size (with the model's resizer)."""
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise SinGANInputError(f"{what} must be one RGB image [1, 3, H, W], got shape {list(image.shape)}")
    h0, w0 = model.sizes[0]
    if min(image.shape[-2:]) < min(h0, w0):
        raise SinGANInputError(f"{what} is {image.shape[-2]}x{image.shape[-1]}: too small for this model, whose "
                               f"coarsest scale is {h0}x{w0}")
    H, W = model.sizes[-1]
    image = image.to(model.noise_amp.device, torch.float32)
    if tuple(image.shape[-2:]) != (H, W):
        image = _ops().imresize(image, size=(H, W), edge=model.cfg.edge)
    return image


def load_mask(path: str | Path, like: tuple[int, int], what: str = "mask") -> Tensor:
    """A mask file as ``[1, 1, h, w]`` in {0, 1} (its first channel over half range); it must have the size ``like``
    of the image it goes with."""
    from fsgan_fast.utils.images import read_image

    try:
        img = read_image(path)
    except ValueError as e:
        raise SinGANInputError(f"{what}: {e}") from None
    if tuple(img.shape[-2:]) != tuple(like):
        raise SinGANInputError(f"{what} is {img.shape[-2]}x{img.shape[-1]} but its image is {like[0]}x{like[1]}: "
                               "the mask must have the image's size")
    return (img[None, :1].float() > 127.5).float()


def _disk(radius: int) -> Tensor:
    y, x = torch.meshgrid(torch.arange(-radius, radius + 1), torch.arange(-radius, radius + 1), indexing="ij")
    return ((x * x + y * y) <= radius * radius).float()


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, kernel radius 4 sigma and replicated borders (scikit-image's ``gaussian``)."""
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def prepare_mask(mask: Tensor, radius: int, sigma: float = MASK_SIGMA) -> Tensor:
    """The official soft mask: binary ``mask [1, 1, H, W]`` dilated by a disk of ``radius``, Gaussian-blurred
    (``sigma``) and stretched to [0, 1]. An empty mask is refused (nothing would change)."""
    if mask.dim() != 4 or mask.shape[:2] != (1, 1):
        raise SinGANInputError(f"mask must be [1, 1, H, W], got shape {list(mask.shape)}")
    binary = (mask > 0.5).float()
    if not bool(binary.any()):
        raise SinGANInputError("the mask is empty (all black): mark the region to re-render in white")
    if radius > 0:
        disk = _disk(radius).to(mask)
        binary = (F.conv2d(binary, disk[None, None], padding=radius) > 0).float()
    soft = _gaussian_blur(binary, sigma) if sigma > 0 else binary
    lo, hi = soft.min(), soft.max()
    return (soft - lo) / (hi - lo) if float(hi - lo) > 1e-6 else torch.ones_like(soft)


# ---------------------------------------------------------------------------------------------------
# The applications


def inject(model: SinGAN, image: Tensor, start_scale: int, n: int = 1, *,
           generator: torch.Generator | None = None) -> Tensor:
    """``n`` generations ``[n, 3, H, W]`` that start at ``start_scale`` from ``image`` (training-image sized)."""
    _require_trained(model)
    return model.inject(image, start_scale, n, generator=generator)


def _check_injection_scale(model: SinGAN, start_scale: int) -> None:
    if not 1 <= start_scale <= model.num_scales - 1:
        raise SinGANInputError(f"the injection scale must be in 1..{model.num_scales - 1} for this "
                               f"{model.num_scales}-scale model, got {start_scale}")


def harmonize(model: SinGAN, ref: Tensor, mask: Tensor, start_scale: int, *, radius: int = HARMONIZE_RADIUS,
              sigma: float = MASK_SIGMA, background: Tensor | None = None,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Re-render ``ref`` (the training image with something pasted in) from ``start_scale`` and blend it into
    ``background`` (default: the training image) through the soft ``mask``. Returns ``(generated, blended)``."""
    _require_trained(model)
    _check_injection_scale(model, start_scale)
    ref = model.check_image("ref", ref)
    if tuple(mask.shape[-2:]) != tuple(ref.shape[-2:]):
        raise SinGANInputError(f"mask is {mask.shape[-2]}x{mask.shape[-1]} but ref is {ref.shape[-2]}x"
                               f"{ref.shape[-1]}: they must have the same size")
    soft = prepare_mask(mask.to(ref), radius, sigma)
    generated = model.inject(ref, start_scale, 1, generator=generator)
    real = model.real if background is None else model.check_image("background", background)
    # (1 - m) * real + m * generated, as pyramid_blend's masked epilogue: real + m * (generated - real)
    return generated, _ops().pyramid_blend(real.expand_as(generated), generated - real, soft)


def edit(model: SinGAN, ref: Tensor, mask: Tensor, start_scale: int, *, radius: int = EDIT_RADIUS,
         sigma: float = MASK_SIGMA, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Editing: :func:`harmonize` with the wider dilation of the official editing script (radius 20)."""
    return harmonize(model, ref, mask, start_scale, radius=radius, sigma=sigma, generator=generator)


def paint_to_image(model: SinGAN, paint: Tensor, start_scale: int, n: int = 1, *,
                   generator: torch.Generator | None = None) -> Tensor:
    """Turn a rough painting (training-image sized, in [-1, 1]) into ``n`` images in the style of the training
    image by injecting it at ``start_scale`` (1..N)."""
    _require_trained(model)
    _check_injection_scale(model, start_scale)
    return model.inject(paint, start_scale, n, generator=generator)


def sr_steps(factor: float) -> tuple[int, float]:
    """``(k, s)``: the paper's k = round(log(1/sf) / log(2^(-1/3))) (at least 1) upsampling steps of s = sf^(1/k)."""
    if not math.isfinite(factor) or factor <= 1:
        raise SinGANInputError(f"the super-resolution factor must be > 1, got {factor}")
    k = max(1, round(math.log(1 / factor) / math.log(2 ** (-1 / 3))))
    return k, factor ** (1 / k)


@torch.no_grad()
def super_resolve(model: SinGAN, factor: float = 4.0, image: Tensor | None = None, *,
                  generator: torch.Generator | None = None) -> Tensor:
    """``image`` (default: the training image; any size) upsampled ``factor`` times with the finest generator,
    the paper's way: ``[1, 3, int(factor*H), int(factor*W)]``."""
    _require_trained(model)
    x = model.real if image is None else image.to(model.noise_amp.device, torch.float32)
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise SinGANInputError(f"image must be one RGB image [1, 3, H, W], got shape {list(x.shape)}")
    if min(x.shape[-2:]) < 11:
        raise SinGANInputError(f"image is {x.shape[-2]}x{x.shape[-1]}: too small (at least 11 px a side)")
    from fsgan_fast.ops.imresize import output_length

    k, s = sr_steps(factor)
    H, W = x.shape[-2:]
    ops, last = _ops(), model.num_scales - 1
    for _ in range(k):
        size = (output_length(x.shape[-2], s), output_length(x.shape[-1], s))
        noise = model.draw_noise(last, 1, size, generator)
        up, g_in = ops.pyramid_inject(x, size, noise, model.noise_amp[last], pad=PAD, scale=s, edge=model.cfg.edge)
        x = ops.pyramid_blend(up, model.gens[last](g_in))
    return x[..., :int(factor * H), :int(factor * W)]


@torch.no_grad()
def animation_noise(model: SinGAN, frames: int, beta: float, start_scale: int, *, alpha: float = WALK_ALPHA,
                    generator: torch.Generator | None = None) -> list[Tensor]:
    """Per scale, the ``frames`` noise maps ``[T, C, h, w]`` of the official random walk (see the module doc)."""
    walks = []
    for n in range(model.num_scales):
        z_opt = model.z_opt(n)
        if n < start_scale:
            walks.append(z_opt.expand(frames, -1, -1, -1))
            continue
        prev2 = z_opt
        prev1 = 0.95 * z_opt + 0.05 * model.draw_noise(n, generator=generator)
        seq = []
        for _ in range(frames):
            diff = beta * (prev1 - prev2) + (1 - beta) * model.draw_noise(n, generator=generator)
            z = alpha * z_opt + (1 - alpha) * (prev1 + diff)
            prev2, prev1 = prev1, z
            seq.append(z)
        walks.append(torch.cat(seq))
    return walks


@torch.no_grad()
def animate(model: SinGAN, frames: int = 100, beta: float = 0.9, start_scale: int = 2, *, batch_size: int = 16,
            generator: torch.Generator | None = None) -> Tensor:
    """``[frames, 3, H, W]``: a short video from the random walk in noise space (``beta`` in 0..1: higher is
    smoother; scales below ``start_scale`` stay at the reconstruction, so the layout moves less)."""
    _require_trained(model)
    if frames < 1:
        raise SinGANInputError(f"frames must be >= 1, got {frames}")
    if not 0 <= beta <= 1:
        raise SinGANInputError(f"beta must be in [0, 1], got {beta}")
    if not 0 <= start_scale < model.num_scales:
        raise SinGANInputError(f"start_scale must be in 0..{model.num_scales - 1}, got {start_scale}")
    walks = animation_noise(model, frames, beta, start_scale, generator=generator)
    out = [model.run_scales(0, model.num_scales, None, [w[i:i + batch_size] for w in walks])
           for i in range(0, frames, batch_size)]
    return torch.cat(out)


def save_gif(frames: Tensor, path: str | Path, fps: float = 10.0) -> Path:
    """Frames ``[T, 3, H, W]`` in [-1, 1] as a looping GIF (PIL)."""
    from fsgan_fast.utils.images import to_uint8

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = to_uint8(frames.clamp(-1, 1)).permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path


# ---------------------------------------------------------------------------------------------------
# The commands (fsgan-fast app singan APP)


def _save_all(images: Tensor, out: Path, stem: str) -> list[Path]:
    from fsgan_fast.utils.images import save_image

    images = images.clamp(-1, 1)
    if images.shape[0] == 1:
        return [save_image(images[0], out / f"{stem}.png")]
    return [save_image(img, out / f"{stem}_{i}.png") for i, img in enumerate(images)]


@dataclasses.dataclass
class InjectOptions:
    """Generation from an image injected at one scale."""

    image: str = option(help="the image to start from (resized to the training image's size)", metavar="PATH")
    scale: int = option(help="injection scale: 0 (coarsest) .. N-1; coarser keeps less of the image", low=0)
    n: int = option(4, "number of generations", low=1)

    def __post_init__(self) -> None:
        configs.validate(self)


def _run_inject(model: SinGAN, opts: InjectOptions, *, out: Path, generator: torch.Generator) -> list[Path]:
    """``out/inject_<i>.png``."""
    image = load_image(opts.image, model)
    return _save_all(inject(model, image, opts.scale, opts.n, generator=generator), out, "inject")


@dataclasses.dataclass
class BlendOptions:
    """Harmonisation / editing inputs."""

    ref: str = option(help="the training image with an object pasted in (harmonize) or edited (edit)", metavar="PATH")
    mask: str = option(help="white where ref differs from the training image; the same size as ref", metavar="PATH")
    scale: int = option(help="injection scale 1..N-1 (the paper: a middle one; finer keeps more of the paste)", low=1)
    radius: int | None = option(None, "mask dilation radius (default: 7 for harmonize, 20 for edit)", low=0)
    sigma: float = option(MASK_SIGMA, "Gaussian blur of the dilated mask", low=0.0)

    def __post_init__(self) -> None:
        configs.validate(self)


def _blend_command(default_radius: int, stem: str):
    def run(model: SinGAN, opts: BlendOptions, *, out: Path, generator: torch.Generator) -> list[Path]:
        """``out/<app>.png`` (the generation) and ``out/<app>_blended.png`` (blended into the training image)."""
        raw = read_rgb(opts.ref, "ref")
        mask = load_mask(opts.mask, tuple(raw.shape[-2:]))
        ref = fit_image(raw, model, "ref")
        if tuple(mask.shape[-2:]) != tuple(ref.shape[-2:]):
            mask = F.interpolate(mask, size=ref.shape[-2:], mode="nearest")
        radius = default_radius if opts.radius is None else opts.radius
        generated, blended = harmonize(model, ref, mask.to(ref), opts.scale, radius=radius, sigma=opts.sigma,
                                       generator=generator)
        return _save_all(generated, out, stem) + _save_all(blended, out, f"{stem}_blended")

    return run


@dataclasses.dataclass
class PaintOptions:
    """Paint-to-image inputs."""

    paint: str = option(help="a rough painting of a scene in the training image's colours", metavar="PATH")
    scale: int = option(help="injection scale 1..N-1 (coarser gives more realistic, less faithful images)", low=1)
    n: int = option(1, "number of generations", low=1)

    def __post_init__(self) -> None:
        configs.validate(self)


def _run_paint(model: SinGAN, opts: PaintOptions, *, out: Path, generator: torch.Generator) -> list[Path]:
    """``out/paint.png`` (or ``paint_<i>.png``)."""
    paint = load_image(opts.paint, model, "paint")
    return _save_all(paint_to_image(model, paint, opts.scale, opts.n, generator=generator), out, "paint")


@dataclasses.dataclass
class SROptions:
    """Super-resolution inputs."""

    factor: float = option(4.0, "upsampling factor (> 1)", low=1.0, low_open=True)
    image: str | None = option(None, "image to upsample (default: the training image)", metavar="PATH")

    def __post_init__(self) -> None:
        configs.validate(self)


def _run_sr(model: SinGAN, opts: SROptions, *, out: Path, generator: torch.Generator) -> list[Path]:
    """``out/sr_x<factor>.png``."""
    image = None if opts.image is None else read_rgb(opts.image)
    result = super_resolve(model, opts.factor, image, generator=generator)
    return _save_all(result, out, f"sr_x{opts.factor:g}")


@dataclasses.dataclass
class AnimateOptions:
    """Animation inputs."""

    frames: int = option(100, "number of frames", low=1)
    beta: float = option(0.9, "smoothness of the walk (the paper: 0.80 .. 0.95)", low=0.0, high=1.0)
    start_scale: int = option(2, "scales below this one stay at the reconstruction (the paper: 0..2)", low=0)
    fps: float = option(10.0, "frames per second of the GIF", low=0.0, low_open=True)
    batch_size: int = option(16, "frames generated at once", low=1)

    def __post_init__(self) -> None:
        configs.validate(self)


def _run_animate(model: SinGAN, opts: AnimateOptions, *, out: Path, generator: torch.Generator) -> list[Path]:
    """``out/animation_start<s>_beta<b>.gif``."""
    frames = animate(model, opts.frames, opts.beta, opts.start_scale, batch_size=opts.batch_size, generator=generator)
    return [save_gif(frames, out / f"animation_start{opts.start_scale}_beta{opts.beta:g}.gif", opts.fps)]


APPS = {
    "inject": ModelApp("generation starting at scale N from a given image", _run_inject, InjectOptions),
    "harmonize": ModelApp(
        "blend a pasted object into the training image's look (mask dilated r=7, blurred sigma=5)",
        _blend_command(HARMONIZE_RADIUS, "harmonize"), BlendOptions,
        "Harmonisation: --ref is the training image with an object pasted in, --mask marks it. The reference is "
        "injected at --scale, regenerated by the finer scales, and blended back through the soft mask. Writes "
        "OUT/harmonize.png and OUT/harmonize_blended.png."),
    "edit": ModelApp(
        "re-render a roughly edited training image (mask dilated r=20, blurred sigma=5)",
        _blend_command(EDIT_RADIUS, "edit"), BlendOptions,
        "Editing: --ref is the training image with regions moved or copied, --mask marks them. Writes OUT/edit.png "
        "and OUT/edit_blended.png."),
    "paint": ModelApp("paint-to-image: a clip-art painting rendered in the training image's style", _run_paint,
                      PaintOptions),
    "sr": ModelApp("super-resolution with the finest scale, the paper's procedure (train with --min-size 18 "
                   "--rec-weight 100)", _run_sr, SROptions),
    "animate": ModelApp("a GIF from a random walk in noise space", _run_animate, AnimateOptions),
}


__all__ = ["APPS", "animate", "animation_noise", "edit", "fit_image", "harmonize", "inject", "load_image", "load_mask",
           "paint_to_image", "prepare_mask", "read_rgb", "save_gif", "sr_steps", "super_resolve"]
