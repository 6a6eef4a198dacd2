// Python module entry of fsgan_fast._C. Kernels register themselves with TORCH_LIBRARY_IMPL in csrc/<op>/;
// this file only answers what was built. Not part of the CMake (libtorch) build.
#include <torch/extension.h>

namespace {
bool cuda_built() {
#ifdef FSGAN_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fsgan_fast compiled kernels (registered as torch.ops.fsgan_fast.*)";
  m.def("cuda_built", &cuda_built, "True if the CUDA kernels were compiled into this build");
}
