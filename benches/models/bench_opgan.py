"""OP-GAN end to end: one training iteration (both generators, the D step over pooled fakes, the Siamese network S's
step over 3x3 patch grids, the G step with cycle, identity and L_S) and translation, per backend of the patch op.

On a GPU: the paper's networks (CycleGAN's 9-block ResNet generators and 70x70 PatchGANs at 256 px, S with 11x11x512
features) at CycleGAN's batch 1 and at batch 8, in fp32 and bf16 autocast. On the CPU: a tiny 32 px model once
(fp32), so CI runs each case in seconds. The backend picks the implementation of ``crop_resize`` (forward and
backward), which ``patch_grid`` runs for every cell of every image in one launch; a backend that cannot run here is
skipped with the reason. Each case checks S's patches against the reference backend once before timing.
"""

from __future__ import annotations

import math

import pytest
import torch

import fsgan_fast
from benches.conftest import DEVICE, skip_reason, timed
from fsgan_fast.models.opgan import OPGAN, OPGANConfig
from fsgan_fast.train.loop import Precision
from fsgan_fast.train.opgan import OPGANTrainConfig, OPGANTrainer

ON_GPU = DEVICE.type == "cuda"
if ON_GPU:
    CONFIG_NAME, SIZE, BATCHES = "paper", 256, [1, 8]
else:  # narrow networks at 32 px: a train step takes well under a second on 2 cores
    CONFIG_NAME, SIZE, BATCHES = "tiny", 32, [2]
BACKENDS = ["reference", "cpu", "triton", "cuda"]
AMPS = ["none", "bf16"] if ON_GPU else ["none"]
DTYPES = {"none": torch.float32, "bf16": torch.bfloat16}
TRANSLATE_BATCH = 8


def model_config() -> OPGANConfig:
    if ON_GPU:
        return OPGANConfig(size=SIZE)  # the defaults are the paper's networks
    return OPGANConfig(size=SIZE, ngf=8, ndf=8, ns=8, n_blocks=2)


def _skip(backend: str, amp: str) -> str | None:
    return skip_reason(("crop_resize", "crop_resize_backward"), backend, DTYPES[amp])


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1).to(DEVICE)


def _extra(backend: str, passes: str, amp: str, batch: int) -> dict:
    return {"model": "opgan", "backend": backend, "pass": passes, "shape": {"B": batch, "size": SIZE},
            "dtype": str(DTYPES[amp]).removeprefix("torch."), "config": CONFIG_NAME}


def _check_patches_against_reference(model: OPGAN, backend: str, batch: int) -> None:
    """S's patches (the op under test) with ``backend`` equal the reference backend's, forward and backward."""
    x = _images(batch, 5)
    grads = {}
    for name in ("reference", backend):
        src = x.clone().requires_grad_()
        with fsgan_fast.use_backend(name):
            patches = model.siamese.patches(src, src * 0.5)
            weights = torch.linspace(-1, 1, patches.numel(), device=DEVICE).view_as(patches)
            (patches * weights).sum().backward()
        assert fsgan_fast.last_backend("crop_resize") == name
        grads[name] = (patches.detach(), src.grad)
    for got, ref in zip(grads[backend], grads["reference"]):
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        assert err <= 1e-5, f"{backend}: relative error {err:.2e} against the reference backend"


def _peak_memory(benchmark) -> None:
    if ON_GPU:
        benchmark.extra_info["peak_gpu_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("amp", AMPS)
@pytest.mark.parametrize("backend", BACKENDS)
def bench_opgan_train_step(benchmark, backend, amp, batch):
    reason = _skip(backend, amp)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"opgan/train_step/{CONFIG_NAME}-b{batch}s{SIZE}/{amp}"
    torch.manual_seed(0)
    model = OPGAN(model_config())
    generator = torch.Generator(DEVICE).manual_seed(0)
    trainer = OPGANTrainer(model, OPGANTrainConfig(iters=100_000, batch=batch, amp=amp), generator)
    _check_patches_against_reference(model, backend, batch)
    real = (_images(batch, 1), _images(batch, 2))
    with fsgan_fast.use_backend(backend):
        losses = trainer.train_step(real)  # warm-up
        assert all(math.isfinite(v) for v in torch.stack(list(losses.values())).tolist()), losses
        assert fsgan_fast.last_backend("crop_resize") == backend
        if ON_GPU:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        timed(benchmark, lambda: trainer.train_step(real), inner=1, rounds=20 if ON_GPU else 3,
              warmup=3 if ON_GPU else 1, extra=_extra(backend, "train_step", amp, batch))
    _peak_memory(benchmark)


@pytest.mark.parametrize("amp", AMPS)
def bench_opgan_translate(benchmark, amp):
    """G_ab on a batch (no custom op inside: one row per precision, not per backend)."""
    benchmark.group = f"opgan/generate/{CONFIG_NAME}-b{TRANSLATE_BATCH}s{SIZE}/{amp}"
    torch.manual_seed(0)
    model = OPGAN(model_config()).to(DEVICE).eval()
    precision = Precision(amp, DEVICE)
    x = _images(TRANSLATE_BATCH, 3)

    def translate() -> torch.Tensor:
        with precision.autocast():
            return model.translate(x, "ab", batch_size=TRANSLATE_BATCH)

    assert translate().shape == x.shape
    if ON_GPU:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timed(benchmark, translate, inner=5 if ON_GPU else 1, rounds=20 if ON_GPU else 3, warmup=2 if ON_GPU else 1,
          extra=_extra("eager", "generate", amp, TRANSLATE_BATCH))
    _peak_memory(benchmark)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["images_per_s"] = TRANSLATE_BATCH * (5 if ON_GPU else 1) / stats.stats.median
