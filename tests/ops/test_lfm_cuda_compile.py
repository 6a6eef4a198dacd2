"""The CUDA kernels in fsgan_fast._C, as nvcc built them: present for sm_90 and free of register spills.

Runs wherever the extension was built with CUDA, GPU or not (CI compiles for sm_90 only). cuobjdump
reads the cubins: the one every GPU test needs (sm_90, H100/H200) must be there, and ptxas must have kept
each kernel in registers (no local memory, at most a few words of stack), which a change of tile sizes or unrolling can undo
without any test of the results noticing. And the build must not use fast math: its approximate square
root (one ``MUFU.SQRT``, no refinement) moves cosines by a few ulp and flips near-tied matches.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from fsgan_fast import _ext, backends

KERNELS = ("lfm_forward_kernel", "lfm_backward_kernel")
STACK_BUDGET = 64  # bytes per thread (nvcc 13 uses none; another nvcc may keep a few words there)


def _cuobjdump() -> str | None:
    """The toolkit's own first (it matches the nvcc that built the extension), else triton's bundled one."""
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"),
                  shutil.which("cuobjdump")]
    if backends.triton_installed():
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in candidates if c and os.path.exists(c)), None)


def _run(tool: str, *args: str) -> str:
    proc = subprocess.run([tool, *args], capture_output=True, text=True)
    if proc.returncode != 0:  # e.g. a cuobjdump older than the nvcc that wrote the cubins
        pytest.skip(f"{tool} {args[0]} failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def dump():
    _ext.load()
    if not _ext.built_with_cuda():
        pytest.skip(f"fsgan_fast._C was not built with CUDA kernels ({_ext.load_error or 'CPU-only build'})")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or triton wheel) to read the compiled kernels")
    library = _ext.C.__file__
    return _run(tool, "--list-elf", library), _run(tool, "--dump-resource-usage", library), _run(tool, "-sass", library)


def _kernels(usage: str) -> list[tuple[str, dict[str, int]]]:
    """(mangled name, {REG, STACK, SHARED, LOCAL}) of every function in the dump."""
    found = re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", usage)
    return [(name, {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", res)}) for name, res in found]


def test_sm90_code_is_built(dump):
    elves, _, _ = dump
    archs = set(re.findall(r"\.sm_(\d+)[a-z]?\.cubin", elves))
    assert "90" in archs, f"fsgan_fast._C holds cubins for sm_{sorted(archs)}, none for sm_90 (H100/H200)"


def test_kernels_stay_in_registers(dump):
    _, usage, _ = dump
    kernels = _kernels(usage)
    for wanted in KERNELS:
        assert any(wanted in name for name, _ in kernels), f"{wanted} is not in fsgan_fast._C"
    spilling = [f"{name}: {res}" for name, res in kernels if any(w in name for w in KERNELS)
                and (res["LOCAL"] > 0 or res["STACK"] > STACK_BUDGET or res["REG"] > 255)]
    assert not spilling, "kernels spilling registers:\n" + "\n".join(spilling)


def test_square_roots_are_correctly_rounded(dump):
    _, _, sass = dump
    functions = re.split(r"\n\s*Function : ", sass)[1:]
    forward = [f for f in functions if f.startswith("_") and "lfm_forward_kernel" in f.split("\n", 1)[0]]
    assert forward, "no lfm_forward_kernel in the SASS of fsgan_fast._C"
    approximate = [f.split("\n", 1)[0] for f in forward if "MUFU.SQRT" in f]
    assert not approximate, "approximate square roots (built with --use_fast_math?) in:\n" + "\n".join(approximate)
