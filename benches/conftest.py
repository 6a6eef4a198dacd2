"""Shared benchmark plumbing: environment metadata, timed runs that sync once per round, HBM floor."""

from __future__ import annotations

import functools
import os
import subprocess
import time

import pytest
import torch

os.environ.setdefault("FSGAN_FAST_POISON", "0")

import fsgan_fast  # noqa: E402

# with its index: torch.device("cuda") != torch.device("cuda:0"), and tensors report the latter
DEVICE = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"


@functools.cache
def git_sha() -> str:
    """The commit being measured: ``FSGAN_GIT_SHA`` (set by gpu.sh; a device copy may carry no .git), else git."""
    if os.environ.get("FSGAN_GIT_SHA"):
        return os.environ["FSGAN_GIT_SHA"]
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


@functools.cache
def copy_bandwidth_gbs() -> float | None:
    """Measured device-to-device copy bandwidth (read + write bytes per second), for the HBM floor."""
    if DEVICE.type != "cuda":
        return None
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / 20
    return 2 * src.numel() / seconds / 1e9


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def graph_replay_us(fn, inner: int, replays: int = 20) -> dict:
    """``fn`` x ``inner`` captured in one CUDA graph: microseconds per ``fn`` of a replay (the GPU's time with no
    launch or Python overhead), as ``{"graph_us_per_call": ...}``, or ``{"graph_error": ...}`` when capture fails."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # warm: allocator pools, lazy init
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(inner):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return {"graph_us_per_call": start.elapsed_time(end) * 1e3 / replays / inner}
    except Exception as exc:  # a capture that fails is reported, never timed
        torch.cuda.synchronize()
        return {"graph_error": f"{type(exc).__name__}: {exc}"[:300]}


def timed(benchmark, fn, *, inner: int, rounds: int, warmup: int = 2, extra: dict, graph: bool = False) -> None:
    """Time ``fn`` launched ``inner`` times per round with one sync; store extra_info (PERFORMANCE.md fields).
    ``graph``: on a GPU, also the per-call time of a CUDA-graph replay of the same calls (``graph_us_per_call``)."""

    def run():
        for _ in range(inner):
            fn()
        sync()

    benchmark.extra_info.update(
        {
            "device": device_name(),
            "inner": inner,
            "torch": torch.__version__,
            "triton": fsgan_fast._ext.module_version("triton"),
            "git_sha": git_sha(),
            **extra,
        }
    )
    nbytes = extra.get("bytes")
    bw = copy_bandwidth_gbs()
    if nbytes and bw:
        benchmark.extra_info["hbm_floor_us"] = nbytes / (bw * 1e9) * 1e6
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if graph and DEVICE.type == "cuda":
        benchmark.extra_info.update(graph_replay_us(fn, inner))
    stats = getattr(benchmark, "stats", None)
    if stats is not None and nbytes:
        per_call = stats.stats.median / inner
        benchmark.extra_info["us_per_call"] = per_call * 1e6
        benchmark.extra_info["gbs"] = nbytes / per_call / 1e9
        if bw:
            benchmark.extra_info["pct_hbm_floor"] = 100 * (nbytes / (bw * 1e9)) / per_call


# plain PyTorch/numpy variants: timed everywhere
PLAIN_VARIANTS = ("reference", "official", "eager", "loop")


def skip_reason(ops: str | tuple[str, ...], variant: str, dtype: torch.dtype = torch.float32) -> str | None:
    """Why a bench case of ``variant`` cannot or should not run here (None: run it).

    Plain variants always run; ``compiled`` (torch.compile of the reference) and ``triton`` are timed on a GPU
    only (minutes of compilation on a 2-core CPU; the Triton interpreter is a correctness tool); a native backend
    runs where every op in ``ops`` (a forward and the backward it resolves, say) has it for ``dtype``."""
    if variant in PLAIN_VARIANTS:
        return None
    on_gpu = DEVICE.type == "cuda"
    if variant == "compiled":
        return None if on_gpu else "torch.compile is timed on the GPU only (minutes of compilation on a 2-core CPU)"
    if variant == "triton" and not on_gpu:
        return "Triton timings are meaningful on a GPU only (the CPU interpreter is a correctness tool)"
    from fsgan_fast import backends

    for op in (ops,) if isinstance(ops, str) else ops:
        reason = backends.why_unavailable(op, variant, DEVICE, dtype)
        if reason:
            return reason
    return None


@pytest.fixture(autouse=True)
def _within_budget():
    """gpu.sh sets FSGAN_BENCH_DEADLINE (epoch seconds) from its time budget: past it, the remaining cases skip, so
    the run ends cleanly and writes the JSON of what it timed (an interrupt mid-case would lose all of it)."""
    deadline = float(os.environ.get("FSGAN_BENCH_DEADLINE", "inf"))
    if time.time() > deadline:
        pytest.skip("the run's time budget (gpu.sh BUDGET) is spent")


@pytest.fixture
def device() -> torch.device:
    return DEVICE
