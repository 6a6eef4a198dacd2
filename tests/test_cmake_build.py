"""The CMake build (libfsgan_fast_ops, for libtorch users) configures, builds (CPU only), defines exactly the
private op schemas that the Python package defines (every op's, from ``native_schemas()``), and its CPU kernels
agree with the reference on each op family's case (``@kit.native_cases`` in ``tests/ops/test_<op>.py``).

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

from tests.ops import kit

ROOT = Path(__file__).resolve().parents[1]
MIN_CMAKE = (3, 26)

# Runs in the subprocess: load the library, print every fsgan_fast schema it defines, run the saved calls.
CHILD = textwrap.dedent(
    """
    import json, sys, torch
    lib, calls, outputs = sys.argv[1:4]
    torch.ops.load_library(lib)
    defined = sorted({str(s) for s in torch._C._jit_get_all_schemas() if s.name.startswith("fsgan_fast::")})
    results = []
    for name, inputs in torch.load(calls):
        out = getattr(torch.ops.fsgan_fast, name)(*inputs)
        results.append(tuple(out) if isinstance(out, (tuple, list)) else (out,))
    torch.save(results, outputs)
    print(json.dumps(defined))
    """
)


def _python_schemas() -> dict[str, str]:
    """{private op: schema as the dispatcher prints it} of every native op the Python package defines."""
    names = kit.native_schemas()
    assert names, "no private native op schemas found (fsgan_fast.ops._common.native_schemas / NATIVE_SCHEMAS)"
    return {name: str(getattr(torch.ops.fsgan_fast, name).default._schema) for name in names}


def _cases() -> list[kit.NativeCase]:
    kit.load_op_tests()
    return [case for make in kit.NATIVE_CASES.values() for case in make()]


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
    """(schemas the library defines, [(case, outputs of the library's op)])."""
    tmp = tmp_path_factory.mktemp("cmake_run")
    cases = _cases()
    torch.save([(case.op, case.inputs) for case in cases], tmp / "calls.pt")
    proc = _run([sys.executable, "-c", CHILD, str(cmake_library), str(tmp / "calls.pt"), str(tmp / "outputs.pt")],
                "loading libfsgan_fast_ops")
    defined = json.loads(proc.stdout.strip().splitlines()[-1])
    return defined, list(zip(cases, torch.load(tmp / "outputs.pt")))


def test_every_native_cpu_op_has_a_case():
    """Each private CPU op must be run by some family's case; a new op registers one with @kit.native_cases."""
    covered = {case.op for case in _cases()}
    owner = {f"{kit.op_spec(op).native}_cpu": kit.family(op) for op in kit.registered_ops()}
    missing = [f"{name} (family {owner.get(name, '?')!r})" for name in sorted(kit.native_schemas())
               if name.endswith("_cpu") and name not in covered]
    assert not missing, (f"no CMake CPU case runs {missing}: add a @kit.native_cases('<family>') function to "
                         f"tests/ops/test_<family>.py (families with cases: {sorted(kit.NATIVE_CASES)})")
    unknown = sorted(covered - set(kit.native_schemas()))
    assert not unknown, f"native cases call ops that Python does not define: {unknown}"


def test_cmake_schemas_match_python(cmake_run):
    defined, _ = cmake_run
    python = sorted(_python_schemas().values())
    assert defined == python, (f"only in libfsgan_fast_ops: {sorted(set(defined) - set(python))}\n"
                               f"only in Python: {sorted(set(python) - set(defined))}")


def test_cmake_cpu_kernels_match_reference(cmake_run):
    _, runs = cmake_run
    for case, outputs in runs:
        assert len(outputs) == len(case.expected), f"{case.op}: {len(outputs)} outputs, expected {len(case.expected)}"
        for i, (got, want) in enumerate(zip(outputs, case.expected)):
            kit.assert_close(got, want, case.atol if want.is_floating_point() else 0, f"{case.op} output {i}",
                             check_dtype=True)
