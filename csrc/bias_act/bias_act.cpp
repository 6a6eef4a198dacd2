// CPU kernels of bias_act / bias_act_backward (contract: fsgan_fast/ops/bias_act.py, see bias_act.h): one task item
// per (n, c) slice of S elements, so the bias and the channel are looked up once per slice and the inner loop is a
// plain stream the compiler vectorises.
#include "bias_act/bias_act.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <optional>
#include <string_view>

namespace fsgan_fast {
namespace {

constexpr int64_t kGrainElems = 32768;  // elements per parallel task at least (ATen's GRAIN_SIZE)

// bias_act_value<true>(v, alpha, 1) with the compare and select done on the bits: GCC's default -ftrapping-math
// keeps a float compare as a branch (it may raise on NaN), which mispredicts on random signs and left the loop
// scalar, 10x slower than eager PyTorch. v > 0 exactly when its bits, read as a signed integer, lie in (0, +inf].
template <typename acc_t>
inline acc_t lrelu_select(acc_t v, acc_t alpha) {
  using bits_t = std::conditional_t<sizeof(acc_t) == 4, int32_t, int64_t>;
  static_assert(sizeof(bits_t) == sizeof(acc_t));
  constexpr bits_t kInf = sizeof(acc_t) == 4 ? bits_t(0x7f800000) : bits_t(0x7ff0000000000000LL);
  const acc_t one = 1;
  bits_t vb, ob, ab;
  std::memcpy(&vb, &v, sizeof vb);
  std::memcpy(&ob, &one, sizeof ob);
  std::memcpy(&ab, &alpha, sizeof ab);
  const bits_t take_one = -static_cast<bits_t>((vb > 0) & (vb <= kInf));
  const bits_t sb = (ob & take_one) | (ab & ~take_one);
  acc_t s;
  std::memcpy(&s, &sb, sizeof s);
  return v * s;
}

template <bool kLrelu, typename acc_t>
inline acc_t value_cpu(acc_t v, acc_t alpha, acc_t gain) {
  if constexpr (kLrelu) v = lrelu_select(v, alpha);
  return v * gain;
}

template <typename scalar_t, bool kLrelu, bool kBias>
void bias_act_cpu_kernel(const bias_act_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.in);
  const auto* bias = static_cast<const scalar_t*>(p.aux);
  auto* y = static_cast<scalar_t*>(p.out);
  const acc_t alpha = static_cast<acc_t>(p.alpha), gain = static_cast<acc_t>(p.gain);
  const int64_t S = std::max<int64_t>(1, p.S), slices = p.n / S;
  at::parallel_for(0, slices, std::max<int64_t>(1, kGrainElems / S), [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const scalar_t* xs = x + s * S;
      scalar_t* ys = y + s * S;
      if constexpr (kBias) {
        const acc_t b = static_cast<acc_t>(bias[s % p.C]);
        for (int64_t e = 0; e < S; ++e)
          ys[e] = static_cast<scalar_t>(value_cpu<kLrelu>(static_cast<acc_t>(xs[e]) + b, alpha, gain));
      } else {
        for (int64_t e = 0; e < S; ++e)
          ys[e] = static_cast<scalar_t>(value_cpu<kLrelu>(static_cast<acc_t>(xs[e]), alpha, gain));
      }
    }
  });
}

template <typename scalar_t, bool kLrelu>
void bias_act_backward_cpu_kernel(const bias_act_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* grad = static_cast<const scalar_t*>(p.in);
  const auto* y = static_cast<const scalar_t*>(p.aux);
  auto* dx = static_cast<scalar_t*>(p.out);
  const acc_t gain = static_cast<acc_t>(p.gain), slope_neg = static_cast<acc_t>(p.alpha * p.gain);
  at::parallel_for(0, p.n, kGrainElems, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e)
      dx[e] = static_cast<scalar_t>(
          bias_act_grad<kLrelu>(static_cast<acc_t>(grad[e]), static_cast<acc_t>(y[e]), gain, slope_neg));
  });
}

template <typename scalar_t>
void run_forward(const bias_act_params& p) {
  const bool lrelu = p.act == BiasActKind::kLrelu, has_bias = p.aux != nullptr;
  if (lrelu && has_bias) bias_act_cpu_kernel<scalar_t, true, true>(p);
  else if (lrelu) bias_act_cpu_kernel<scalar_t, true, false>(p);
  else if (has_bias) bias_act_cpu_kernel<scalar_t, false, true>(p);
  else bias_act_cpu_kernel<scalar_t, false, false>(p);
}

template <typename scalar_t>
void run_backward(const bias_act_params& p) {
  if (p.act == BiasActKind::kLrelu) bias_act_backward_cpu_kernel<scalar_t, true>(p);
  else bias_act_backward_cpu_kernel<scalar_t, false>(p);
}

at::Tensor bias_act_cpu(const at::Tensor& x, const std::optional<at::Tensor>& bias, std::string_view act, double alpha,
                        double gain) {
  bias_act_params p = bias_act_check(x, bias, act, alpha, gain);
  TORCH_CHECK_VALUE(x.is_cpu(), "the CPU bias_act kernel needs CPU tensors, got ", x.device());
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (p.n == 0) return y;
  p.out = y.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_cpu",
                                  [&] { run_forward<scalar_t>(p); });
  return y;
}

at::Tensor bias_act_backward_cpu(const at::Tensor& grad, const at::Tensor& y, std::string_view act, double alpha,
                                 double gain) {
  bias_act_params p = bias_act_backward_check(grad, y, act, alpha, gain);
  TORCH_CHECK_VALUE(y.is_cpu(), "the CPU bias_act_backward kernel needs CPU tensors, got ", y.device());
  at::Tensor dx = at::empty(y.sizes(), y.options());
  if (p.n == 0) return dx;
  p.out = dx.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bias_act_backward_cpu",
                                  [&] { run_backward<scalar_t>(p); });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CPU, m) {
  m.impl("_bias_act_cpu", &bias_act_cpu);
  m.impl("_bias_act_backward_cpu", &bias_act_backward_cpu);
}

}  // namespace fsgan_fast
