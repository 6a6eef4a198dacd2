// CUDA kernel of imresize (contract: fsgan_fast/ops/imresize.py, see imresize.h; imresize.cpp does the same sums in
// plain loops). One thread per output element, grid-stride, on the current stream, no host sync; each thread reads
// its Th x Tw input taps (neighbouring threads share most of them, in L1/L2) and the small tap tables through the
// read-only cache. Deterministic: no atomics, every sum in tap order.
#include "imresize/imresize.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

namespace fsgan_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// out[e] for e = ((b*C + c)*Ho + y)*Wo + x. index_t: int when every element offset of x and out fits in it.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    imresize_kernel(const imresize_params p, scalar_t* __restrict__ out, index_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const index_t Wo = static_cast<index_t>(p.Wo), Ho = static_cast<index_t>(p.Ho);
  const index_t plane_in = static_cast<index_t>(p.Hi * p.Wi);
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t e = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; e < n; e += stride) {
    const index_t xo = e % Wo;
    const index_t t = e / Wo;
    const index_t y = t % Ho;
    const index_t bc = t / Ho;
    out[e] = static_cast<scalar_t>(imresize_point<scalar_t, acc_t, index_t>(x + bc * plane_in, p, y, xo));
  }
}

template <typename scalar_t, typename index_t>
void launch(const imresize_params& p, scalar_t* out, int64_t n) {
  const int blocks = static_cast<int>(std::min(ceil_div(n, kThreads), kMaxBlocks));
  imresize_kernel<scalar_t, index_t>
      <<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p, out, static_cast<index_t>(n));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor imresize_cuda(const at::Tensor& x, const at::Tensor& row_idx, const at::Tensor& row_w,
                         const at::Tensor& col_idx, const at::Tensor& col_w) {
  const imresize_params p = imresize_check("x", x, row_idx, row_w, col_idx, col_w);
  TORCH_CHECK_VALUE(x.is_cuda(), "the CUDA imresize kernel needs CUDA tensors, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({p.B, p.C, p.Ho, p.Wo}, x.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  // int offsets when every element of x and out (and the grid-stride step past the end) fits
  const bool small = std::max(n, x.numel()) <= INT_MAX - kThreads * kMaxBlocks;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "imresize_cuda", [&] {
    if (small) launch<scalar_t, int>(p, out.mutable_data_ptr<scalar_t>(), n);
    else launch<scalar_t, int64_t>(p, out.mutable_data_ptr<scalar_t>(), n);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CUDA, m) { m.impl("_imresize_cuda", &imresize_cuda); }

}  // namespace fsgan_fast
