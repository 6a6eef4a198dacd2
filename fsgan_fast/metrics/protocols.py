"""Each paper's evaluation protocol, as the ``evaluate`` of its :class:`~fsgan_fast.models.registry.ModelSpec`.

``evaluate_X(model, model_options, *, options: cli.EvalOptions, device) -> dict`` returns
``{"protocol", "metrics": {name: float}, "settings": {...}, "comparable": bool, "notes": [...]}``; the CLI
prints it as a table and writes it as JSON. ``comparable`` is False when random-init networks were asked for
(``--random-weights``): such figures check the plumbing and mean nothing else.

- LoFGAN (``main_metric.py`` of the official code): per unseen class, the first ``--pool`` images are the
  conditioning pool and the rest the real set; ``--tasks`` images per class, each generated from K pool images
  drawn with replacement. FID and KID between all generated and all real images (classes pooled, as the official
  script's two folders); LPIPS (VGG) = mean distance over pairs of generated images of one class at 32x32 (a
  diversity figure: higher is more diverse), averaged over classes.
- FastGAN: FID/KID of ``--n`` samples against the training set.
- SinGAN: SIFID of ``--n`` random samples against the training image (mean and std over samples).

Generated images are rounded to 8 bits first, as the reference scripts measure saved PNGs. Figures from fewer
images than the papers' (the CPU defaults) are noted in the output.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.metrics.frechet import FeatureStats, fid_from_stats
from fsgan_fast.metrics.inception import FIDInception
from fsgan_fast.metrics.kid import KID_SUBSET_SIZE, kid

PAPER_LOFGAN_TASKS = 128
CPU_LOFGAN_TASKS = 8
PAPER_FASTGAN_SAMPLES = 5000
CPU_FASTGAN_SAMPLES = 100
LOFGAN_LPIPS_SIZE = 32


def quantize(images: Tensor) -> Tensor:
    """[-1, 1] images rounded to the 256 levels a saved PNG holds."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def _inception(options, device) -> FIDInception:
    net = FIDInception(None if options.random_weights else options.inception, random_weights=options.random_weights)
    return net.to(device)


def _pool3(inception: FIDInception, images: Tensor, batch_size: int, stats: FeatureStats, keep: list[Tensor]) -> None:
    for i in range(0, len(images), batch_size):
        f = inception.pool3(images[i:i + batch_size]).double().cpu()
        stats.update(f)
        keep.append(f)


def _fid_kid(real: tuple[FeatureStats, list[Tensor]], fake: tuple[FeatureStats, list[Tensor]], seed: int,
             subsets: int, notes: list[str]) -> dict[str, float]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fid = fid_from_stats(real[0], fake[0])
    notes += sorted({str(w.message) for w in caught})
    r, f = torch.cat(real[1]), torch.cat(fake[1])
    size = min(KID_SUBSET_SIZE, len(r), len(f))
    if size < KID_SUBSET_SIZE:
        notes.append(f"KID subsets of {size} images (torch-fidelity's default: {KID_SUBSET_SIZE})")
    k = kid(r, f, subsets=subsets, subset_size=size, seed=seed)
    return {"fid": fid, "kid_mean": k["kid_mean"], "kid_std": k["kid_std"]}


def _result(protocol: str, metrics: dict, settings: dict, comparable: bool, notes: list[str]) -> dict[str, Any]:
    if not comparable:
        notes = ["random-init Inception/LPIPS networks (--random-weights): not comparable with any published "
                 "figure", *notes]
    return {"protocol": protocol, "metrics": metrics, "settings": settings, "comparable": comparable, "notes": notes}


def _run_data(options) -> str:
    """``--data``, else the ``data`` of RUN/config.json beside the checkpoint."""
    if options.data is not None:
        return options.data
    config = Path(options.ckpt).resolve().parent / "config.json"
    try:
        data = json.loads(config.read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        data = None
    if not data:
        raise configs.ConfigError(f"--data is required: the run's dataset could not be read from {str(config)!r}")
    return data


def _on_gpu(device) -> bool:
    return torch.device(device).type != "cpu"


# ---------------------------------------------------------------------------------------------------
# LoFGAN


@dataclasses.dataclass
class LoFGANEvalOptions:
    """The knobs of LoFGAN's protocol (``fsgan-fast eval lofgan``)."""

    tasks: int | None = option(None, f"images generated per unseen class, each from its own K-shot task (default: "
                               f"{PAPER_LOFGAN_TASKS}, the paper's, on a GPU; {CPU_LOFGAN_TASKS} on a CPU)", low=2)
    pool: int = option(10, "conditioning images per unseen class (its first ones; the rest are the real set): 10 "
                       "for flower/animal, 30 for vggface in the paper", low=1)
    shots: int | None = option(None, "K of each task (default: the model's)", low=2)
    kid_subsets: int = option(100, "KID subsets", low=1)
    vgg: str | None = option(None, "VGG16 weights vgg16-397923af.pth for LPIPS (default: $FSGAN_FAST_VGG16, then "
                             "torch hub's cache)")
    use_ema: bool = option(True, "use the EMA generator when the checkpoint has one (--no-ema: the trained G)",
                           flag="ema")

    def __post_init__(self) -> None:
        configs.validate(self)


def _lofgan_split(ckpt: str, names: list[str]):
    from fsgan_fast.data import ClassSplit, DatasetError

    path = Path(ckpt).resolve().parent / "split.json"
    if not path.is_file():
        raise DatasetError(f"LoFGAN's protocol measures the run's unseen classes, listed in {str(path)!r}, which "
                           f"does not exist (keep split.json beside the checkpoint)")
    return ClassSplit.load(path, names)


def lofgan_protocol(model, classes, unseen: list[int], opts: LoFGANEvalOptions, *, inception: FIDInception, lpips,
                    device, seed: int = 0, batch_size: int = 50, tasks: int = PAPER_LOFGAN_TASKS) -> dict[str, Any]:
    """LoFGAN's protocol on ``classes`` (``ImageClasses``) restricted to the ``unseen`` class indices."""
    from fsgan_fast.data import DatasetError, to_model_range
    from fsgan_fast.metrics.lpips_pairs import mean_pairwise_lpips

    if not unseen:
        raise DatasetError("the run has no unseen classes to evaluate on (its split put every class in training)")
    shots = opts.shots or model.cfg.shots
    generator = torch.Generator().manual_seed(seed)
    real, fake = (FeatureStats(), []), (FeatureStats(), [])
    per_class_lpips, notes = [], []
    for c in unseen:
        images = classes.class_images(c)
        if len(images) <= opts.pool:
            raise DatasetError(f"class {classes.names[c]!r} has {len(images)} images: --pool {opts.pool} leaves no "
                               f"real images (lower --pool)")
        pool = to_model_range(images[:opts.pool]).to(device)
        _pool3(inception, to_model_range(images[opts.pool:]).to(device), batch_size, *real)
        picks = torch.randint(opts.pool, (tasks, shots), generator=generator)  # with replacement, as the official
        task_seeds = torch.randint(2 ** 62, (tasks,), generator=generator)
        fakes = torch.cat([
            model.generate(pool[picks[t]], 1, torch.Generator(device).manual_seed(int(task_seeds[t])),
                           use_ema=opts.use_ema)
            for t in range(tasks)])
        fakes = quantize(fakes)
        _pool3(inception, fakes, batch_size, *fake)
        small = F.interpolate(fakes, size=(LOFGAN_LPIPS_SIZE, LOFGAN_LPIPS_SIZE), mode="bilinear",
                              align_corners=False)
        per_class_lpips.append(mean_pairwise_lpips(lpips, small.to(device)))
    metrics = _fid_kid(real, fake, seed, opts.kid_subsets, notes)
    metrics["lpips"] = sum(per_class_lpips) / len(per_class_lpips)
    if tasks != PAPER_LOFGAN_TASKS:
        notes.append(f"{tasks} tasks per class, not the paper's {PAPER_LOFGAN_TASKS} (--tasks)")
    settings = {"unseen_classes": [classes.names[c] for c in unseen], "tasks_per_class": tasks, "shots": shots,
                "pool": opts.pool, "generated": fake[0].n, "real": real[0].n}
    return _result("LoFGAN protocol: unseen classes, FID/KID generated vs real, LPIPS among generated (32 px)",
                   metrics, settings, inception.comparable, notes)


def evaluate_lofgan(model, opts: LoFGANEvalOptions, *, options, device) -> dict[str, Any]:
    from fsgan_fast.data import load_classes
    from fsgan_fast.perceptual import LPIPS

    data = _run_data(options)
    if model.gen_ema is None and opts.use_ema is False:
        raise configs.ConfigError("--no-ema given but the checkpoint has no EMA generator to skip")
    classes = load_classes(data, model.cfg.size)
    split = _lofgan_split(options.ckpt, classes.names)
    inception = _inception(options, device)
    lpips = (LPIPS(random_backbone=True) if options.random_weights else LPIPS(opts.vgg)).to(device)
    tasks = opts.tasks or (PAPER_LOFGAN_TASKS if _on_gpu(device) else CPU_LOFGAN_TASKS)
    return lofgan_protocol(model, classes, split.unseen, opts, inception=inception, lpips=lpips, device=device,
                           seed=options.seed, batch_size=options.batch_size, tasks=tasks)


# ---------------------------------------------------------------------------------------------------
# FastGAN


@dataclasses.dataclass
class FastGANEvalOptions:
    """The knobs of FastGAN's protocol (``fsgan-fast eval fastgan``)."""

    n: int | None = option(None, f"generated images (default: {PAPER_FASTGAN_SAMPLES}, the paper's, on a GPU; "
                           f"{CPU_FASTGAN_SAMPLES} on a CPU)", low=2)
    kid_subsets: int = option(100, "KID subsets", low=1)
    use_ema: bool = option(True, "use the EMA generator when the checkpoint has one (--no-ema: the trained G)",
                           flag="ema")

    def __post_init__(self) -> None:
        configs.validate(self)


def fastgan_protocol(model, real_images: Tensor, opts: FastGANEvalOptions, *, inception: FIDInception, device,
                     seed: int = 0, batch_size: int = 50, n: int = PAPER_FASTGAN_SAMPLES) -> dict[str, Any]:
    """FID/KID of ``n`` samples vs ``real_images`` (uint8 ``[N, 3, S, S]``)."""
    from fsgan_fast.data import to_model_range

    real, fake, notes = (FeatureStats(), []), (FeatureStats(), []), []
    for i in range(0, len(real_images), batch_size):
        _pool3(inception, to_model_range(real_images[i:i + batch_size]).to(device), batch_size, *real)
    generator = torch.Generator(device).manual_seed(seed)
    # one draw of all latents up front: the samples do not depend on batch_size
    samples = model.generate(n, generator, batch_size=batch_size, use_ema=opts.use_ema)
    _pool3(inception, quantize(samples), batch_size, *fake)
    metrics = _fid_kid(real, fake, seed, opts.kid_subsets, notes)
    if n != PAPER_FASTGAN_SAMPLES:
        notes.append(f"{n} samples, not the paper's {PAPER_FASTGAN_SAMPLES} (--n)")
    return _result("FastGAN protocol: FID/KID of samples vs the training set", metrics,
                   {"generated": fake[0].n, "real": real[0].n}, inception.comparable, notes)


def evaluate_fastgan(model, opts: FastGANEvalOptions, *, options, device) -> dict[str, Any]:
    from fsgan_fast.data.image_set import load_images

    if model.gen_ema is None and opts.use_ema is False:
        raise configs.ConfigError("--no-ema given but the checkpoint has no EMA generator to skip")
    images = load_images(_run_data(options), model.cfg.size)
    n = opts.n or (PAPER_FASTGAN_SAMPLES if _on_gpu(device) else CPU_FASTGAN_SAMPLES)
    return fastgan_protocol(model, images, opts, inception=_inception(options, device), device=device,
                            seed=options.seed, batch_size=options.batch_size, n=n)


# ---------------------------------------------------------------------------------------------------
# SinGAN


@dataclasses.dataclass
class SinGANEvalOptions:
    """The knobs of SinGAN's protocol (``fsgan-fast eval singan``)."""

    n: int = option(50, "random samples, each compared with the training image", low=1)

    def __post_init__(self) -> None:
        configs.validate(self)


def singan_protocol(model, opts: SinGANEvalOptions, *, inception: FIDInception, device, seed: int = 0,
                    ) -> dict[str, Any]:
    from fsgan_fast.metrics.sifid import sifid

    generator = torch.Generator(device).manual_seed(seed)
    real = quantize(model.real[0])
    samples = torch.cat([quantize(model.sample(1, generator=generator)) for _ in range(opts.n)])
    values = torch.tensor(sifid(inception, real, samples), dtype=torch.float64)
    metrics = {"sifid_mean": float(values.mean()), "sifid_std": float(values.std()) if len(values) > 1 else 0.0}
    return _result("SinGAN protocol: SIFID of random samples vs the training image", metrics,
                   {"samples": opts.n, "size": list(real.shape[-2:])}, inception.comparable, [])


def evaluate_singan(model, opts: SinGANEvalOptions, *, options, device) -> dict[str, Any]:
    # the training image is in the checkpoint (model.real): --data is not needed
    return singan_protocol(model, opts, inception=_inception(options, device), device=device, seed=options.seed)


__all__ = ["LoFGANEvalOptions", "FastGANEvalOptions", "SinGANEvalOptions", "evaluate_lofgan", "evaluate_fastgan",
           "evaluate_singan", "lofgan_protocol", "fastgan_protocol", "singan_protocol", "quantize"]
