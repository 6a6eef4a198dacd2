"""Few-shot SMIS end to end: pseudo-label generation (the prior's samples to masks, the training data of every encoder
step) and the encoder's train step.

On a GPU: the paper's networks at 256 px (a random-init rosinality StyleGAN2 config-f prior: style_dim 512, channel
multiplier 2; the IR-SE-50 GradualStyleEncoder), pseudo labels of batches of 8 at the 64x64 matching layer, the
encoder step at the reference's batch 2 and at 8, fp32 and bf16 autocast. On the CPU: a 64 px prior narrowed to 32
channels and a one-unit-per-stage encoder, so CI runs each case in seconds. The backend picks the implementation of
``cosine_topk`` (dense and sparse rules); a backend that cannot run here is skipped with the reason; each case checks
its labels against the reference backend's once before timing.
"""

from __future__ import annotations

import math

import pytest
import torch

import fsgan_fast
from benches.conftest import DEVICE, timed
from fsgan_fast import backends
from fsgan_fast.data.mask_pairs import builtin_pairs
from fsgan_fast.models.smis import (
    SMIS,
    SMISConfig,
    dense_prototypes,
    dense_pseudo_labels,
    sparse_prototypes,
    sparse_pseudo_labels,
)
from fsgan_fast.nn.psp import EncoderConfig
from fsgan_fast.nn.stylegan2 import StyleGAN2Config
from fsgan_fast.ops import Prototypes
from fsgan_fast.train.smis import SMISTrainConfig, SMISTrainer

ON_GPU = DEVICE.type == "cuda"
LABEL_NC = 6
if ON_GPU:
    CONFIG_NAME, LABEL_BATCH, TRAIN_BATCHES = "paper-256", 8, [2, 8]
    MODEL = SMISConfig(stylegan=StyleGAN2Config(size=256), label_nc=LABEL_NC)
else:
    CONFIG_NAME, LABEL_BATCH, TRAIN_BATCHES = "tiny-64", 2, [2]
    MODEL = SMISConfig(stylegan=StyleGAN2Config(size=64, style_dim=64, n_mlp=4, channel_multiplier=1, channel_max=32),
                       encoder=EncoderConfig(blocks=(1, 1, 1, 1), widths=(16, 16, 32, 32)), label_nc=LABEL_NC)

BACKENDS = ["reference", "cpu", "triton", "cuda"]
AMPS = ["none", "bf16"] if ON_GPU else ["none"]
DTYPES = {"none": torch.float32, "bf16": torch.bfloat16}
ROUNDS, WARMUP = (20, 3) if ON_GPU else (3, 1)


def _skip_reason(backend: str) -> str | None:
    if backend == "triton" and not ON_GPU:
        return "Triton timings are meaningful on a GPU only (the CPU interpreter is a correctness tool)"
    return backends.why_unavailable("cosine_topk", backend, DEVICE, torch.float32)


_CACHE: dict[str, object] = {}


def _model() -> SMIS:
    """One model per session: a random-init prior with live noise, latent_avg set, prototypes from one shot."""
    if "model" not in _CACHE:
        torch.manual_seed(0)
        model = SMIS(MODEL).to(DEVICE).eval()
        g = torch.Generator(DEVICE).manual_seed(0)
        with torch.no_grad(), fsgan_fast.use_backend("reference"):
            model.set_latent_avg(model.decoder.mean_latent(4096, generator=g))
            pairs = builtin_pairs(model.size, LABEL_NC).first(1)
            sparse = builtin_pairs(model.size, LABEL_NC, sparse=True).first(1)
            w = model.random_w(1, g)
            _, feats = model.features(w, random_noise=False)
            _CACHE["dense"] = dense_prototypes(feats.float(), pairs.masks.to(DEVICE), LABEL_NC)
            _CACHE["sparse"] = sparse_prototypes(feats.float(), sparse.masks.to(DEVICE), LABEL_NC)
        _CACHE["model"] = model
    return _CACHE["model"]


def _labels(feats: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "dense":
        return dense_pseudo_labels(feats, Prototypes(*_CACHE["dense"]))
    vectors, classes = _CACHE["sparse"]
    return sparse_pseudo_labels(feats, vectors, classes, LABEL_NC)


def _extra(backend: str, passes: str, amp: str, batch: int, **more) -> dict:
    return {"model": "smis", "backend": backend, "pass": passes, "shape": {"B": batch, "size": MODEL.size},
            "dtype": str(DTYPES[amp]).removeprefix("torch."), "config": CONFIG_NAME, **more}


@pytest.mark.parametrize("mode", ["dense", "sparse"])
@pytest.mark.parametrize("backend", BACKENDS)
def bench_smis_pseudo_labels(benchmark, backend, mode):
    """Prior samples to pseudo masks: z -> w -> image + 64x64 features (fresh noise) -> labels."""
    reason = _skip_reason(backend)
    if reason:
        pytest.skip(reason)
    model = _model()
    benchmark.group = f"smis/pseudo_labels/{CONFIG_NAME}-b{LABEL_BATCH}/{mode}"
    g = torch.Generator(DEVICE).manual_seed(1)
    z = torch.randn(LABEL_BATCH, model.style_dim, generator=g, device=DEVICE)

    @torch.no_grad()
    def run() -> torch.Tensor:
        w = model.decoder.get_latent(z)
        _, feats = model.features(w, noise=model.decoder.make_noise(LABEL_BATCH, generator=g, device=DEVICE))
        return _labels(feats.float(), mode)

    with torch.no_grad():  # the same labels as the reference backend on the same features
        _, feats = model.features(model.decoder.get_latent(z), random_noise=False)
        with fsgan_fast.use_backend("reference"):
            expected = _labels(feats.float(), mode)
        with fsgan_fast.use_backend(backend):
            got = _labels(feats.float(), mode)
    agree = float((got == expected).float().mean())
    assert agree >= 0.999, f"{backend}: {100 * (1 - agree):.2f}% of the labels differ from the reference backend's"
    with fsgan_fast.use_backend(backend):
        assert run().shape == (LABEL_BATCH, model.cfg.matching_res, model.cfg.matching_res)
        assert fsgan_fast.last_backend("cosine_topk") == backend
        timed(benchmark, run, inner=1, rounds=ROUNDS, warmup=WARMUP, extra=_extra(backend, mode, "none", LABEL_BATCH))
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["masks_per_s"] = LABEL_BATCH / stats.stats.median


@pytest.mark.parametrize("batch", TRAIN_BATCHES)
@pytest.mark.parametrize("amp", AMPS)
@pytest.mark.parametrize("backend", BACKENDS)
def bench_smis_encoder_step(benchmark, backend, amp, batch):
    """One encoder step: pseudo-labelled prior samples, the encoder forward and backward on the latent MSE, Ranger."""
    reason = _skip_reason(backend)
    if reason:
        pytest.skip(reason)
    if not ON_GPU and backend != "reference":
        pytest.skip("on the CPU the step is timed once, with the reference backend (the labels are a small part)")
    model = _model()
    benchmark.group = f"smis/encoder_step/{CONFIG_NAME}-b{batch}/{amp}"
    cfg = SMISTrainConfig(iters=100_000, invert_steps=1, batch=batch, amp=amp, perceptual="none")
    trainer = SMISTrainer(model, cfg, torch.Generator(DEVICE).manual_seed(0),
                          builtin_pairs(model.size, LABEL_NC).first(1))
    trainer.prototypes = {"vectors": _CACHE["dense"].vectors, "present": _CACHE["dense"].present}
    trainer.step = 1
    trainer.begin_stage(1)
    with fsgan_fast.use_backend(backend):
        losses = trainer.train_step()
        assert all(math.isfinite(v) for v in torch.stack(list(losses.values())).tolist()), losses
        timed(benchmark, trainer.train_step, inner=1, rounds=ROUNDS, warmup=WARMUP,
              extra=_extra(backend, "encoder_step", amp, batch, optim=cfg.optim))
    model.eval()
