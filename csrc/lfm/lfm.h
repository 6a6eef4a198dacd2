// lfm_fuse / lfm_apply kernels: what the CPU (lfm.cpp) and CUDA (lfm.cu) implementations share.
// The contract and the reference live in fsgan_fast/ops/lfm.py; the checks here mirror its _check_*.
#pragma once

#include <ATen/NumericUtils.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace fsgan_fast {

// One call of any lfm kernel. Every tensor is contiguous: x [B,K,C,P], base [B], positions [B,n],
// ref_idx [B,K-1,n], alpha [B,K], grad [B,C,P] (P = H*W). Float pointers are typed by the kernel's
// scalar type (x, grad, fused, grad_x) or its opmath type (alpha, grad_alpha).
struct lfm_params {
  int64_t B, K, C, H, W, P, n;
  const void* x;
  const int64_t* base;
  const int64_t* positions;
  const int64_t* ref_idx;  // input of apply and backward; the output of fuse (ref_idx_out) otherwise
  const void* alpha;
  const void* grad;
  void* fused;
  int64_t* ref_idx_out;
  void* grad_x;
  void* grad_alpha;
};

// An index selects something only when it lies in [0, hi); the kernels skip any other value.
C10_HOST_DEVICE inline bool lfm_in_range(int64_t v, int64_t hi) { return 0 <= v && v < hi; }

// Shot index of reference r (0..K-2): the shots other than the base, in order.
C10_HOST_DEVICE inline int64_t lfm_ref_shot(int64_t r, int64_t base) { return r + (r >= base ? 1 : 0); }

C10_HOST_DEVICE inline float lfm_sqrt(float v) { return sqrtf(v); }
C10_HOST_DEVICE inline double lfm_sqrt(double v) { return sqrt(v); }

// 1 / max(||v||, 1e-8) from ||v||^2; a NaN norm stays NaN, as torch's clamp_min keeps it.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t lfm_inv_norm(acc_t sumsq) {
  const acc_t norm = lfm_sqrt(sumsq);
  const acc_t eps = acc_t(1e-8);
  return acc_t(1) / (norm < eps ? eps : norm);
}

// Strict total order of argmax candidates, as torch.argmax: NaN beats any number, then the larger
// value, then on ties the smaller index. The result of a reduction is the same in any order.
template <typename acc_t>
C10_HOST_DEVICE inline bool lfm_better(acc_t v, int64_t i, acc_t best_v, int64_t best_i) {
  if (at::_isnan(v)) return !at::_isnan(best_v) || i < best_i;
  if (at::_isnan(best_v)) return false;
  return v > best_v || (v == best_v && i < best_i);
}

inline at::ScalarType lfm_opmath_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void lfm_check_index(const char* name, const at::Tensor& t, const char* x_name, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but ", x_name, " is on ", x.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// Validates x [B,K,C,H,W] (named x_name in messages), base [B], positions [B,n], alpha [B,K]; returns their sizes.
inline lfm_params lfm_check_common(const char* x_name, const at::Tensor& x, const at::Tensor& base,
                                   const at::Tensor& positions, const at::Tensor& alpha) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble,
                   x_name, " must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK_VALUE(x.dim() == 5, x_name, " must be 5-D [B, K, C, H, W], got ", x.dim(), "-D shape ", x.sizes());
  TORCH_CHECK_VALUE(x.is_contiguous(), x_name, " must be contiguous");
  lfm_params p{};
  p.B = x.size(0);
  p.K = x.size(1);
  p.C = x.size(2);
  p.H = x.size(3);
  p.W = x.size(4);
  p.P = p.H * p.W;
  TORCH_CHECK_VALUE(p.K >= 2, x_name, " needs K >= 2 shots (one base and at least one reference), got K=", p.K);
  TORCH_CHECK_VALUE(p.C >= 1 && p.H >= 1 && p.W >= 1, x_name, " must have C, H, W >= 1, got shape ", x.sizes());
  // positions and matches are int32 inside the kernels
  TORCH_CHECK_VALUE(p.P <= std::numeric_limits<int32_t>::max(), "H*W=", p.P, " is too large");

  lfm_check_index("base", base, x_name, x);
  TORCH_CHECK_VALUE(base.dim() == 1 && base.size(0) == p.B, "base must have shape [B=", p.B, "], got ", base.sizes());
  lfm_check_index("positions", positions, x_name, x);
  TORCH_CHECK_VALUE(positions.dim() == 2 && positions.size(0) == p.B, "positions must have shape [B=", p.B,
                    ", n], got ", positions.sizes());
  p.n = positions.size(1);
  TORCH_CHECK_VALUE(p.n <= p.P, "positions selects n=", p.n, " positions but the grid has only H*W=", p.P);

  TORCH_CHECK_TYPE(alpha.scalar_type() == lfm_opmath_type(st), "alpha must be ", lfm_opmath_type(st), " for ",
                   x_name, " of ", st, ", got ", alpha.scalar_type());
  TORCH_CHECK_VALUE(alpha.dim() == 2 && alpha.size(0) == p.B && alpha.size(1) == p.K, "alpha must have shape [B=",
                    p.B, ", K=", p.K, "], got ", alpha.sizes());
  TORCH_CHECK_VALUE(alpha.device() == x.device(), "alpha is on ", alpha.device(), " but ", x_name, " is on ",
                    x.device());
  TORCH_CHECK_VALUE(alpha.is_contiguous(), "alpha must be contiguous");

  p.x = x.const_data_ptr();
  p.base = base.const_data_ptr<int64_t>();
  p.positions = positions.const_data_ptr<int64_t>();
  p.alpha = alpha.const_data_ptr();
  return p;
}

inline lfm_params lfm_check_fuse(const at::Tensor& feats, const at::Tensor& base, const at::Tensor& positions,
                                 const at::Tensor& alpha) {
  return lfm_check_common("feats", feats, base, positions, alpha);
}

inline lfm_params lfm_check_apply(const at::Tensor& x, const at::Tensor& base, const at::Tensor& positions,
                                  const at::Tensor& ref_idx, const at::Tensor& alpha) {
  lfm_params p = lfm_check_common("x", x, base, positions, alpha);
  lfm_check_index("ref_idx", ref_idx, "x", x);
  TORCH_CHECK_VALUE(ref_idx.dim() == 3 && ref_idx.size(0) == p.B && ref_idx.size(1) == p.K - 1 &&
                        ref_idx.size(2) == p.n,
                    "ref_idx must have shape [B=", p.B, ", K-1=", p.K - 1, ", n=", p.n, "], got ", ref_idx.sizes());
  p.ref_idx = ref_idx.const_data_ptr<int64_t>();
  return p;
}

inline lfm_params lfm_check_apply_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& base,
                                           const at::Tensor& positions, const at::Tensor& ref_idx,
                                           const at::Tensor& alpha) {
  lfm_params p = lfm_check_apply(x, base, positions, ref_idx, alpha);
  TORCH_CHECK_TYPE(grad.scalar_type() == x.scalar_type(), "grad must have x's dtype ", x.scalar_type(), ", got ",
                   grad.scalar_type());
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == p.B && grad.size(1) == p.C && grad.size(2) == p.H &&
                        grad.size(3) == p.W,
                    "grad must have shape [B, C, H, W] = [", p.B, ", ", p.C, ", ", p.H, ", ", p.W, "], got ",
                    grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == x.device(), "grad is on ", grad.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(grad.is_contiguous(), "grad must be contiguous");
  p.grad = grad.const_data_ptr();
  return p;
}

}  // namespace fsgan_fast
