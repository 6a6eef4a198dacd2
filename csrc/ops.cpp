// Schemas of the private ops, for the CMake (libtorch) build only: the Python package defines them once, in
// fsgan_fast/ops/<op>.py (NATIVE_SCHEMAS), and tests/test_cmake_build.py checks that both agree.
#ifdef FSGAN_FAST_DEFINE_SCHEMAS
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fsgan_fast, m) {
  m.def("_lfm_fuse_cpu(Tensor feats, Tensor base, Tensor positions, Tensor alpha) -> (Tensor, Tensor)");
  m.def("_lfm_apply_cpu(Tensor x, Tensor base, Tensor positions, Tensor ref_idx, Tensor alpha) -> Tensor");
  m.def("_lfm_apply_backward_cpu(Tensor grad, Tensor x, Tensor base, Tensor positions, Tensor ref_idx, "
        "Tensor alpha) -> (Tensor, Tensor)");
  m.def("_lfm_fuse_cuda(Tensor feats, Tensor base, Tensor positions, Tensor alpha) -> (Tensor, Tensor)");
  m.def("_lfm_apply_cuda(Tensor x, Tensor base, Tensor positions, Tensor ref_idx, Tensor alpha) -> Tensor");
  m.def("_lfm_apply_backward_cuda(Tensor grad, Tensor x, Tensor base, Tensor positions, Tensor ref_idx, "
        "Tensor alpha) -> (Tensor, Tensor)");
  m.def("_sle_gate_cpu(Tensor x_low, Tensor x_high, Tensor w1, Tensor w2, str act) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_sle_gate_backward_cpu(Tensor grad, Tensor x_low, Tensor x_high, Tensor w1, Tensor w2, Tensor gate, "
        "Tensor pooled, Tensor hidden, str act) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_sle_gate_cuda(Tensor x_low, Tensor x_high, Tensor w1, Tensor w2, str act) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_sle_gate_backward_cuda(Tensor grad, Tensor x_low, Tensor x_high, Tensor w1, Tensor w2, Tensor gate, "
        "Tensor pooled, Tensor hidden, str act) -> (Tensor, Tensor, Tensor, Tensor)");
}
#endif
