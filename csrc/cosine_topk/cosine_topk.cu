// CUDA kernels of cosine_topk (contract: fsgan_fast/ops/cosine_topk.py; cosine_topk.cpp does the same arithmetic in
// plain loops). On the current stream, no host sync, no atomics; the [B, P, M] similarity never reaches global memory.
//
// Both modes share the inner loop: a block owns kTileP pixels of one image, one thread per pixel (coalesced reads of
// each feature row), and streams the prototypes through shared memory, kChanChunk channels x MT prototypes at a time,
// channel-major so that every thread reads the same row: a broadcast. Each thread keeps MT dot products and its
// pixel's squared norm in registers. This is plain FMA work (C * MT per pixel); tensor cores would take it as a
// [kTileP, C] x [C, MT] product per block (mma.sync on tf32/bf16 fragments, or wgmma on sm_90), with the top-k
// epilogue unchanged, should a profile show the FMA pipe rather than HBM as the limit.
//
// Over the prototypes each thread then keeps its pixel's running top-k (KP register slots). Over the pixels a block
// writes its tile's top-k per prototype to a small workspace [B, M, tiles, k] (a warp per prototype, lanes merging
// their candidates by shuffles), and a second kernel merges the tiles' lists.
#include "cosine_topk/cosine_topk.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fsgan_fast {
namespace {

constexpr int kTileP = 128;      // pixels per block = threads per block
constexpr int kWarps = kTileP / 32;
constexpr int kChanChunk = 32;   // prototype channels staged in shared memory per step
constexpr int kPerLane = kTileP / 32;  // pixels of a tile per lane when a warp selects over the tile
constexpr int kMergeWarps = 4;   // rows (image, prototype) per merge block, a warp each

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// dot[j] = <feats[b, :, px], prototypes[m0 + j]> for j < mt (0 beyond), ss = ||feats[b, :, px]||^2, and inv_q[j] the
// inverse norms of the chunk's prototypes. Every thread of the block calls it (it syncs); `ok` says whether the
// thread's pixel exists.
template <typename scalar_t, int MT>
__device__ __forceinline__ void tile_dots(const topk_params& p, int64_t b, int px, bool ok, int m0, int mt,
                          at::opmath_type<scalar_t> (&dot)[MT], at::opmath_type<scalar_t>& ss,
                          at::opmath_type<scalar_t>* inv_q) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t q_s[kChanChunk][MT];
  const auto* __restrict__ q = static_cast<const acc_t*>(p.prototypes);
  const int C = static_cast<int>(p.C), P = static_cast<int>(p.P);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int j = warp; j < MT; j += kWarps) {
    acc_t s = 0;
    if (j < mt)
      for (int c = lane; c < C; c += 32) s += q[(m0 + j) * C + c] * q[(m0 + j) * C + c];
    s = warp_sum(s);
    if (lane == 0) inv_q[j] = j < mt ? topk_inv_norm(s) : acc_t(0);
  }
#pragma unroll
  for (int j = 0; j < MT; ++j) dot[j] = 0;
  ss = 0;
  const scalar_t* __restrict__ f = static_cast<const scalar_t*>(p.feats) + b * p.C * p.P + (ok ? px : 0);
  for (int c0 = 0; c0 < C; c0 += kChanChunk) {
    const int cn = min(kChanChunk, C - c0);
    __syncthreads();  // the previous chunk's readers are done
    for (int e = threadIdx.x; e < kChanChunk * MT; e += kTileP) {
      const int c = e / MT, j = e % MT;
      q_s[c][j] = c < cn && j < mt ? q[(m0 + j) * C + c0 + c] : acc_t(0);
    }
    __syncthreads();
    if (ok) {
#pragma unroll 2
      for (int c = 0; c < cn; ++c) {
        const acc_t v = static_cast<acc_t>(f[static_cast<int64_t>(c0 + c) * P]);
        ss += v * v;
#pragma unroll
        for (int j = 0; j < MT; ++j) dot[j] += v * q_s[c][j];
      }
    }
  }
  __syncthreads();  // inv_q is complete and q_s free for the caller's next chunk
}

// ---------------------------------------------------------------------------------------------------------------
// Over the prototypes: grid B * tiles; each thread's pixel gets its k best prototypes.

template <typename scalar_t, int MT, int KP>
__global__ void __launch_bounds__(kTileP) topk_prototypes_kernel(const topk_params p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t inv_q[MT];
  const int tiles = static_cast<int>((p.P + kTileP - 1) / kTileP);
  const int64_t b = blockIdx.x / tiles;
  const int px = static_cast<int>(blockIdx.x % tiles) * kTileP + threadIdx.x;
  const bool ok = px < p.P;
  acc_t bv[KP];
  int bi[KP];
#pragma unroll
  for (int j = 0; j < KP; ++j) {
    bv[j] = acc_t(-INFINITY);
    bi[j] = INT_MAX;
  }
  const int M = static_cast<int>(p.M);
  for (int m0 = 0; m0 < M; m0 += MT) {  // uniform trip count: the block syncs inside
    const int mt = min(MT, M - m0);
    acc_t dot[MT], ss;
    tile_dots<scalar_t, MT>(p, b, px, ok, m0, mt, dot, ss, inv_q);
    if (ok) {
      const acc_t inv_f = topk_inv_norm(ss);
#pragma unroll
      for (int j = 0; j < MT; ++j)
        if (j < mt) topk_insert<KP>(bv, bi, dot[j] * inv_f * inv_q[j], m0 + j);
    }
    __syncthreads();  // inv_q is rewritten by the next chunk
  }
  if (!ok) return;
  auto* score = static_cast<scalar_t*>(p.score);
#pragma unroll
  for (int j = 0; j < KP; ++j) {
    if (j < p.k) {
      const int64_t at = (b * p.k + j) * p.P + px;
      p.idx[at] = bi[j];
      score[at] = static_cast<scalar_t>(bv[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Over the pixels

// The k best of a warp's candidates, each lane holding its own sorted list (bv, bi): k rounds of a butterfly
// argmax over the lanes' heads (a total order, so every lane agrees on the winner), whose owner pops it. emit(r, v, i)
// runs on lane 0 for round r.
template <int KP, typename acc_t, typename Emit>
__device__ __forceinline__ void warp_select(acc_t (&bv)[KP], int (&bi)[KP], int k, Emit&& emit) {
  for (int r = 0; r < k; ++r) {
    acc_t v = bv[0];
    int i = bi[0];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const acc_t ov = __shfl_xor_sync(0xffffffffu, v, off);
      const int oi = __shfl_xor_sync(0xffffffffu, i, off);
      if (topk_better<acc_t>(ov, oi, v, i)) {
        v = ov;
        i = oi;
      }
    }
    // real indices are distinct; an empty winner (fewer than k candidates) pops empty heads, which changes nothing
    if (bi[0] == i) {
#pragma unroll
      for (int j = 0; j + 1 < KP; ++j) {
        bv[j] = bv[j + 1];
        bi[j] = bi[j + 1];
      }
      bv[KP - 1] = acc_t(-INFINITY);
      bi[KP - 1] = INT_MAX;
    }
    if (threadIdx.x % 32 == 0) emit(r, v, i);
  }
}

// grid B * tiles * chunks (chunks of MT prototypes): the tile's k best pixels for each prototype of the chunk, into
// ws_v / ws_i [B, M, tiles, k] (empty slots -inf / INT_MAX when the tile has fewer than k pixels).
template <typename scalar_t, int MT, int KP>
__global__ void __launch_bounds__(kTileP) topk_pixels_tile_kernel(const topk_params p, at::opmath_type<scalar_t>* ws_v,
                                                                   int* ws_i) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t inv_q[MT];
  __shared__ acc_t cos_s[MT][kTileP + 1];  // odd stride: the column writes hit distinct banks
  const int M = static_cast<int>(p.M), P = static_cast<int>(p.P);
  const int tiles = (P + kTileP - 1) / kTileP, chunks = (M + MT - 1) / MT;
  const int chunk = blockIdx.x % chunks, tile = blockIdx.x / chunks % tiles;
  const int64_t b = blockIdx.x / chunks / tiles;
  const int m0 = chunk * MT, mt = min(MT, M - m0), p0 = tile * kTileP;
  const int px = p0 + threadIdx.x;
  const bool ok = px < P;
  acc_t dot[MT], ss;
  tile_dots<scalar_t, MT>(p, b, px, ok, m0, mt, dot, ss, inv_q);
  const acc_t inv_f = topk_inv_norm(ss);
#pragma unroll
  for (int j = 0; j < MT; ++j) cos_s[j][threadIdx.x] = ok && j < mt ? dot[j] * inv_f * inv_q[j] : acc_t(-INFINITY);
  __syncthreads();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, k = static_cast<int>(p.k);
  for (int j = warp; j < mt; j += kWarps) {
    acc_t bv[KP];
    int bi[KP];
#pragma unroll
    for (int s = 0; s < KP; ++s) {
      bv[s] = acc_t(-INFINITY);
      bi[s] = INT_MAX;
    }
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int t = lane + 32 * r;
      if (p0 + t < P) topk_insert<KP>(bv, bi, cos_s[j][t], p0 + t);
    }
    const int64_t row = ((b * M + m0 + j) * tiles + tile) * k;
    warp_select<KP>(bv, bi, k, [&](int r, acc_t v, int i) {
      ws_v[row + r] = v;
      ws_i[row + r] = i;
    });
  }
}

// grid ceil(B * M / kMergeWarps): a warp per (image, prototype) merges the tiles' lists into the final k.
template <typename scalar_t, int KP>
__global__ void __launch_bounds__(kMergeWarps * 32) topk_pixels_merge_kernel(const topk_params p,
                                                                             const at::opmath_type<scalar_t>* ws_v,
                                                                             const int* ws_i, int tiles) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeWarps + threadIdx.x / 32;
  if (row >= p.B * p.M) return;  // whole warps leave together
  const int lane = threadIdx.x % 32, k = static_cast<int>(p.k);
  const int n = tiles * k;
  acc_t bv[KP];
  int bi[KP];
#pragma unroll
  for (int s = 0; s < KP; ++s) {
    bv[s] = acc_t(-INFINITY);
    bi[s] = INT_MAX;
  }
  for (int e = lane; e < n; e += 32) topk_insert<KP>(bv, bi, ws_v[row * n + e], ws_i[row * n + e]);
  auto* score = static_cast<scalar_t*>(p.score);
  warp_select<KP>(bv, bi, k, [&](int r, acc_t v, int i) {
    p.idx[row * k + r] = i;
    score[row * k + r] = static_cast<scalar_t>(v);
  });
}

// ---------------------------------------------------------------------------------------------------------------

// Calls fn(std::integral_constant<int, MT>) with the prototype chunk the kernels take for M: 8, 16 or 32.
template <typename Fn>
void dispatch_chunk(int64_t M, Fn&& fn) {
  if (M <= 8) {
    fn(std::integral_constant<int, 8>{});
  } else if (M <= 16) {
    fn(std::integral_constant<int, 16>{});
  } else {
    fn(std::integral_constant<int, 32>{});
  }
}

std::tuple<at::Tensor, at::Tensor> cosine_topk_cuda(const at::Tensor& feats, const at::Tensor& prototypes, int64_t k,
                                                    bool over_pixels) {
  topk_params p = topk_check(feats, prototypes, k, over_pixels);
  const c10::cuda::CUDAGuard guard(feats.device());
  const std::vector<int64_t> shape = over_pixels ? std::vector<int64_t>{p.B, p.M, p.k}
                                                 : std::vector<int64_t>{p.B, p.k, p.H, p.W};
  at::Tensor idx = at::empty(shape, feats.options().dtype(at::kLong));
  at::Tensor score = at::empty(shape, feats.options());
  p.idx = idx.mutable_data_ptr<int64_t>();
  p.score = score.mutable_data_ptr();
  if (p.B == 0) return {idx, score};
  const int64_t tiles = (p.P + kTileP - 1) / kTileP;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "cosine_topk_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    topk_dispatch_width(p.k, [&](auto width) {
      constexpr int KP = decltype(width)::value;
      dispatch_chunk(p.M, [&](auto chunk) {
        constexpr int MT = decltype(chunk)::value;
        if (!p.over_pixels) {
          const int64_t blocks = p.B * tiles;
          TORCH_CHECK_VALUE(blocks <= INT_MAX, "cosine_topk: ", blocks, " blocks exceed one launch");
          topk_prototypes_kernel<scalar_t, MT, KP><<<static_cast<unsigned>(blocks), kTileP, 0, stream>>>(p);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          return;
        }
        const int64_t chunks = (p.M + MT - 1) / MT, blocks = p.B * tiles * chunks;
        TORCH_CHECK_VALUE(blocks <= INT_MAX && tiles * p.k <= INT_MAX, "cosine_topk: ", blocks,
                          " blocks exceed one launch");
        const auto acc_type = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
        at::Tensor ws_v = at::empty({p.B, p.M, tiles, p.k}, feats.options().dtype(acc_type));
        at::Tensor ws_i = at::empty({p.B, p.M, tiles, p.k}, feats.options().dtype(at::kInt));
        topk_pixels_tile_kernel<scalar_t, MT, KP><<<static_cast<unsigned>(blocks), kTileP, 0, stream>>>(
            p, ws_v.mutable_data_ptr<acc_t>(), ws_i.mutable_data_ptr<int>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const int64_t rows = (p.B * p.M + kMergeWarps - 1) / kMergeWarps;
        topk_pixels_merge_kernel<scalar_t, KP><<<static_cast<unsigned>(rows), kMergeWarps * 32, 0, stream>>>(
            p, ws_v.const_data_ptr<acc_t>(), ws_i.const_data_ptr<int>(), static_cast<int>(tiles));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return {idx, score};
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CUDA, m) { m.impl("_cosine_topk_cuda", &cosine_topk_cuda); }

}  // namespace fsgan_fast
