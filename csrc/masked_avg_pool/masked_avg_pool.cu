// CUDA kernels of masked_avg_pool (contract: fsgan_fast/ops/masked_avg_pool.py; masked_avg_pool.cpp does the same
// arithmetic in plain loops). Two launches on the current stream, no host sync, no atomics: the per-image masked sums
// and weights into a small workspace ([B, M, C] + [B, M] in opmath), then the fold over the images (pool_fold, the
// images in order). Deterministic: every sum has a fixed order (lane-strided, then a fixed butterfly).
//
// Prototypes are computed once per few-shot set, so this is written for clarity over peak speed: each warp owns two
// channels of one image and 16 classes, lanes stride over the pixels (coalesced rows of features and weights), and
// the 8 warps of a block read the same weight rows (L1 hits). A [M, P] x [P, C] tensor-core product per image would
// be the next step if it ever showed up in a profile.
#include "masked_avg_pool/masked_avg_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <tuple>
#include <type_traits>

namespace fsgan_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChansPerWarp = 2;
constexpr int kBlockChans = kWarps * kChansPerWarp;  // channels per block
constexpr int kBlockClasses = 16;                    // classes per block: 2 x 16 accumulators per thread
constexpr int kFoldThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// grid (B, ceil(C / kBlockChans), ceil(M / kBlockClasses)): sums[b, m, c] for the block's channels and classes; the
// blocks of the first channel slice also write wsum[b, m].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) masked_sums_kernel(const pool_params p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int C = static_cast<int>(p.C), M = static_cast<int>(p.M), P = static_cast<int>(p.P);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t b = blockIdx.x;
  const int c0 = blockIdx.y * kBlockChans + warp * kChansPerWarp;
  const int m0 = blockIdx.z * kBlockClasses;
  const scalar_t* __restrict__ f = static_cast<const scalar_t*>(p.feats) + b * p.C * p.P;
  const acc_t* __restrict__ w = static_cast<const acc_t*>(p.weights) + b * p.M * p.P;
  acc_t acc[kChansPerWarp][kBlockClasses];
#pragma unroll
  for (int cc = 0; cc < kChansPerWarp; ++cc)
#pragma unroll
    for (int mm = 0; mm < kBlockClasses; ++mm) acc[cc][mm] = 0;
  for (int j = lane; j < P; j += 32) {
    acc_t fv[kChansPerWarp];
#pragma unroll
    for (int cc = 0; cc < kChansPerWarp; ++cc) fv[cc] = c0 + cc < C ? static_cast<acc_t>(f[(c0 + cc) * P + j]) : 0;
#pragma unroll
    for (int mm = 0; mm < kBlockClasses; ++mm) {
      const acc_t wv = m0 + mm < M ? w[(m0 + mm) * P + j] : acc_t(0);
#pragma unroll
      for (int cc = 0; cc < kChansPerWarp; ++cc) acc[cc][mm] += wv * fv[cc];
    }
  }
  acc_t* sums = static_cast<acc_t*>(p.sums);
#pragma unroll
  for (int cc = 0; cc < kChansPerWarp; ++cc) {
#pragma unroll
    for (int mm = 0; mm < kBlockClasses; ++mm) {
      const acc_t s = warp_sum(acc[cc][mm]);
      if (lane == 0 && c0 + cc < C && m0 + mm < M) sums[(b * M + m0 + mm) * C + c0 + cc] = s;
    }
  }
  if (blockIdx.y != 0) return;
  acc_t* wsum = static_cast<acc_t*>(p.wsum);
  for (int mm = warp; mm < kBlockClasses && m0 + mm < M; mm += kWarps) {  // warp-uniform bounds
    acc_t s = 0;
    for (int j = lane; j < P; j += 32) s += w[(m0 + mm) * P + j];
    s = warp_sum(s);
    if (lane == 0) wsum[b * M + m0 + mm] = s;
  }
}

// One thread per (class, channel): steps 3-4.
template <typename scalar_t>
__global__ void __launch_bounds__(kFoldThreads) pool_fold_kernel(const pool_params p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t mc = static_cast<int64_t>(blockIdx.x) * kFoldThreads + threadIdx.x;
  if (mc >= p.M * p.C) return;
  const int64_t m = mc / p.C, c = mc % p.C;
  bool present = false;
  const acc_t v = pool_fold(static_cast<const acc_t*>(p.sums), static_cast<const acc_t*>(p.wsum), p.B, p.M, p.C, m, c,
                            p.per_image, &present);
  static_cast<scalar_t*>(p.vectors)[mc] = static_cast<scalar_t>(v);
  if (c == 0) p.present[m] = present;
}

std::tuple<at::Tensor, at::Tensor> masked_avg_pool_cuda(const at::Tensor& feats, const at::Tensor& weights,
                                                        bool per_image) {
  pool_params p = pool_check(feats, weights, per_image);
  const c10::cuda::CUDAGuard guard(feats.device());
  at::Tensor vectors = at::empty({p.M, p.C}, feats.options());
  at::Tensor present = at::empty({p.M}, feats.options().dtype(at::kBool));
  at::Tensor sums = at::empty({p.B, p.M, p.C}, weights.options());
  at::Tensor wsum = at::empty({p.B, p.M}, weights.options());
  p.vectors = vectors.mutable_data_ptr();
  p.present = present.mutable_data_ptr<bool>();
  p.sums = sums.mutable_data_ptr();
  p.wsum = wsum.mutable_data_ptr();
  const int64_t chan_blocks = (p.C + kBlockChans - 1) / kBlockChans;
  const int64_t class_blocks = (p.M + kBlockClasses - 1) / kBlockClasses;
  const int64_t fold_blocks = (p.M * p.C + kFoldThreads - 1) / kFoldThreads;
  TORCH_CHECK_VALUE(p.B <= INT_MAX && chan_blocks <= 65535 && class_blocks <= 65535 && fold_blocks <= INT_MAX,
                    "masked_avg_pool: B=", p.B, ", C=", p.C, ", M=", p.M, " exceed one launch's grid");
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "masked_avg_pool_cuda", [&] {
    const dim3 grid(static_cast<unsigned>(p.B), static_cast<unsigned>(chan_blocks),
                    static_cast<unsigned>(class_blocks));
    masked_sums_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pool_fold_kernel<scalar_t><<<static_cast<unsigned>(fold_blocks), kFoldThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {vectors, present};
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CUDA, m) { m.impl("_masked_avg_pool_cuda", &masked_avg_pool_cuda); }

}  // namespace fsgan_fast
