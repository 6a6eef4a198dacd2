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
  m.def("_imresize_cpu(Tensor x, Tensor row_idx, Tensor row_w, Tensor col_idx, Tensor col_w) -> Tensor");
  m.def("_imresize_cuda(Tensor x, Tensor row_idx, Tensor row_w, Tensor col_idx, Tensor col_w) -> Tensor");
  // Python's schema parser reads `int` as SymInt (what the dispatcher prints for NATIVE_SCHEMAS' `int pad`); the
  // kernels take int64_t, which the dispatcher accepts for a SymInt argument.
  m.def("_pyramid_inject_cpu(Tensor prev, Tensor row_idx, Tensor row_w, Tensor col_idx, Tensor col_w, Tensor noise, "
        "Tensor amp, SymInt pad) -> (Tensor, Tensor)");
  m.def("_pyramid_blend_cpu(Tensor up, Tensor residual, Tensor? mask) -> Tensor");
  m.def("_pyramid_inject_cuda(Tensor prev, Tensor row_idx, Tensor row_w, Tensor col_idx, Tensor col_w, Tensor noise, "
        "Tensor amp, SymInt pad) -> (Tensor, Tensor)");
  m.def("_pyramid_blend_cuda(Tensor up, Tensor residual, Tensor? mask) -> Tensor");
  m.def("_masked_avg_pool_cpu(Tensor feats, Tensor weights, bool per_image) -> (Tensor, Tensor)");
  m.def("_masked_avg_pool_cuda(Tensor feats, Tensor weights, bool per_image) -> (Tensor, Tensor)");
  m.def("_cosine_topk_cpu(Tensor feats, Tensor prototypes, SymInt k, bool over_pixels) -> (Tensor, Tensor)");
  m.def("_cosine_topk_cuda(Tensor feats, Tensor prototypes, SymInt k, bool over_pixels) -> (Tensor, Tensor)");
  m.def("_crop_resize_cpu(Tensor x, Tensor boxes, Tensor image_index, SymInt out_h, SymInt out_w) -> Tensor");
  m.def("_crop_resize_backward_cpu(Tensor grad, Tensor boxes, Tensor image_index, SymInt batch, SymInt height, "
        "SymInt width) -> Tensor");
  m.def("_crop_resize_cuda(Tensor x, Tensor boxes, Tensor image_index, SymInt out_h, SymInt out_w) -> Tensor");
  m.def("_crop_resize_backward_cuda(Tensor grad, Tensor boxes, Tensor image_index, SymInt batch, SymInt height, "
        "SymInt width) -> Tensor");
  m.def("_bias_act_cpu(Tensor x, Tensor? bias, str act, float alpha, float gain) -> Tensor");
  m.def("_bias_act_backward_cpu(Tensor grad, Tensor y, str act, float alpha, float gain) -> Tensor");
  m.def("_bias_act_cuda(Tensor x, Tensor? bias, str act, float alpha, float gain) -> Tensor");
  m.def("_bias_act_backward_cuda(Tensor grad, Tensor y, str act, float alpha, float gain) -> Tensor");
}
#endif
