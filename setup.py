"""Builds fsgan_fast and its extension fsgan_fast._C (CPU kernels always, CUDA kernels when possible).

Environment:
  FSGAN_FAST_BUILD_EXT=0        pure-Python install (the ops fall back to Triton / the reference)
  FSGAN_FAST_BUILD_CUDA=0|1|auto  CUDA kernels: auto = whenever torch has CUDA and nvcc is found
  TORCH_CUDA_ARCH_LIST          GPU architectures; with no GPU visible the default below is used
  MAX_JOBS, NVCC_THREADS        parallelism (defaults derived from CPU count and RAM)
"""

from __future__ import annotations

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Turing..Hopper (nvcc 13 dropped Volta) plus PTX for newer parts; 9.0 (H100/H200) is the one we tune for.
DEFAULT_ARCH_LIST = "7.5;8.0;8.6;8.9;9.0+PTX"


def _flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


def _set_parallelism() -> None:
    cpus = os.cpu_count() or 1
    try:
        ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram_gib = 8.0
    # an nvcc job can take ~2-3 GiB; keep the build from swapping on small machines
    os.environ.setdefault("MAX_JOBS", str(max(1, min(cpus, int(ram_gib // 3)))))
    os.environ.setdefault("NVCC_THREADS", "2" if cpus >= 4 else "1")


def get_extensions():
    if _flag("FSGAN_FAST_BUILD_EXT", "1") in ("0", "false", "no"):
        return [], {}
    # the nvcc on PATH may be a wrapper outside the toolkit; torch guesses CUDA_HOME from it at import
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    import torch
    from torch.utils import cpp_extension

    _set_parallelism()
    want_cuda = _flag("FSGAN_FAST_BUILD_CUDA", "auto")
    have_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if want_cuda in ("1", "true", "yes") and not have_cuda:
        raise RuntimeError(
            "FSGAN_FAST_BUILD_CUDA=1 but CUDA kernels cannot be built: "
            f"torch CUDA={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}"
        )
    with_cuda = have_cuda and want_cuda not in ("0", "false", "no")

    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    # no --use_fast_math: its approximate sqrt/division and flushed denormals would move cosines by a few
    # ulp and flip near-tied matches against the reference (IEEE math costs nothing measurable here)
    nvcc = ["-O3", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr"]
    nvcc.append(f"--threads={os.environ['NVCC_THREADS']}")
    macros = []
    if with_cuda:
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        macros.append(("FSGAN_FAST_WITH_CUDA", "1"))
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        # the system CUDA may lack cuBLAS/cuSPARSE headers; torch's pip CUDA packages ship them
        extra_inc = [p for p in glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include"))]
        ext_cls = cpp_extension.CUDAExtension
    else:
        extra_inc = []
        ext_cls = cpp_extension.CppExtension
    ext = ext_cls(
        name="fsgan_fast._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")] + extra_inc,
        define_macros=macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if with_cuda else {"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": _build_ext_class(cpp_extension.BuildExtension)}


def _build_ext_class(base):
    class BuildExtension(base):
        """Keeps the source suffix in object names: csrc/<op>/<op>.cpp and <op>.cu would both be <op>.o."""

        def build_extensions(self):
            default = self.compiler.object_filenames

            def object_filenames(sources, strip_dir=0, output_dir=""):
                objects = default(sources, strip_dir, output_dir)
                return [o[: -len(".o")] + "_cuda.o" if s.endswith(".cu") else o for s, o in zip(sources, objects)]

            self.compiler.object_filenames = object_filenames
            super().build_extensions()

    return BuildExtension.with_options(use_ninja=True)


ext_modules, cmdclass = get_extensions()

setup(
    packages=[
        "fsgan_fast",
        "fsgan_fast.ops",
        "fsgan_fast.nn",
        "fsgan_fast.models",
        "fsgan_fast.data",
        "fsgan_fast.train",
        "fsgan_fast.export",
        "fsgan_fast.metrics",
        "fsgan_fast.utils",
        "fsgan_fast.kernels",
    ],
    package_dir={"fsgan_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
