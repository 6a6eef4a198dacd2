// CUDA kernels of bias_act / bias_act_backward (contract: fsgan_fast/ops/bias_act.py, see bias_act.h; bias_act.cpp
// does the same arithmetic in plain loops). One thread per element, grid-stride, on the current stream, no host
// sync, no atomics; the bias is a gathered read (C <= 512 values, cached), x / grad / y stream through once.
#include "bias_act/bias_act.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <string_view>

namespace fsgan_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int grid_for(int64_t n) { return static_cast<int>(std::min(ceil_div(n, kThreads), kMaxBlocks)); }

// Whether element offsets up to n (plus one grid-stride step past the end) fit in int.
bool fits_int(int64_t n) { return n <= INT_MAX - kThreads * kMaxBlocks; }

template <typename scalar_t, typename index_t, bool kLrelu, bool kBias>
__global__ void __launch_bounds__(kThreads) bias_act_kernel(const bias_act_params p, index_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* __restrict__ x = static_cast<const scalar_t*>(p.in);
  const auto* __restrict__ bias = static_cast<const scalar_t*>(p.aux);
  auto* __restrict__ y = static_cast<scalar_t*>(p.out);
  const acc_t alpha = static_cast<acc_t>(p.alpha), gain = static_cast<acc_t>(p.gain);
  const index_t C = static_cast<index_t>(p.C), S = static_cast<index_t>(p.S);
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t e = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; e < n; e += stride) {
    acc_t v = static_cast<acc_t>(x[e]);
    if constexpr (kBias) v = v + static_cast<acc_t>(bias[(e / S) % C]);
    y[e] = static_cast<scalar_t>(bias_act_value<kLrelu>(v, alpha, gain));
  }
}

template <typename scalar_t, typename index_t, bool kLrelu>
__global__ void __launch_bounds__(kThreads) bias_act_backward_kernel(const bias_act_params p, index_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* __restrict__ grad = static_cast<const scalar_t*>(p.in);
  const auto* __restrict__ y = static_cast<const scalar_t*>(p.aux);
  auto* __restrict__ dx = static_cast<scalar_t*>(p.out);
  const acc_t gain = static_cast<acc_t>(p.gain), slope_neg = static_cast<acc_t>(p.alpha * p.gain);
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t e = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; e < n; e += stride)
    dx[e] = static_cast<scalar_t>(
        bias_act_grad<kLrelu>(static_cast<acc_t>(grad[e]), static_cast<acc_t>(y[e]), gain, slope_neg));
}

template <typename scalar_t, typename index_t>
void launch_forward(const bias_act_params& p) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto n = static_cast<index_t>(p.n);
  const int grid = grid_for(p.n);
  const bool lrelu = p.act == BiasActKind::kLrelu, has_bias = p.aux != nullptr;
  if (lrelu && has_bias) bias_act_kernel<scalar_t, index_t, true, true><<<grid, kThreads, 0, stream>>>(p, n);
  else if (lrelu) bias_act_kernel<scalar_t, index_t, true, false><<<grid, kThreads, 0, stream>>>(p, n);
  else if (has_bias) bias_act_kernel<scalar_t, index_t, false, true><<<grid, kThreads, 0, stream>>>(p, n);
  else bias_act_kernel<scalar_t, index_t, false, false><<<grid, kThreads, 0, stream>>>(p, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename index_t>
void launch_backward(const bias_act_params& p) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto n = static_cast<index_t>(p.n);
  if (p.act == BiasActKind::kLrelu)
    bias_act_backward_kernel<scalar_t, index_t, true><<<grid_for(p.n), kThreads, 0, stream>>>(p, n);
  else
    bias_act_backward_kernel<scalar_t, index_t, false><<<grid_for(p.n), kThreads, 0, stream>>>(p, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor bias_act_cuda(const at::Tensor& x, const std::optional<at::Tensor>& bias, std::string_view act, double alpha,
                         double gain) {
  bias_act_params p = bias_act_check(x, bias, act, alpha, gain);
  TORCH_CHECK_VALUE(x.is_cuda(), "the CUDA bias_act kernel needs CUDA tensors, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (p.n == 0) return y;
  p.out = y.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_cuda", [&] {
    if (fits_int(p.n)) launch_forward<scalar_t, int>(p);
    else launch_forward<scalar_t, int64_t>(p);
  });
  return y;
}

at::Tensor bias_act_backward_cuda(const at::Tensor& grad, const at::Tensor& y, std::string_view act, double alpha,
                                  double gain) {
  bias_act_params p = bias_act_backward_check(grad, y, act, alpha, gain);
  TORCH_CHECK_VALUE(y.is_cuda(), "the CUDA bias_act_backward kernel needs CUDA tensors, got ", y.device());
  const c10::cuda::CUDAGuard guard(y.device());
  at::Tensor dx = at::empty(y.sizes(), y.options());
  if (p.n == 0) return dx;
  p.out = dx.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bias_act_backward_cuda", [&] {
    if (fits_int(p.n)) launch_backward<scalar_t, int>(p);
    else launch_backward<scalar_t, int64_t>(p);
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CUDA, m) {
  m.impl("_bias_act_cuda", &bias_act_cuda);
  m.impl("_bias_act_backward_cuda", &bias_act_backward_cuda);
}

}  // namespace fsgan_fast
