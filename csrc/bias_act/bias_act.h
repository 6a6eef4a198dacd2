// bias_act kernels: what the CPU (bias_act.cpp) and CUDA (bias_act.cu) implementations share. The contract and the
// references (bias_act_reference, bias_act_backward_reference) live in fsgan_fast/ops/bias_act.py. Over the flat
// contiguous tensor viewed as [N, C, S], element e of channel c = (e / S) % C, in opmath:
//
//   forward:   v = x[e] + bias[c];  y[e] = round((v > 0 ? v : v * alpha) * gain)      (lrelu)
//                                   y[e] = round(v * gain)                             (linear)
//   backward:  dx[e] = round(grad[e] * (y[e] > 0 ? gain : alpha * gain))               (lrelu; alpha * gain in double)
//              dx[e] = round(grad[e] * gain)                                           (linear)
//
// The backward reads the forward's output: y > 0 exactly where x + bias > 0, since gain > 0 and alpha >= 0.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>

namespace fsgan_fast {

enum class BiasActKind : int { kLinear = 0, kLrelu = 1 };

// One bias_act (forward: in = x, aux = bias or null) or bias_act_backward (in = grad, aux = y).
struct bias_act_params {
  int64_t n, C, S;  // elements, channels (dim 1), elements per (n, c) slice
  BiasActKind act;
  double alpha, gain;
  const void* in;
  const void* aux;
  void* out;
};

// v * 1 is exact: v * (v > 0 ? 1 : alpha) is the reference's leaky ReLU bit for bit (bias_act.cpp has an integer
// form of the same select for GCC's vectoriser).
template <bool kLrelu, typename acc_t>
C10_HOST_DEVICE inline acc_t bias_act_value(acc_t v, acc_t alpha, acc_t gain) {
  if constexpr (kLrelu) v = v * (v > acc_t(0) ? acc_t(1) : alpha);
  return v * gain;
}

template <bool kLrelu, typename acc_t>
C10_HOST_DEVICE inline acc_t bias_act_grad(acc_t g, acc_t y, acc_t gain, acc_t slope_neg) {
  if constexpr (kLrelu) return g * (y > acc_t(0) ? gain : slope_neg);
  return g * gain;
}

inline BiasActKind bias_act_kind(std::string_view act) {
  if (act == "lrelu") return BiasActKind::kLrelu;
  TORCH_CHECK_VALUE(act == "linear", "act must be 'lrelu' or 'linear', got '", act, "'");
  return BiasActKind::kLinear;
}

inline void bias_act_check_scalars(double alpha, double gain) {
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha >= 0, "alpha must be finite and >= 0, got ", alpha);
  TORCH_CHECK_VALUE(std::isfinite(gain) && gain > 0, "gain must be finite and > 0, got ", gain);
}

inline void bias_act_check_main(const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, name,
                   " must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK_VALUE(t.dim() >= 2, name, " must be at least 2-D [N, C, ...], got ", t.dim(), "-D shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

inline bias_act_params bias_act_sizes(const at::Tensor& t, std::string_view act, double alpha, double gain) {
  bias_act_check_scalars(alpha, gain);
  bias_act_params p{};
  p.n = t.numel();
  p.C = t.size(1);
  p.S = 1;
  for (int64_t d = 2; d < t.dim(); ++d) p.S *= t.size(d);
  p.act = bias_act_kind(act);
  p.alpha = alpha;
  p.gain = gain;
  return p;
}

// Validates the forward's inputs (see fsgan_fast/ops/bias_act.py); returns sizes and input pointers (out unset).
inline bias_act_params bias_act_check(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                      std::string_view act, double alpha, double gain) {
  bias_act_check_main("x", x);
  bias_act_params p = bias_act_sizes(x, act, alpha, gain);
  p.in = x.const_data_ptr();
  p.aux = nullptr;
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK_TYPE(b.scalar_type() == x.scalar_type(), "bias must have x's dtype ", x.scalar_type(), ", got ",
                     b.scalar_type());
    TORCH_CHECK_VALUE(b.device() == x.device(), "bias is on ", b.device(), " but x is on ", x.device());
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == p.C, "bias must have shape [C=", p.C, "], got ", b.sizes());
    TORCH_CHECK_VALUE(b.is_contiguous(), "bias must be contiguous");
    p.aux = b.const_data_ptr();
  }
  return p;
}

// Validates the backward's inputs; returns sizes and input pointers (out unset).
inline bias_act_params bias_act_backward_check(const at::Tensor& grad, const at::Tensor& y, std::string_view act,
                                               double alpha, double gain) {
  bias_act_check_main("y", y);
  TORCH_CHECK_TYPE(grad.scalar_type() == y.scalar_type(), "grad must have y's dtype ", y.scalar_type(), ", got ",
                   grad.scalar_type());
  TORCH_CHECK_VALUE(grad.device() == y.device(), "grad is on ", grad.device(), " but y is on ", y.device());
  TORCH_CHECK_VALUE(grad.sizes() == y.sizes(), "grad must have y's shape ", y.sizes(), ", got ", grad.sizes());
  TORCH_CHECK_VALUE(grad.is_contiguous(), "grad must be contiguous");
  bias_act_params p = bias_act_sizes(y, act, alpha, gain);
  p.in = grad.const_data_ptr();
  p.aux = y.const_data_ptr();
  return p;
}

}  // namespace fsgan_fast
