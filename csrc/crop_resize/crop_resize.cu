// CUDA kernels of crop_resize (contract: fsgan_fast/ops/crop_resize.py, see crop_resize.h; crop_resize.cpp does the
// same arithmetic in plain loops). One thread per output (forward) or incoming-gradient (backward) element,
// grid-stride over all boxes at once, on the current stream, no host sync. Consecutive threads take consecutive
// output columns of one row, so their gathers hit neighbouring input columns and their writes coalesce.
// The backward scatters by atomicAdd into an opmath buffer (float32, float64 for float64): boxes may overlap and
// bilinear footprints do, so a gather formulation would need the inverse map of arbitrary boxes; with OP-GAN's
// grids and FastGAN's crops the four targets of a warp are mostly distinct and the atomics rarely contend.
#include "crop_resize/crop_resize.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <limits>

namespace fsgan_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int grid_for(int64_t n) { return static_cast<int>(std::min(ceil_div(n, kThreads), kMaxBlocks)); }

// Whether element offsets up to n (plus one grid-stride step past the end) fit in int.
bool fits_int(int64_t n) { return n <= INT_MAX - kThreads * kMaxBlocks; }

// out[e] for e = ((n*C + c)*h + i)*w + j.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) crop_resize_kernel(const crop_resize_params p, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* __restrict__ x = static_cast<const scalar_t*>(p.src);
  auto* __restrict__ out = static_cast<scalar_t*>(p.dst);
  const index_t w = static_cast<index_t>(p.w), h = static_cast<index_t>(p.h), C = static_cast<index_t>(p.C);
  const index_t W = static_cast<index_t>(p.W), HW = static_cast<index_t>(p.H * p.W);
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t e = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; e < total; e += stride) {
    const index_t j = e % w;
    const index_t t = e / w;
    const index_t i = t % h;
    const index_t nc = t / h;
    const index_t n = nc / C, c = nc - n * C;
    const int64_t b = imresize_table(p.image_index + n);
    if (b < 0 || b >= p.B) {  // outside the contract (checked in Python): a NaN row, no read
      out[e] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      continue;
    }
    const crop_resize_tap<acc_t> ty = crop_resize_row<acc_t>(p, n, i);
    const crop_resize_tap<acc_t> tx = crop_resize_col<acc_t>(p, n, j);
    acc_t wt[4];
    crop_resize_weights(ty.f, tx.f, wt);
    const scalar_t* plane = x + (static_cast<index_t>(b) * C + c) * HW;
    const index_t r0 = static_cast<index_t>(ty.i0) * W, r1 = static_cast<index_t>(ty.i1) * W;
    const index_t c0 = static_cast<index_t>(tx.i0), c1 = static_cast<index_t>(tx.i1);
    acc_t v = imresize_mul(wt[0], static_cast<acc_t>(plane[r0 + c0]));
    v += imresize_mul(wt[1], static_cast<acc_t>(plane[r0 + c1]));
    v += imresize_mul(wt[2], static_cast<acc_t>(plane[r1 + c0]));
    v += imresize_mul(wt[3], static_cast<acc_t>(plane[r1 + c1]));
    out[e] = static_cast<scalar_t>(v);
  }
}

// grad[e] for e = ((n*C + c)*h + i)*w + j, added into acc[image_index[n], c] at the four corners.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) crop_resize_backward_kernel(const crop_resize_params p, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* __restrict__ grad = static_cast<const scalar_t*>(p.src);
  auto* acc = static_cast<acc_t*>(p.dst);
  const index_t w = static_cast<index_t>(p.w), h = static_cast<index_t>(p.h), C = static_cast<index_t>(p.C);
  const index_t W = static_cast<index_t>(p.W), HW = static_cast<index_t>(p.H * p.W);
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t e = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; e < total; e += stride) {
    const index_t j = e % w;
    const index_t t = e / w;
    const index_t i = t % h;
    const index_t nc = t / h;
    const index_t n = nc / C, c = nc - n * C;
    const int64_t b = imresize_table(p.image_index + n);
    if (b < 0 || b >= p.B) continue;  // no gradient from a row outside the contract
    const crop_resize_tap<acc_t> ty = crop_resize_row<acc_t>(p, n, i);
    const crop_resize_tap<acc_t> tx = crop_resize_col<acc_t>(p, n, j);
    acc_t wt[4];
    crop_resize_weights(ty.f, tx.f, wt);
    const acc_t g = static_cast<acc_t>(grad[e]);
    acc_t* plane = acc + (static_cast<index_t>(b) * C + c) * HW;
    const index_t r0 = static_cast<index_t>(ty.i0) * W, r1 = static_cast<index_t>(ty.i1) * W;
    const index_t c0 = static_cast<index_t>(tx.i0), c1 = static_cast<index_t>(tx.i1);
    atomicAdd(plane + r0 + c0, imresize_mul(wt[0], g));
    atomicAdd(plane + r0 + c1, imresize_mul(wt[1], g));
    atomicAdd(plane + r1 + c0, imresize_mul(wt[2], g));
    atomicAdd(plane + r1 + c1, imresize_mul(wt[3], g));
  }
}

template <typename scalar_t, typename index_t>
void launch_forward(const crop_resize_params& p, int64_t n) {
  crop_resize_kernel<scalar_t, index_t>
      <<<grid_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p, static_cast<index_t>(n));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename index_t>
void launch_backward(const crop_resize_params& p, int64_t n) {
  crop_resize_backward_kernel<scalar_t, index_t>
      <<<grid_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p, static_cast<index_t>(n));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor crop_resize_cuda(const at::Tensor& x, const at::Tensor& boxes, const at::Tensor& image_index, int64_t out_h,
                            int64_t out_w) {
  crop_resize_params p = crop_resize_check(x, boxes, image_index, out_h, out_w);
  TORCH_CHECK_VALUE(x.is_cuda(), "the CUDA crop_resize kernel needs CUDA tensors, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({p.N, p.C, p.h, p.w}, x.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  p.dst = out.mutable_data_ptr();
  const bool small = fits_int(std::max(n, x.numel()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crop_resize_cuda", [&] {
    if (small) launch_forward<scalar_t, int>(p, n);
    else launch_forward<scalar_t, int64_t>(p, n);
  });
  return out;
}

at::Tensor crop_resize_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& image_index,
                                     int64_t batch, int64_t height, int64_t width) {
  crop_resize_params p = crop_resize_backward_check(grad, boxes, image_index, batch, height, width);
  TORCH_CHECK_VALUE(grad.is_cuda(), "the CUDA crop_resize backward kernel needs CUDA tensors, got ", grad.device());
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto acc_type = imresize_opmath_type(grad.scalar_type());
  // float32/float64 accumulate in the result itself; float16/bfloat16 in a float32 buffer, rounded once at the end
  at::Tensor acc = at::zeros({p.B, p.C, p.H, p.W}, grad.options().dtype(acc_type));
  const int64_t n = grad.numel();
  if (n > 0) {
    p.dst = acc.mutable_data_ptr();
    const bool small = fits_int(std::max(n, acc.numel()));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_resize_backward_cuda", [&] {
      if (small) launch_backward<scalar_t, int>(p, n);
      else launch_backward<scalar_t, int64_t>(p, n);
    });
  }
  return acc_type == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CUDA, m) {
  m.impl("_crop_resize_cuda", &crop_resize_cuda);
  m.impl("_crop_resize_backward_cuda", &crop_resize_backward_cuda);
}

}  // namespace fsgan_fast
