// CUDA kernels of lfm_fuse / lfm_apply (contract: fsgan_fast/ops/lfm.py; lfm.cpp does the same arithmetic in
// plain loops). One launch per forward and one per backward, on the current stream, no host sync. Deterministic:
// no float atomics, every sum in a fixed order. Out-of-range indices select nothing, as on the CPU: a row with a
// bad base gives zeros (ref_idx -1), a bad position is skipped (ref_idx -1), a bad match adds nothing. A position
// repeated within a row (only possible with check_indices=False) gets the value of one of its entries.
#include "lfm/lfm.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <tuple>

namespace fsgan_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMatchTile = 8;          // selected positions per matching block: their dot products sit in registers
constexpr int kApplyTile = 32;         // selected positions per block when the matches are given
constexpr int kCopyWidth = 1024;       // most positions per copy block (its selection mask is in shared memory)
constexpr int kCopyElems = 16 * 1024;  // elements per copy block: enough work to amortise building that mask
constexpr int kBackwardElems = 16 * 1024;  // grad_x elements per backward block, likewise for its sort

// Forward grid, per batch row: match_tiles blocks of TILE selected positions, then copy_tiles blocks that write the
// base map at the unselected positions, each over copy_width positions x copy_chans channels.
struct fwd_geometry {
  int match_tiles, copy_tiles, copy_width, copy_chans;
  int jstride;               // matching: threads along the reference positions j; kThreads / jstride channel slices
  int64_t dyn_bytes;         // scratch per selected-position block: staged base vectors, then the matches
  unsigned char* workspace;  // that scratch in global memory when it does not fit in shared memory, else null
};

// Backward grid: per (batch row, shot), `chunks` blocks of `chans` channels; each sorts the matches itself (n + P work,
// small next to its chans * P outputs) and the first also computes grad_alpha. dyn_bytes of int scratch per block, in
// shared memory or the workspace.
struct bwd_geometry {
  int chunks, chans;
  int64_t dyn_bytes;
  unsigned char* workspace;
};

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block, always the same tree; the result is valid in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_part[kWarps];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kWarps; ++w) total += warp_part[w];
  return total;
}

// a[0..len) <- its exclusive prefix sum; each thread scans one contiguous segment.
__device__ void block_exclusive_scan(int* a, int len) {
  __shared__ int warp_total[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int seg = (len + kThreads - 1) / kThreads;
  const int lo = min(static_cast<int>(threadIdx.x) * seg, len), hi = min(lo + seg, len);
  int own = 0;
  for (int i = lo; i < hi; ++i) own += a[i];
  int incl = own;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int v = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += v;
  }
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = lane < kWarps ? warp_total[lane] : 0;
#pragma unroll
    for (int off = 1; off < kWarps; off *= 2) {
      const int v = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += v;
    }
    if (lane < kWarps) warp_total[lane] = w;
  }
  __syncthreads();
  int run = (warp > 0 ? warp_total[warp - 1] : 0) + incl - own;
  for (int i = lo; i < hi; ++i) {
    const int v = a[i];
    a[i] = run;
    run += v;
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------------------------------
// Forward

// Copy block: fused = base map (zeros for a bad base) at the unselected positions of its tile. The selected ones
// belong to the matching blocks, so every element of fused is written by exactly one block.
template <typename scalar_t>
__device__ void copy_unselected(const lfm_params& p, const fwd_geometry& g, int64_t b, int tile, bool base_ok,
                                const scalar_t* __restrict__ f, scalar_t* __restrict__ out) {
  __shared__ bool selected[kCopyWidth];
  const int P = static_cast<int>(p.P), C = static_cast<int>(p.C), n = static_cast<int>(p.n);
  const int width_tiles = (P + g.copy_width - 1) / g.copy_width;
  const int p0 = tile % width_tiles * g.copy_width, c0 = tile / width_tiles * g.copy_chans;
  const int width = min(g.copy_width, P - p0), chans = min(g.copy_chans, C - c0);
  for (int i = threadIdx.x; i < width; i += kThreads) selected[i] = false;
  __syncthreads();
  const int64_t* pos = p.positions + b * n;
  for (int t = threadIdx.x; t < n; t += kThreads) {
    const int64_t q = pos[t];
    if (p0 <= q && q < p0 + width) selected[q - p0] = true;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < chans * width; e += kThreads) {
    const int q = e % width, i = (c0 + e / width) * P + p0 + q;
    if (!selected[q]) out[i] = base_ok ? f[i] : scalar_t(0);
  }
}

// Step 2 for a block's TILE positions (pos_t, -1 for none): match[r * TILE + t] and ref_idx <- argmax_j of the
// cosine. f_sel [C][TILE] receives the raw base vectors. Thread (slice s, lane jl) walks j = jl, jl + jstride, ...
// over channels s, s + slices, ...: with P < kThreads the slices keep every thread busy, and their partial sums are
// added in slice order. Reading x_r[c, j] along j is coalesced; f_sel[c, :] is a shared-memory broadcast.
template <typename scalar_t, int TILE>
__device__ void match_positions(const lfm_params& p, const fwd_geometry& g, int64_t b, int64_t base, int t0,
                                const int* pos_t, const scalar_t* __restrict__ x, at::opmath_type<scalar_t>* f_sel,
                                int* match) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t inv_f[TILE];
  __shared__ acc_t part[kThreads * (TILE + 1)];  // odd stride: no bank conflicts
  __shared__ acc_t red_v[kWarps][TILE];
  __shared__ int red_j[kWarps][TILE];
  const int P = static_cast<int>(p.P), C = static_cast<int>(p.C), n = static_cast<int>(p.n);
  const int R = static_cast<int>(p.K) - 1;
  const int64_t plane = p.C * p.P;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t* ref_idx = p.ref_idx_out + b * R * n;

  const scalar_t* f = x + base * plane;
  for (int e = threadIdx.x; e < C * TILE; e += kThreads) {
    const int q = pos_t[e % TILE];
    f_sel[e] = q >= 0 ? static_cast<acc_t>(f[e / TILE * P + q]) : acc_t(0);
  }
  __syncthreads();
  for (int t = warp; t < TILE; t += kWarps) {
    acc_t ss = 0;
    for (int c = lane; c < C; c += 32) ss += f_sel[c * TILE + t] * f_sel[c * TILE + t];
    ss = warp_sum(ss);
    if (lane == 0) inv_f[t] = lfm_inv_norm(ss);
  }
  __syncthreads();

  const int slices = kThreads / g.jstride, s = threadIdx.x / g.jstride, jl = threadIdx.x % g.jstride;
  for (int r = 0; r < R; ++r) {
    const scalar_t* __restrict__ xr = x + lfm_ref_shot(r, base) * plane;
    acc_t best_v[TILE];
    int best_j[TILE];
#pragma unroll
    for (int t = 0; t < TILE; ++t) {
      best_v[t] = acc_t(-INFINITY);
      best_j[t] = INT_MAX;
    }
    for (int j0 = 0; j0 < P; j0 += g.jstride) {  // uniform trip count: the block syncs inside
      const int j = j0 + jl;
      acc_t dot[TILE], ss = 0;
#pragma unroll
      for (int t = 0; t < TILE; ++t) dot[t] = 0;
      if (j < P) {
#pragma unroll 4
        for (int c = s; c < C; c += slices) {
          const acc_t v = static_cast<acc_t>(xr[c * P + j]);
          ss += v * v;
#pragma unroll
          for (int t = 0; t < TILE; ++t) dot[t] += f_sel[c * TILE + t] * v;
        }
      }
      if (slices > 1) {
        if (s > 0) {
          acc_t* mine = part + threadIdx.x * (TILE + 1);
#pragma unroll
          for (int t = 0; t < TILE; ++t) mine[t] = dot[t];
          mine[TILE] = ss;
        }
        __syncthreads();
        if (s == 0) {
          for (int o = 1; o < slices; ++o) {
            const acc_t* other = part + (o * g.jstride + jl) * (TILE + 1);
#pragma unroll
            for (int t = 0; t < TILE; ++t) dot[t] += other[t];
            ss += other[TILE];
          }
        }
        __syncthreads();
      }
      if (s == 0 && j < P) {
        const acc_t inv_r = lfm_inv_norm(ss);
#pragma unroll
        for (int t = 0; t < TILE; ++t) {
          const acc_t score = dot[t] * inv_f[t] * inv_r;
          if (lfm_better<acc_t>(score, j, best_v[t], best_j[t])) {
            best_v[t] = score;
            best_j[t] = j;
          }
        }
      }
    }
    // argmax over the block: warps by shuffles, then the warps in order (the order is a total one anyway)
#pragma unroll
    for (int t = 0; t < TILE; ++t) {
      acc_t v = best_v[t];
      int jj = best_j[t];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) {
        const acc_t ov = __shfl_xor_sync(0xffffffffu, v, off);
        const int oj = __shfl_xor_sync(0xffffffffu, jj, off);
        if (lfm_better<acc_t>(ov, oj, v, jj)) {
          v = ov;
          jj = oj;
        }
      }
      if (lane == 0) {
        red_v[warp][t] = v;
        red_j[warp][t] = jj;
      }
    }
    __syncthreads();
    if (threadIdx.x < TILE) {
      const int t = threadIdx.x;
      acc_t v = red_v[0][t];
      int jj = red_j[0][t];
      for (int w = 1; w < kWarps; ++w) {
        if (lfm_better<acc_t>(red_v[w][t], red_j[w][t], v, jj)) {
          v = red_v[w][t];
          jj = red_j[w][t];
        }
      }
      const int m = pos_t[t] >= 0 ? jj : -1;
      match[r * TILE + t] = m;
      if (t0 + t < n) ref_idx[static_cast<int64_t>(r) * n + t0 + t] = m;
    }
    __syncthreads();  // red_v / red_j are reused by the next reference
  }
}

// grid.x = B * (match_tiles + copy_tiles). kMatch: lfm_fuse (steps 2 and 3); else lfm_apply (step 3, given matches).
template <typename scalar_t, int TILE, bool kMatch>
__global__ void __launch_bounds__(kThreads) lfm_forward_kernel(const lfm_params p, const fwd_geometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tiles_per_row = g.match_tiles + g.copy_tiles;
  const int64_t b = blockIdx.x / tiles_per_row;
  const int tile = blockIdx.x % tiles_per_row;
  const int P = static_cast<int>(p.P), C = static_cast<int>(p.C), n = static_cast<int>(p.n);
  const int R = static_cast<int>(p.K) - 1;
  const int64_t plane = p.C * p.P;
  const int64_t base = p.base[b];
  const bool base_ok = lfm_in_range(base, p.K);
  const auto* x = static_cast<const scalar_t*>(p.x) + b * p.K * plane;  // this row's shots [K, C, P]
  const scalar_t* f = x + (base_ok ? base : 0) * plane;
  auto* out = static_cast<scalar_t*>(p.fused) + b * plane;
  if (tile >= g.match_tiles) {
    copy_unselected(p, g, b, tile - g.match_tiles, base_ok, f, out);
    return;
  }

  __shared__ int pos_t[TILE];  // this block's selected positions, -1 for none
  const int t0 = tile * TILE;
  if (threadIdx.x < TILE) {
    const int t = t0 + threadIdx.x;
    const int64_t q = t < n ? p.positions[b * n + t] : -1;
    pos_t[threadIdx.x] = lfm_in_range(q, P) ? static_cast<int>(q) : -1;
  }
  unsigned char* scratch = g.workspace ? g.workspace + (b * g.match_tiles + tile) * g.dyn_bytes : smem;
  auto* f_sel = reinterpret_cast<acc_t*>(scratch);                                      // [C][TILE], kMatch only
  int* match = reinterpret_cast<int*>(scratch + (kMatch ? C * TILE * sizeof(acc_t) : 0));  // [R][TILE]
  __syncthreads();

  if (!base_ok) {
    for (int e = threadIdx.x; e < R * TILE; e += kThreads) {
      const int t = e % TILE;
      match[e] = -1;
      if (kMatch && t0 + t < n) p.ref_idx_out[(b * R + e / TILE) * n + t0 + t] = -1;
    }
  } else if constexpr (kMatch) {
    match_positions<scalar_t, TILE>(p, g, b, base, t0, pos_t, x, f_sel, match);
  } else {
    for (int e = threadIdx.x; e < R * TILE; e += kThreads) {
      const int t = e % TILE;
      const int64_t j = pos_t[t] >= 0 ? p.ref_idx[(b * R + e / TILE) * n + t0 + t] : -1;
      match[e] = lfm_in_range(j, P) ? static_cast<int>(j) : -1;
    }
  }
  __syncthreads();

  // step 3: fused[:, p_t] = alpha_base * f[:, p_t] + sum_r alpha_r * x_r[:, match_r(t)]
  const acc_t* alpha = static_cast<const acc_t*>(p.alpha) + b * p.K;
  for (int e = threadIdx.x; e < C * TILE; e += kThreads) {
    const int c = e / TILE, t = e % TILE, q = pos_t[t];
    if (q < 0) continue;
    acc_t acc = 0;
    if (base_ok) {
      acc = alpha[base] * (kMatch ? f_sel[e] : static_cast<acc_t>(f[c * P + q]));
      for (int r = 0; r < R; ++r) {
        const int j = match[r * TILE + t];
        const int64_t shot = lfm_ref_shot(r, base);
        if (j >= 0) acc += alpha[shot] * static_cast<acc_t>(x[shot * plane + c * P + j]);
      }
    }
    out[c * P + q] = static_cast<scalar_t>(acc);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward: block (b, k, chunk) writes grad_x[b, k, its channels] once, element by element; chunk 0 also writes
// grad_alpha[b, k].

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) lfm_backward_kernel(const lfm_params p, const bwd_geometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t K = p.K, bk = blockIdx.x / g.chunks, b = bk / K, k = bk % K;
  const int chunk = blockIdx.x % g.chunks;
  const int P = static_cast<int>(p.P), C = static_cast<int>(p.C), n = static_cast<int>(p.n);
  const int R = static_cast<int>(K) - 1;
  const int e_begin = chunk * g.chans * P, e_end = min(chunk * g.chans + g.chans, C) * P;  // [c0 * P, c1 * P)
  const int64_t plane = p.C * p.P;
  const int64_t base = p.base[b];
  const scalar_t* __restrict__ grad = static_cast<const scalar_t*>(p.grad) + b * plane;
  const scalar_t* __restrict__ xk = static_cast<const scalar_t*>(p.x) + bk * plane;
  scalar_t* __restrict__ gx = static_cast<scalar_t*>(p.grad_x) + bk * plane;
  acc_t* grad_alpha = static_cast<acc_t*>(p.grad_alpha) + bk;
  if (!lfm_in_range(base, K)) {
    for (int e = e_begin + threadIdx.x; e < e_end; e += kThreads) gx[e] = scalar_t(0);
    if (chunk == 0 && threadIdx.x == 0) *grad_alpha = 0;
    return;
  }

  int* scratch = reinterpret_cast<int*>(g.workspace ? g.workspace + blockIdx.x * g.dyn_bytes : smem);
  int* bucket = scratch;    // [P] base: selection mask; reference: matches per j, then where j's list of t ends
  int* order = bucket + P;  // [n] reference: t sorted by its match, t ascending within a match
  int* pos = order + n;     // [n] position of t, -1 if out of range
  int* key = pos + n;       // [n] where this shot's vector is read for t: p_t (base) or its match; -1 for none
  const bool is_base = k == base;
  const int64_t r = k - (k > base ? 1 : 0);
  for (int t = threadIdx.x; t < n; t += kThreads) {
    const int64_t q = p.positions[b * n + t];
    const int pq = lfm_in_range(q, P) ? static_cast<int>(q) : -1;
    pos[t] = pq;
    if (is_base) {
      key[t] = pq;
    } else {
      const int64_t j = p.ref_idx[(b * R + r) * n + t];
      key[t] = pq >= 0 && lfm_in_range(j, P) ? static_cast<int>(j) : -1;
    }
  }
  for (int j = threadIdx.x; j < P; j += kThreads) bucket[j] = 0;
  __syncthreads();

  const acc_t a = static_cast<const acc_t*>(p.alpha)[bk];
  if (is_base) {
    // the gradient passes through, scaled by alpha_base at the selected positions
    for (int t = threadIdx.x; t < n; t += kThreads)
      if (pos[t] >= 0) bucket[pos[t]] = 1;
    __syncthreads();
    for (int e = e_begin + threadIdx.x; e < e_end; e += kThreads)
      gx[e] = bucket[e % P] ? static_cast<scalar_t>(a * static_cast<acc_t>(grad[e])) : grad[e];
  } else {
    // grad_x[:, j] = sum over the t matched to j, in t order, of alpha_r * grad[:, p_t]: a stable counting sort
    // of t by match gives each output element its list, so no two threads ever add into one element
    for (int t = threadIdx.x; t < n; t += kThreads)
      if (key[t] >= 0) atomicAdd(&bucket[key[t]], 1);
    __syncthreads();
    block_exclusive_scan(bucket, P);  // bucket[j]: where j's list starts
    if (threadIdx.x < 32) {
      // one warp places t in order; equal matches within 32 consecutive t take consecutive slots by rank
      const int lane = threadIdx.x;
      for (int t0 = 0; t0 < n; t0 += 32) {
        const int t = t0 + lane;
        const int j = t < n ? key[t] : -1;
        const unsigned peers = __match_any_sync(0xffffffffu, j);
        const int rank = __popc(peers & ((1u << lane) - 1));
        const int slot = j >= 0 ? bucket[j] + rank : 0;
        __syncwarp();
        if (j >= 0) {
          order[slot] = t;
          if (rank == 0) bucket[j] += __popc(peers);
        }
        __syncwarp();
      }
    }
    __syncthreads();  // now bucket[j] is where j's list ends
    for (int e = e_begin + threadIdx.x; e < e_end; e += kThreads) {
      const int c = e / P, j = e - c * P;
      const int lo = j > 0 ? bucket[j - 1] : 0, hi = bucket[j];
      acc_t acc = 0;
      for (int i = lo; i < hi; ++i) acc += a * static_cast<acc_t>(grad[c * P + pos[order[i]]]);
      gx[e] = static_cast<scalar_t>(acc);
    }
  }

  // grad_alpha[b, k] = sum_t sum_c x_k[c, key_t] * grad[c, p_t], over all channels (C * n terms, few next to C * P)
  if (chunk == 0) {
    acc_t part = 0;
    for (int e = threadIdx.x; e < C * n; e += kThreads) {
      const int c = e / n, t = e - c * n;
      if (key[t] >= 0) part += static_cast<acc_t>(xk[c * P + key[t]]) * static_cast<acc_t>(grad[c * P + pos[t]]);
    }
    part = block_sum(part);
    if (threadIdx.x == 0) *grad_alpha = part;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Launchers

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Each block's scratch goes to dynamic shared memory when it fits next to the kernel's static shared memory (raising
// its dynamic limit, 48 KB minus the static part by default), else to a global workspace of `blocks` slices. Returns
// the dynamic shared memory size to launch with.
template <typename Kernel>
int place_scratch(Kernel kernel, int64_t bytes, int64_t blocks, const at::Tensor& like, at::Tensor& workspace,
                  unsigned char*& workspace_ptr) {
  workspace_ptr = nullptr;
  if (bytes == 0 || blocks == 0) return 0;
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  const int64_t most = optin - static_cast<int64_t>(attr.sharedSizeBytes);
  if (bytes <= most) {
    // raise the limit to the device's most, never to this call's size: host threads launching the kernel
    // at once then all set the same value, and none can lower it under another's launch
    if (bytes > attr.maxDynamicSharedSizeBytes)
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most)));
    return static_cast<int>(bytes);
  }
  // stream-ordered by the caching allocator: freeing it after the launch is safe
  workspace = at::empty({blocks * bytes}, like.options().dtype(at::kByte));
  workspace_ptr = workspace.mutable_data_ptr<unsigned char>();
  return 0;
}

void check_cuda_sizes(const at::Tensor& x, const lfm_params& p) {
  TORCH_CHECK_VALUE(x.is_cuda(), "the CUDA lfm kernels need CUDA tensors, got ", x.device());
  // element offsets within one [C, P] plane (and C x tile) are int, and loops over them step by kThreads
  TORCH_CHECK_VALUE(p.C * std::max<int64_t>(p.P, kApplyTile) <= INT_MAX - kThreads,
                    "the CUDA lfm kernels need C*H*W < 2^31, got C=", p.C, ", H*W=", p.P);
}

template <typename scalar_t, int TILE, bool kMatch>
void launch_forward(const lfm_params& p, const at::Tensor& x) {
  using acc_t = at::opmath_type<scalar_t>;
  if (p.B == 0) return;
  fwd_geometry g{};
  g.match_tiles = static_cast<int>(ceil_div(p.n, TILE));
  g.copy_width = static_cast<int>(std::min<int64_t>(p.P, kCopyWidth));
  g.copy_chans = static_cast<int>(std::clamp<int64_t>(kCopyElems / g.copy_width, 1, p.C));
  g.copy_tiles = static_cast<int>(ceil_div(p.P, g.copy_width) * ceil_div(p.C, g.copy_chans));
  g.jstride = 32;
  while (g.jstride < p.P && g.jstride < kThreads) g.jstride *= 2;
  const int64_t bytes = (kMatch ? p.C * TILE * static_cast<int64_t>(sizeof(acc_t)) : 0) + (p.K - 1) * TILE * 4;
  g.dyn_bytes = ceil_div(bytes, 16) * 16;
  const int64_t blocks = p.B * (g.match_tiles + g.copy_tiles);
  TORCH_CHECK_VALUE(blocks <= INT_MAX, "lfm: too many blocks (", blocks, ") for one launch");
  auto kernel = lfm_forward_kernel<scalar_t, TILE, kMatch>;
  at::Tensor workspace;
  const int smem = place_scratch(kernel, g.dyn_bytes, p.B * g.match_tiles, x, workspace, g.workspace);
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(p, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_backward(const lfm_params& p, const at::Tensor& x) {
  if (p.B == 0) return;
  bwd_geometry g{};
  g.chans = static_cast<int>(std::clamp<int64_t>(ceil_div(kBackwardElems, p.P), 1, p.C));
  g.chunks = static_cast<int>(ceil_div(p.C, g.chans));
  g.dyn_bytes = ceil_div((p.P + 3 * p.n) * 4, 16) * 16;
  const int64_t blocks = p.B * p.K * g.chunks;
  TORCH_CHECK_VALUE(blocks <= INT_MAX, "lfm: too many blocks (", blocks, ") for one launch");
  auto kernel = lfm_backward_kernel<scalar_t>;
  at::Tensor workspace;
  const int smem = place_scratch(kernel, g.dyn_bytes, blocks, x, workspace, g.workspace);
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(p, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> lfm_fuse_cuda(const at::Tensor& feats, const at::Tensor& base,
                                                const at::Tensor& positions, const at::Tensor& alpha) {
  lfm_params p = lfm_check_fuse(feats, base, positions, alpha);
  check_cuda_sizes(feats, p);
  const c10::cuda::CUDAGuard guard(feats.device());
  at::Tensor fused = at::empty({p.B, p.C, p.H, p.W}, feats.options());
  at::Tensor ref_idx = at::empty({p.B, p.K - 1, p.n}, positions.options());
  p.fused = fused.mutable_data_ptr();
  p.ref_idx_out = ref_idx.mutable_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "lfm_fuse_cuda",
                                  [&] { launch_forward<scalar_t, kMatchTile, true>(p, feats); });
  return {fused, ref_idx};
}

at::Tensor lfm_apply_cuda(const at::Tensor& x, const at::Tensor& base, const at::Tensor& positions,
                          const at::Tensor& ref_idx, const at::Tensor& alpha) {
  lfm_params p = lfm_check_apply(x, base, positions, ref_idx, alpha);
  check_cuda_sizes(x, p);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor fused = at::empty({p.B, p.C, p.H, p.W}, x.options());
  p.fused = fused.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lfm_apply_cuda",
                                  [&] { launch_forward<scalar_t, kApplyTile, false>(p, x); });
  return fused;
}

std::tuple<at::Tensor, at::Tensor> lfm_apply_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                          const at::Tensor& base, const at::Tensor& positions,
                                                          const at::Tensor& ref_idx, const at::Tensor& alpha) {
  lfm_params p = lfm_check_apply_backward(grad, x, base, positions, ref_idx, alpha);
  check_cuda_sizes(x, p);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_alpha = at::empty({p.B, p.K}, alpha.options());
  p.grad_x = grad_x.mutable_data_ptr();
  p.grad_alpha = grad_alpha.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lfm_apply_backward_cuda",
                                  [&] { launch_backward<scalar_t>(p, x); });
  return {grad_x, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CUDA, m) {
  m.impl("_lfm_fuse_cuda", &lfm_fuse_cuda);
  m.impl("_lfm_apply_cuda", &lfm_apply_cuda);
  m.impl("_lfm_apply_backward_cuda", &lfm_apply_backward_cuda);
}

}  // namespace fsgan_fast
