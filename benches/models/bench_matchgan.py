"""MatchGAN training: one iteration with both steps (D: WGAN-GP, class and matching losses; G: adversarial, class,
cycle reconstruction and matching losses), a labelled and an unlabelled iteration per round.

On a GPU: the reference networks at 128 px (G 8.4M, D 44.8M parameters + the pair head), batch 16 = 4 classes x 4
images, five attributes (CelebA's selection, 16 classes), in fp32 and bf16 autocast; ``pass="train_step"`` is the
mean of the two iterations of a round. The reference's n_critic = 5 runs four D-only iterations between these, so
its per-iteration average is lower. On the CPU: a tiny 32 px model once, so that CI runs the case in seconds. Each
case checks that one iteration's losses are finite before timing.
"""

from __future__ import annotations

import math

import pytest
import torch

from benches.conftest import DEVICE, timed
from fsgan_fast.data.attributes import LabelledImages
from fsgan_fast.models.matchgan import CELEBA_ATTRS, CELEBA_EXCLUSIVE, MatchGAN, MatchGANConfig
from fsgan_fast.train.matchgan import GroupBatchSampler, MatchGANTrainConfig, MatchGANTrainer

ON_GPU = DEVICE.type == "cuda"
BATCH = 16
# (config name, amp): the paper's model on a GPU; the tiny one here
ROWS = [("tiny", "none"), ("paper", "none"), ("paper", "bf16")]
DTYPES = {"none": "float32", "bf16": "bfloat16"}


def model_config(name: str) -> MatchGANConfig:
    if name == "paper":
        return MatchGANConfig()  # the defaults are the reference's 128 px CelebA model
    return MatchGANConfig(size=32, g_conv_dim=8, d_conv_dim=8, g_repeat_num=2, d_repeat_num=4)


def _data(cfg: MatchGANConfig, n: int = 256) -> LabelledImages:
    """Random images with random valid labels, half of them labelled: the timing does not depend on the content."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, cfg.size, cfg.size), dtype=torch.uint8, generator=g)
    classes = cfg.class_vectors()
    labels = classes[torch.randint(len(classes), (n,), generator=g)]
    labelled = torch.arange(n) % 2 == 0
    groups = tuple(tuple(s.split(",")) for s in cfg.exclusive)
    return LabelledImages(images, labels, list(cfg.labels), "attributes", labelled=labelled, exclusive=groups,
                          source="random").to(DEVICE)


@pytest.mark.parametrize("config, amp", ROWS, ids=[f"{c}-{a}" for c, a in ROWS])
def bench_matchgan_train_step(benchmark, config, amp):
    if ON_GPU != (config == "paper"):
        pytest.skip("the paper's model is timed on a GPU, the tiny one on the CPU")
    cfg = model_config(config)
    torch.manual_seed(0)
    generator = torch.Generator(DEVICE).manual_seed(0)
    sampler = GroupBatchSampler(_data(cfg), BATCH, generator=generator)
    train = MatchGANTrainConfig(batch=BATCH, n_critic=1, amp=amp, iters=100_000)
    trainer = MatchGANTrainer(MatchGAN(cfg), train, generator, sampler)
    assert (list(cfg.labels), cfg.exclusive) == (list(CELEBA_ATTRS), CELEBA_EXCLUSIVE)

    def two_iterations() -> None:
        trainer.train_step(sampler.sample())  # labelled: every loss term
        trainer.train_step(sampler.sample())  # unlabelled: no class / matching loss for D, no reconstruction

    losses = trainer.train_step(sampler.sample())  # also warms up this shape
    assert all(math.isfinite(v) for v in torch.stack(list(losses.values())).tolist()), losses
    trainer.train_step(sampler.sample())
    benchmark.group = f"matchgan/train_step/{config}-b{BATCH}s{cfg.size}/{amp}"
    if ON_GPU:
        torch.cuda.reset_peak_memory_stats()
    timed(benchmark, two_iterations, inner=1, rounds=20 if ON_GPU else 2, warmup=2 if ON_GPU else 0, extra={
        "model": "matchgan", "backend": "eager", "pass": "train_step", "dtype": DTYPES[amp], "config": config,
        "shape": {"B": BATCH, "size": cfg.size, "C": cfg.c_dim}, "iterations_per_round": 2, "n_critic": 1})
    if ON_GPU:
        benchmark.extra_info["peak_gpu_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["ms_per_iteration"] = stats.stats.median / 2 * 1e3
