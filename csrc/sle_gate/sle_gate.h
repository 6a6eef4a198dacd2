// sle_gate kernels: what the CPU (sle_gate.cpp) and CUDA (sle_gate.cu) implementations share.
// The contract and the reference live in fsgan_fast/ops/sle_gate.py; the checks here mirror its _check, for the
// prepared inputs the private ops receive (_prep).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

namespace fsgan_fast {

constexpr int64_t kSlePool = 4;                     // the gate's adaptive pool is 4x4
constexpr int64_t kSleBins = kSlePool * kSlePool;   // pooled values per x_low channel
enum sle_act : int { kSleSwish = 0, kSleLrelu = 1 };
constexpr double kSleLreluSlope = 0.1;

// One call of the sle_gate kernels. x_low is read through its strides (contiguous or channels_last); x_high, grad,
// y and grad_x_high share one layout, `high_cl`. Float pointers are typed by the kernel's scalar type (x_low,
// x_high, grad, y, grad_x_low, grad_x_high) or its opmath type (everything else).
struct sle_params {
  int64_t B, Cl, h, w, Ch, H, W;
  int64_t K;                  // Cl * 16: the length of a pooled row and of a w1 row
  int64_t low_stride[4];      // strides of x_low, in elements
  int64_t glow_stride[4];     // strides of grad_x_low (x_low's layout)
  bool high_cl;               // x_high (and grad, y, grad_x_high) channels_last, else contiguous
  int act;                    // sle_act
  const void* x_low;
  const void* x_high;
  const void* w1;             // [Ch, K]
  const void* w2;             // [Ch, Ch]
  const void* grad;           // backward: dy
  void* y;                    // forward output
  void* gate;                 // [B, Ch]: forward output, backward input
  void* pooled;               // [B, K]
  void* hidden;               // [B, Ch], before the activation
  void* grad_x_low;
  void* grad_x_high;
  void* grad_w1;              // [Ch, K]
  void* grad_w2;              // [Ch, Ch]
};

// Adaptive pooling of n pixels into 4 bins, as PyTorch: bin i covers [floor(i*n/4), ceil((i+1)*n/4)).
C10_HOST_DEVICE inline int64_t sle_bin_start(int64_t i, int64_t n) { return i * n / kSlePool; }
C10_HOST_DEVICE inline int64_t sle_bin_end(int64_t i, int64_t n) { return ((i + 1) * n + kSlePool - 1) / kSlePool; }

C10_HOST_DEVICE inline float sle_exp(float v) { return expf(v); }
C10_HOST_DEVICE inline double sle_exp(double v) { return exp(v); }

template <typename acc_t>
C10_HOST_DEVICE inline acc_t sle_sigmoid(acc_t v) {
  return acc_t(1) / (acc_t(1) + sle_exp(-v));
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t sle_activation(acc_t v, int act) {
  if (act == kSleSwish) return v * sle_sigmoid(v);
  return v > acc_t(0) ? v : v * acc_t(kSleLreluSlope);
}

// d act / d v, as the reference's _act_grad (s * (1 + v * (1 - s)) for Swish)
template <typename acc_t>
C10_HOST_DEVICE inline acc_t sle_activation_grad(acc_t v, int act) {
  if (act == kSleSwish) {
    const acc_t s = sle_sigmoid(v);
    return s * (acc_t(1) + v * (acc_t(1) - s));
  }
  return v > acc_t(0) ? acc_t(1) : acc_t(kSleLreluSlope);
}

inline at::ScalarType sle_opmath_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline int sle_parse_act(std::string_view act) {
  if (act == "swish") return kSleSwish;
  if (act == "lrelu") return kSleLrelu;
  TORCH_CHECK_VALUE(false, "act must be 'swish' or 'lrelu', got '", std::string(act), "'");
  return kSleSwish;  // unreachable
}

// The layout the kernels read `t` in: contiguous (preferred when a tensor is both, as the Python side decides), or
// channels_last; anything else is refused (the Python wrapper copies it first).
inline at::MemoryFormat sle_layout(const char* name, const at::Tensor& t) {
  if (t.is_contiguous()) return at::MemoryFormat::Contiguous;
  TORCH_CHECK_VALUE(t.is_contiguous(at::MemoryFormat::ChannelsLast), name,
                    " must be contiguous or channels_last, got strides ", t.strides());
  return at::MemoryFormat::ChannelsLast;
}

inline void sle_check_small(const char* name, const at::Tensor& t, at::IntArrayRef shape, at::ScalarType acc,
                            const at::Tensor& like) {
  TORCH_CHECK_TYPE(t.scalar_type() == acc, name, " must be ", acc, " (the opmath type), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " is on ", t.device(), " but x_high is on ", like.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// Validates the forward's inputs; returns their sizes, strides and pointers.
inline sle_params sle_check_forward(const at::Tensor& x_low, const at::Tensor& x_high, const at::Tensor& w1,
                                    const at::Tensor& w2, std::string_view act) {
  const auto st = x_high.scalar_type();
  TORCH_CHECK_TYPE(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble,
                   "x_high must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK_TYPE(x_low.scalar_type() == st, "x_low and x_high must share a dtype, got ", x_low.scalar_type(),
                   " and ", st);
  TORCH_CHECK_VALUE(x_low.dim() == 4, "x_low must be 4-D [B, Cl, h, w], got shape ", x_low.sizes());
  TORCH_CHECK_VALUE(x_high.dim() == 4, "x_high must be 4-D [B, Ch, H, W], got shape ", x_high.sizes());
  TORCH_CHECK_VALUE(x_low.device() == x_high.device(), "x_low is on ", x_low.device(), " but x_high is on ",
                    x_high.device());
  sle_params p{};
  p.B = x_high.size(0);
  p.Ch = x_high.size(1);
  p.H = x_high.size(2);
  p.W = x_high.size(3);
  p.Cl = x_low.size(1);
  p.h = x_low.size(2);
  p.w = x_low.size(3);
  p.K = p.Cl * kSleBins;
  TORCH_CHECK_VALUE(x_low.size(0) == p.B, "x_low and x_high must have the same batch size, got ", x_low.size(0),
                    " and ", p.B);
  TORCH_CHECK_VALUE(x_low.numel() > 0 && x_high.numel() > 0, "x_low and x_high must have no empty dimension, got ",
                    x_low.sizes(), " and ", x_high.sizes());
  sle_layout("x_low", x_low);
  p.high_cl = sle_layout("x_high", x_high) == at::MemoryFormat::ChannelsLast;
  for (int d = 0; d < 4; ++d) p.low_stride[d] = x_low.stride(d);
  p.act = sle_parse_act(act);

  const auto acc = sle_opmath_type(st);
  sle_check_small("w1", w1, {p.Ch, p.Cl, kSlePool, kSlePool}, acc, x_high);
  sle_check_small("w2", w2, {p.Ch, p.Ch, 1, 1}, acc, x_high);
  p.x_low = x_low.const_data_ptr();
  p.x_high = x_high.const_data_ptr();
  p.w1 = w1.const_data_ptr();
  p.w2 = w2.const_data_ptr();
  return p;
}

// Validates the backward's inputs (the forward's, plus grad in x_high's dtype and layout and the saved gate state).
inline sle_params sle_check_backward(const at::Tensor& grad, const at::Tensor& x_low, const at::Tensor& x_high,
                                     const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& gate,
                                     const at::Tensor& pooled, const at::Tensor& hidden, std::string_view act) {
  sle_params p = sle_check_forward(x_low, x_high, w1, w2, act);
  TORCH_CHECK_TYPE(grad.scalar_type() == x_high.scalar_type(), "grad must have x_high's dtype ",
                   x_high.scalar_type(), ", got ", grad.scalar_type());
  TORCH_CHECK_VALUE(grad.sizes() == x_high.sizes(), "grad must have x_high's shape ", x_high.sizes(), ", got ",
                    grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == x_high.device(), "grad is on ", grad.device(), " but x_high is on ",
                    x_high.device());
  const auto fmt = p.high_cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  TORCH_CHECK_VALUE(grad.is_contiguous(fmt), "grad must have x_high's layout (", fmt, "), got strides ",
                    grad.strides());
  const auto acc = sle_opmath_type(x_high.scalar_type());
  sle_check_small("gate", gate, {p.B, p.Ch}, acc, x_high);
  sle_check_small("pooled", pooled, {p.B, p.K}, acc, x_high);
  sle_check_small("hidden", hidden, {p.B, p.Ch}, acc, x_high);
  p.grad = grad.const_data_ptr();
  // the backward only reads the saved state
  p.gate = const_cast<void*>(gate.const_data_ptr());
  p.pooled = const_cast<void*>(pooled.const_data_ptr());
  p.hidden = const_cast<void*>(hidden.const_data_ptr());
  return p;
}

}  // namespace fsgan_fast
