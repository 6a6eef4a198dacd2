// CUDA kernels of pyramid_inject / pyramid_blend (contract: fsgan_fast/ops/pyramid.py, see pyramid.h; pyramid.cpp
// does the same arithmetic in plain loops). One thread per output element, grid-stride, on the current stream, no
// host sync, no atomics. inject: a thread per g_in element computes the resize at its inner pixel (imresize_point,
// imresize's sums in imresize's order) and writes both up there and g_in from the unrounded value.
#include "pyramid/pyramid.h"

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
#include <tuple>

namespace fsgan_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int grid_for(int64_t n) { return static_cast<int>(std::min(ceil_div(n, kThreads), kMaxBlocks)); }

// Whether element offsets up to n (plus one grid-stride step past the end) fit in int.
bool fits_int(int64_t n) { return n <= INT_MAX - kThreads * kMaxBlocks; }

// g_in[e] for e = ((b*C + c)*Hp + Y)*Wp + X; up at (Y - pad, X - pad) when that is inside.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) pyramid_inject_kernel(const inject_params p, index_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const imresize_params& r = p.rs;
  const auto* prev = static_cast<const scalar_t*>(r.x);
  const auto* noise = static_cast<const scalar_t*>(p.noise);
  const auto* amp = static_cast<const acc_t*>(p.amp);
  auto* up = static_cast<scalar_t*>(p.up);
  auto* g_in = static_cast<scalar_t*>(p.g_in);
  const index_t Wp = static_cast<index_t>(p.Wp), Hp = static_cast<index_t>(p.Hp);
  const index_t Ho = static_cast<index_t>(r.Ho), Wo = static_cast<index_t>(r.Wo), C = static_cast<index_t>(r.C);
  const index_t Cn = static_cast<index_t>(p.Cn), pad = static_cast<index_t>(p.pad);
  const index_t plane_in = static_cast<index_t>(r.Hi * r.Wi), plane_noise = static_cast<index_t>(p.Hn * p.Wn);
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t e = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; e < n; e += stride) {
    const index_t X = e % Wp;
    const index_t t = e / Wp;
    const index_t Y = t % Hp;
    const index_t bc = t / Hp;
    const index_t b = bc / C;
    const index_t y = Y - pad, x = X - pad;
    const bool inside = 0 <= y && y < Ho && 0 <= x && x < Wo;
    acc_t u = 0;
    if (inside) {
      u = imresize_point<scalar_t, acc_t, index_t>(prev + bc * plane_in, r, y, x);
      up[(bc * Ho + y) * Wo + x] = static_cast<scalar_t>(u);
    }
    const scalar_t* noise_plane = noise + (b * Cn + (Cn == 1 ? 0 : bc - b * C)) * plane_noise;
    g_in[e] = static_cast<scalar_t>(inject_value<scalar_t, acc_t, index_t>(p, inside, u, amp[b], noise_plane, Y, X));
  }
}

template <typename scalar_t, typename index_t, bool kMask>
__global__ void __launch_bounds__(kThreads) pyramid_blend_kernel(const blend_params p, index_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* __restrict__ up = static_cast<const scalar_t*>(p.up);
  const auto* __restrict__ res = static_cast<const scalar_t*>(p.residual);
  const auto* __restrict__ mask = static_cast<const scalar_t*>(p.mask);
  auto* __restrict__ out = static_cast<scalar_t*>(p.out);
  const index_t HW = static_cast<index_t>(p.H * p.W), CHW = static_cast<index_t>(p.C) * HW;
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t e = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; e < n; e += stride) {
    const acc_t u = static_cast<acc_t>(up[e]), v = static_cast<acc_t>(res[e]);
    if constexpr (kMask) {
      const index_t m = p.Bm == 1 ? e % HW : e / CHW * HW + e % HW;
      out[e] = static_cast<scalar_t>(blend_value(u, v, static_cast<acc_t>(mask[m])));
    } else {
      out[e] = static_cast<scalar_t>(blend_value(u, v));
    }
  }
}

template <typename scalar_t, typename index_t>
void launch_inject(const inject_params& p, int64_t n) {
  pyramid_inject_kernel<scalar_t, index_t>
      <<<grid_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p, static_cast<index_t>(n));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename index_t>
void launch_blend(const blend_params& p, int64_t n) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (p.mask != nullptr) {
    pyramid_blend_kernel<scalar_t, index_t, true><<<grid_for(n), kThreads, 0, stream>>>(p, static_cast<index_t>(n));
  } else {
    pyramid_blend_kernel<scalar_t, index_t, false><<<grid_for(n), kThreads, 0, stream>>>(p, static_cast<index_t>(n));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> pyramid_inject_cuda(const at::Tensor& prev, const at::Tensor& row_idx,
                                                       const at::Tensor& row_w, const at::Tensor& col_idx,
                                                       const at::Tensor& col_w, const at::Tensor& noise,
                                                       const at::Tensor& amp, int64_t pad) {
  inject_params p = inject_check(prev, row_idx, row_w, col_idx, col_w, noise, amp, pad);
  TORCH_CHECK_VALUE(prev.is_cuda(), "the CUDA pyramid_inject kernel needs CUDA tensors, got ", prev.device());
  const c10::cuda::CUDAGuard guard(prev.device());
  at::Tensor up = at::empty({p.rs.B, p.rs.C, p.rs.Ho, p.rs.Wo}, prev.options());
  at::Tensor g_in = at::empty({p.rs.B, p.rs.C, p.Hp, p.Wp}, prev.options());
  const int64_t n = g_in.numel();
  if (n == 0) return {up, g_in};
  p.up = up.mutable_data_ptr();
  p.g_in = g_in.mutable_data_ptr();
  const bool small = fits_int(std::max({n, prev.numel(), noise.numel()}));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prev.scalar_type(), "pyramid_inject_cuda", [&] {
    if (small) launch_inject<scalar_t, int>(p, n);
    else launch_inject<scalar_t, int64_t>(p, n);
  });
  return {up, g_in};
}

at::Tensor pyramid_blend_cuda(const at::Tensor& up, const at::Tensor& residual,
                              const std::optional<at::Tensor>& mask) {
  blend_params p = blend_check(up, residual, mask);
  TORCH_CHECK_VALUE(up.is_cuda(), "the CUDA pyramid_blend kernel needs CUDA tensors, got ", up.device());
  const c10::cuda::CUDAGuard guard(up.device());
  at::Tensor out = at::empty(up.sizes(), up.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  p.out = out.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, up.scalar_type(), "pyramid_blend_cuda", [&] {
    if (fits_int(n)) launch_blend<scalar_t, int>(p, n);
    else launch_blend<scalar_t, int64_t>(p, n);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CUDA, m) {
  m.impl("_pyramid_inject_cuda", &pyramid_inject_cuda);
  m.impl("_pyramid_blend_cuda", &pyramid_blend_cuda);
}

}  // namespace fsgan_fast
