"""The CUDA kernels in fsgan_fast._C, as nvcc built them: present for sm_90 and free of register spills.

Every ``__global__`` function of ``csrc/<op>/*.cu`` is checked, found by reading the sources, so a new op's
kernels are covered without naming them here. Runs wherever the extension was built with CUDA, GPU or not (CI
compiles for sm_90 only). cuobjdump reads the cubins: the one every GPU test needs (sm_90, H100/H200) must be
there, and ptxas must have kept each kernel in registers (no local memory, at most a few words of stack), which a
change of tile sizes or unrolling can undo without any test of the results noticing. And the build must not use
fast math: its approximate square root (one ``MUFU.SQRT``, no refinement) moves lfm's cosines by a few ulp and
flips near-tied matches; no kernel may contain one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fsgan_fast import _ext, backends

CSRC = Path(__file__).resolve().parents[2] / "csrc"
STACK_BUDGET = 64  # bytes per thread (nvcc 13 uses none; another nvcc may keep a few words there)


def _kernels_in(path: Path) -> tuple[list[str], int]:
    """(names of the ``__global__`` functions defined in a CUDA source, how many ``__global__`` it spells)."""
    src = re.sub(r"//[^\n]*|/\*.*?\*/", " ", path.read_text(), flags=re.S)  # comments
    src = re.sub(r"__launch_bounds__\s*\([^()]*(?:\([^()]*\)[^()]*)*\)", " ", src)
    return re.findall(r"__global__\s+(?:[\w:<>,*&]+\s+)*?(\w+)\s*\(", src), src.count("__global__")


def _sources(csrc: Path = CSRC) -> list[Path]:
    return sorted([*csrc.glob("*/*.cu"), *csrc.glob("*/*.cuh")])


def cuda_kernels(csrc: Path = CSRC) -> dict[str, list[str]]:
    """{op folder: names of the ``__global__`` functions its CUDA sources define}."""
    found: dict[str, list[str]] = {}
    for path in _sources(csrc):
        names = found.setdefault(path.parent.name, [])
        names += [n for n in dict.fromkeys(_kernels_in(path)[0]) if n not in names]
    return found


KERNELS = [(op, name) for op, names in cuda_kernels().items() for name in names]


def _is(mangled: str, name: str) -> bool:
    """Whether a (mangled) symbol is the kernel ``name``: Itanium names carry each identifier as <length><name>."""
    return mangled == name or f"{len(name)}{name}" in mangled


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


def test_kernel_discovery_reads_every_source():
    sources = _sources()
    assert sources, f"no csrc/<op>/*.cu under {CSRC}"
    missed = [f"{p.relative_to(CSRC)}: {count} __global__, found {names}" for p in sources
              for names, count in [_kernels_in(p)] if len(names) != count]
    assert not missed, "__global__ functions the discovery regex missed:\n" + "\n".join(missed)
    assert KERNELS, "no __global__ function in csrc/"


@pytest.mark.parametrize("op, kernel", KERNELS, ids=[f"{op}/{k}" for op, k in KERNELS])
def test_kernels_stay_in_registers(dump, op, kernel):
    _, usage, _ = dump
    instances = [(name, res) for name, res in _kernels(usage) if _is(name, kernel)]
    assert instances, f"{kernel} (csrc/{op}) is not in fsgan_fast._C"
    spilling = [f"{name}: {res}" for name, res in instances
                if res["LOCAL"] > 0 or res["STACK"] > STACK_BUDGET or res["REG"] > 255]
    assert not spilling, "kernels spilling registers:\n" + "\n".join(spilling)


@pytest.mark.parametrize("op, kernel", KERNELS, ids=[f"{op}/{k}" for op, k in KERNELS])
def test_square_roots_are_correctly_rounded(dump, op, kernel):
    _, _, sass = dump
    functions = re.split(r"\n\s*Function : ", sass)[1:]
    instances = [f for f in functions if _is(f.split("\n", 1)[0].strip(), kernel)]
    assert instances, f"no {kernel} (csrc/{op}) in the SASS of fsgan_fast._C"
    approximate = [f.split("\n", 1)[0] for f in instances if "MUFU.SQRT" in f]
    assert not approximate, "approximate square roots (built with --use_fast_math?) in:\n" + "\n".join(approximate)
