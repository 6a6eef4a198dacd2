"""The CMake build (libfsgan_fast_ops, for libtorch users) configures, builds (CPU only), defines the same private
op schemas as fsgan_fast/ops/lfm.py, and its CPU kernels agree with the reference.

The library is loaded in a subprocess that never imports fsgan_fast: both define the schemas, and one process
may define them only once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fsgan_fast.ops import lfm

ROOT = Path(__file__).resolve().parents[1]
MIN_CMAKE = (3, 26)
OP_NAMES = [stem.format(dev=dev) for dev in ("cpu", "cuda") for stem in lfm.NATIVE_SCHEMAS]

# Runs in the subprocess: load the library, print the schemas, run the three CPU ops on the saved inputs.
CHILD = textwrap.dedent(
    """
    import json, sys, torch
    lib, names, inputs, outputs = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.ops.load_library(lib)
    ops = torch.ops.fsgan_fast
    print(json.dumps({name: str(getattr(ops, name).default._schema) for name in names}))
    x, base, pos, alpha, grad = torch.load(inputs)
    fused, ref_idx = ops._lfm_fuse_cpu(x, base, pos, alpha)
    applied = ops._lfm_apply_cpu(x, base, pos, ref_idx, alpha)
    grad_x, grad_alpha = ops._lfm_apply_backward_cpu(grad, x, base, pos, ref_idx, alpha)
    torch.save((fused, ref_idx, applied, grad_x, grad_alpha), outputs)
    """
)


def _cmake() -> str:
    exe = shutil.which("cmake")
    if exe is None:
        pytest.skip("cmake is not installed (pip install 'cmake>=3.26')")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\d+)\.(\d+)", out)
    if found is None or tuple(map(int, found.groups())) < MIN_CMAKE:
        pytest.skip(f"cmake >= {'.'.join(map(str, MIN_CMAKE))} is needed, found: {out.splitlines()[0]}")
    return exe


def _cuda_args() -> list[str]:
    """torch's CMake config of a CUDA build looks for the CUDA toolkit even when we build for the CPU only."""
    if torch.version.cuda is None:
        return []
    from torch.utils.cpp_extension import CUDA_HOME

    # cpp_extension guesses CUDA_HOME from `nvcc` on PATH, which may be a wrapper script outside the toolkit
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda", CUDA_HOME):
        if root and (Path(root) / "bin" / "nvcc").exists() and (Path(root) / "include" / "cuda_runtime_api.h").exists():
            return [f"-DCUDA_TOOLKIT_ROOT_DIR={root}"]
    pytest.skip(f"torch is built with CUDA {torch.version.cuda}; its CMake config needs the CUDA toolkit, not found")


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{what} failed ({' '.join(cmd)}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def cmake_library(tmp_path_factory) -> Path:
    cmake = _cmake()
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx}) found")
    build = tmp_path_factory.mktemp("cmake_build")
    _run(
        [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            "-DFSGAN_FAST_WITH_CUDA=OFF",
            *_cuda_args(),
        ],
        "cmake configure",
    )
    _run([cmake, "--build", str(build), "-j", str(os.cpu_count() or 1)], "cmake build")
    libs = sorted(build.glob("libfsgan_fast_ops.*"))
    assert libs, f"no libfsgan_fast_ops in {build}: {sorted(p.name for p in build.iterdir())}"
    return libs[0]


@pytest.fixture(scope="module")
def cmake_run(cmake_library, tmp_path_factory):
    """(schemas printed by the library, inputs, outputs of its CPU ops)."""
    tmp = tmp_path_factory.mktemp("cmake_run")
    gen = torch.Generator().manual_seed(0)
    B, K, C, H, W, n = 3, 4, 5, 6, 7, 11
    x = torch.randn(B, K, C, H, W, generator=gen, dtype=torch.float64)
    base = torch.randint(0, K, (B,), generator=gen)
    pos = torch.stack([torch.randperm(H * W, generator=gen)[:n] for _ in range(B)])
    alpha = torch.rand(B, K, generator=gen, dtype=torch.float64)
    grad = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    inputs = (x, base, pos, alpha, grad)
    torch.save(inputs, tmp / "inputs.pt")
    child = [sys.executable, "-c", CHILD, str(cmake_library), json.dumps(OP_NAMES), str(tmp / "inputs.pt")]
    proc = _run([*child, str(tmp / "outputs.pt")], "loading libfsgan_fast_ops")
    schemas = json.loads(proc.stdout.strip().splitlines()[-1])
    return schemas, inputs, torch.load(tmp / "outputs.pt")


def test_cmake_schemas_match_python(cmake_run):
    schemas, _, _ = cmake_run
    python = {name: str(getattr(torch.ops.fsgan_fast, name).default._schema) for name in OP_NAMES}
    assert schemas == python


def test_cmake_cpu_kernels_match_reference(cmake_run):
    _, (x, base, pos, alpha, grad), (fused, ref_idx, applied, grad_x, grad_alpha) = cmake_run
    fused_ref, ref_idx_ref = lfm.lfm_fuse_reference(x, base, pos, alpha)
    grad_x_ref, grad_alpha_ref = lfm.lfm_apply_backward_reference(grad, x, base, pos, ref_idx_ref, alpha)
    torch.testing.assert_close(ref_idx, ref_idx_ref, rtol=0, atol=0)
    torch.testing.assert_close(fused, fused_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(applied, fused_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_x, grad_x_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_alpha, grad_alpha_ref, rtol=1e-12, atol=1e-12)
