// CUDA kernels of sle_gate (contract: fsgan_fast/ops/sle_gate.py; sle_gate.cpp does the same arithmetic in plain
// loops and ATen matmuls). All launches go on the current stream, with no host sync. Deterministic: no float
// atomics; every sum is split the same way for a given shape and added in a fixed order.
//
// Forward, three launches:
//   pool_hidden  the 4x4 pool of x_low (written to `pooled`) and, from the same block, its share of hidden = pooled
//                @ w1^T: blocks split the K = Cl*16 columns, so each writes a partial [splits, B, Ch]
//   gate         hidden = the sum of the partials; gate = sigmoid(act(hidden) @ w2^T)
//   scale        y = x_high * gate: the streaming pass, 16-byte accesses, coalesced in either layout
// Backward, four launches:
//   scale        (backward mode) one read of dy and x_high: grad_x_high = dy * gate and per-block partial sums of
//                dy * x_high per channel, [B, chunks, Ch]
//   gate_backward d_gate = the sum of the partials; d_pre = d_gate * g * (1 - g); d_hidden = (d_pre @ w2) * act'
//   weights      grad_w1 = d_hidden^T @ pooled, d_pooled = d_hidden @ w1 (one pass over w1), grad_w2 = d_pre^T @ a
//   pool_backward grad_x_low: each element gathers d_pooled / area from the (up to 2x2) bins holding it
#include "sle_gate/sle_gate.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <tuple>

namespace fsgan_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;               // streaming: vectors loaded per thread before the first use
constexpr int64_t kBlockBytes = 32768;   // streaming: bytes of x_high per block (enough work, enough blocks)
constexpr int kBTile = 8;                // batch rows per block in the gate's products (register accumulators)
constexpr int kMaxCpb = 16;              // pool_hidden: most x_low channels per block (its pooled tile is shared)
constexpr int64_t kPoolPixels = 2048;    // pool_hidden: x_low pixels per block, about
constexpr int64_t kMaxSplits = 256;      // pool_hidden: most K splits, each a partial that `gate` adds up
constexpr int kGateTile = 64;            // gate: output channels per block
constexpr int kWCols = 64;               // weights: w1 columns per block ...
constexpr int kWGroups = kThreads / kWCols;  // ... and groups of threads splitting the Ch rows

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename T, int V>
struct alignas(sizeof(T) * V) sle_vec {
  T v[V];
};

// Whole-vector load and store: one 16-byte access where the vector is 16 bytes. The store is spelled in PTX: nvcc
// splits a plain 16-byte struct (or uint4) store into 4-byte ones in the streaming kernel. x_high and dy are never
// written by the kernels that read them, so their loads take the read-only path.
template <typename T, int V>
__device__ __forceinline__ sle_vec<T, V> load_vec(const T* src) {
  sle_vec<T, V> v;
  if constexpr (sizeof(T) * V == 16) {
    const uint4 bits = __ldg(reinterpret_cast<const uint4*>(src));  // read-only for the whole kernel
    memcpy(&v, &bits, sizeof(bits));
  } else {
    v = *reinterpret_cast<const sle_vec<T, V>*>(src);
  }
  return v;
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* dst, const sle_vec<T, V>& v) {
  if constexpr (sizeof(T) * V == 16) {
    uint4 bits;
    memcpy(&bits, &v, sizeof(bits));
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(dst)), "r"(bits.x),
                 "r"(bits.y), "r"(bits.z), "r"(bits.w));
  } else {
    *reinterpret_cast<sle_vec<T, V>*>(dst) = v;  // one element (V == 1)
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over aligned teams of `team` consecutive lanes (a power of two <= 32); every lane of the warp must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t team_sum(acc_t v, int team) {
  for (int off = team / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
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

// n / d for n < 2^31 by a multiply-high and a shift (the divisor's magic number is computed on the host):
// the per-element index decoding of pool_backward would otherwise cost several integer divisions.
struct sle_divider {
  uint32_t d = 1, magic = 1, shift = 0;
  sle_divider() = default;
  explicit sle_divider(uint32_t divisor) : d(divisor) {
    while ((uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, magic) + n) >> shift; }
};

// ---------------------------------------------------------------------------------------------------------------
// Forward: pool and the first product

// Block (split s, batch tile): pooled[b, k] for its nb rows and nc channels [c0, c0 + nc), then
// partial[s, b, ch] = sum over its columns k of pooled[b, k] * w1[ch, k]. Each pooled value is the sum of its bin by
// a team of `team` lanes (each a strided share of the bin's pixels, then a shuffle tree), so that blocks with few
// bins still keep every thread busy.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sle_pool_hidden_kernel(const sle_params p, const int cpb, const int nbt, const int splits, const int team,
                           at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t pooled_s[kBTile][kMaxCpb * kSleBins];
  const int s = blockIdx.x % splits;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x / splits) * nbt;
  const int nb = static_cast<int>(imin(nbt, p.B - b0));
  const int64_t c0 = static_cast<int64_t>(s) * cpb;
  const int nc = static_cast<int>(imin(cpb, p.Cl - c0));
  const int kn = nc * kSleBins;
  const int64_t k0 = c0 * kSleBins;
  const auto* x = static_cast<const scalar_t*>(p.x_low);
  auto* pooled = static_cast<acc_t*>(p.pooled);
  const int64_t* st = p.low_stride;
  // channels_last: neighbouring teams take neighbouring channels (coalesced); else neighbouring bins of one plane
  const bool channel_fast = st[1] < st[3];

  const int items = nb * kn, sub = threadIdx.x % team, per_round = kThreads / team;
  for (int r0 = 0; r0 < items; r0 += per_round) {  // uniform trip count: the teams shuffle inside
    const int item = r0 + static_cast<int>(threadIdx.x) / team;
    acc_t sum = 0;
    int bb = 0, c = 0, bin = 0;
    int64_t area = 1;
    if (item < items) {
      if (channel_fast) {
        c = item % nc;
        bin = item / nc % kSleBins;
        bb = item / kn;
      } else {
        bin = item % kSleBins;
        c = item / kSleBins % nc;
        bb = item / kn;
      }
      const int64_t y0 = sle_bin_start(bin / kSlePool, p.h), y1 = sle_bin_end(bin / kSlePool, p.h);
      const int64_t x0 = sle_bin_start(bin % kSlePool, p.w), x1 = sle_bin_end(bin % kSlePool, p.w);
      const int64_t bw = x1 - x0;
      area = (y1 - y0) * bw;
      const scalar_t* plane = x + (b0 + bb) * st[0] + (c0 + c) * st[1];
      // this lane's pixels: sub, sub + team, ... of the bin in row-major order, stepped without divisions
      const int64_t step_y = team / bw, step_x = team % bw;
      int64_t yy = y0 + sub / bw, xx = x0 + sub % bw;
      for (int64_t q = sub; q < area; q += team) {
        sum += static_cast<acc_t>(plane[yy * st[2] + xx * st[3]]);
        yy += step_y;
        xx += step_x;
        if (xx >= x1) {
          xx -= bw;
          ++yy;
        }
      }
    }
    sum = team_sum(sum, team);
    if (item < items && sub == 0) {
      const acc_t v = sum / static_cast<acc_t>(area);
      pooled_s[bb][c * kSleBins + bin] = v;
      pooled[(b0 + bb) * p.K + k0 + c * kSleBins + bin] = v;
    }
  }
  __syncthreads();

  // warp per output channel, lanes along k: w1's row segment is read once, coalesced, for all nb batch rows
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const auto* w1 = static_cast<const acc_t*>(p.w1);
  for (int64_t ch = warp; ch < p.Ch; ch += kWarps) {
    const acc_t* wrow = w1 + ch * p.K + k0;
    acc_t acc[kBTile];
#pragma unroll
    for (int bb = 0; bb < kBTile; ++bb) acc[bb] = 0;
    for (int k = lane; k < kn; k += 32) {
      const acc_t wv = wrow[k];
#pragma unroll
      for (int bb = 0; bb < kBTile; ++bb)
        if (bb < nb) acc[bb] += wv * pooled_s[bb][k];
    }
#pragma unroll
    for (int bb = 0; bb < kBTile; ++bb) {
      const acc_t v = warp_sum(acc[bb]);
      if (lane == 0 && bb < nb) partial[(static_cast<int64_t>(s) * p.B + b0 + bb) * p.Ch + ch] = v;
    }
  }
}

// Block (b, tile of kGateTile channels): hidden[b, :] from the partials (every block of the row adds them, the first
// one stores them), a = act(hidden) in shared memory, then gate[b, c] = sigmoid(a . w2[c, :]) by a warp per c.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sle_gate_kernel(const sle_params p, const acc_t* __restrict__ partial, const int splits, const int team) {
  extern __shared__ __align__(16) unsigned char smem[];
  auto* a_s = reinterpret_cast<acc_t*>(smem);  // [Ch]
  const int64_t Ch = p.Ch;
  const int ctiles = static_cast<int>((Ch + kGateTile - 1) / kGateTile);
  const int64_t b = blockIdx.x / ctiles;
  const int ct = blockIdx.x % ctiles;
  auto* hidden = static_cast<acc_t*>(p.hidden);
  const int sub = threadIdx.x % team, per_round = kThreads / team;
  for (int64_t j0 = 0; j0 < Ch; j0 += per_round) {
    const int64_t j = j0 + threadIdx.x / team;
    acc_t h = 0;
    if (j < Ch)
      for (int k = sub; k < splits; k += team) h += partial[(static_cast<int64_t>(k) * p.B + b) * Ch + j];
    h = team_sum(h, team);
    if (j < Ch && sub == 0) {
      if (ct == 0) hidden[b * Ch + j] = h;
      a_s[j] = sle_activation(h, p.act);
    }
  }
  __syncthreads();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const auto* w2 = static_cast<const acc_t*>(p.w2);
  auto* gate = static_cast<acc_t*>(p.gate);
  const int64_t c1 = imin(Ch, static_cast<int64_t>(ct + 1) * kGateTile);
  for (int64_t c = static_cast<int64_t>(ct) * kGateTile + warp; c < c1; c += kWarps) {
    const acc_t* wrow = w2 + c * Ch;
    acc_t v = 0;
    for (int64_t j = lane; j < Ch; j += 32) v += a_s[j] * wrow[j];
    v = warp_sum(v);
    if (lane == 0) gate[b * Ch + c] = sle_sigmoid(v);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The streaming pass over x_high, forward (y = x * g) or backward (grad_x_high = dy * g, and per-channel partial sums
// of dy * x). Contiguous: a block covers `chunk_len` elements of one (b, c) plane. Channels_last: a block covers
// `chunk_len` pixels of one batch row times one slab of up to kThreads channel groups of V; thread (row r, group g)
// keeps its V channels for the whole block, so the gates and the sums stay in registers.
struct scale_geometry {
  int64_t chunks;     // blocks along H*W per plane (contiguous) or per batch row (channels_last)
  int64_t chunk_len;  // elements (contiguous) or pixels (channels_last) per block
  int64_t groups;     // channels_last: Ch / V
  int64_t slabs;      // channels_last: ceil(groups / kThreads)
};

template <typename scalar_t, int V, bool kCL, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    sle_scale_kernel(const sle_params p, const scale_geometry g, at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  using vec_t = sle_vec<scalar_t, V>;
  const auto* __restrict__ x = static_cast<const scalar_t*>(p.x_high);
  const auto* __restrict__ dy = static_cast<const scalar_t*>(p.grad);
  auto* __restrict__ out = static_cast<scalar_t*>(kBackward ? p.grad_x_high : p.y);
  const auto* gate = static_cast<const acc_t*>(p.gate);
  const int64_t C = p.Ch, HW = p.H * p.W;

  if constexpr (!kCL) {
    // block indices fit in 32 bits (the launch checks the grid size): 32-bit divisions
    const uint32_t nch = static_cast<uint32_t>(g.chunks);
    const int64_t bc = blockIdx.x / nch, chunk = blockIdx.x % nch;
    const int64_t e0 = chunk * g.chunk_len;
    const int n = static_cast<int>(imin(g.chunk_len, HW - e0) / V);  // HW % V == 0 when V > 1
    const int64_t base = bc * HW + e0;
    const acc_t gv = gate[bc];
    acc_t sum = 0;
    for (int i0 = threadIdx.x; i0 < n; i0 += kThreads * kUnroll) {
      vec_t xv[kUnroll], dv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = i0 + u * kThreads;
        if (i < n) {
          xv[u] = load_vec<scalar_t, V>(x + base + static_cast<int64_t>(i) * V);
          if constexpr (kBackward) dv[u] = load_vec<scalar_t, V>(dy + base + static_cast<int64_t>(i) * V);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = i0 + u * kThreads;
        if (i < n) {
          vec_t o;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            if constexpr (kBackward) {
              const acc_t d = static_cast<acc_t>(dv[u].v[e]);
              o.v[e] = static_cast<scalar_t>(d * gv);
              sum += d * static_cast<acc_t>(xv[u].v[e]);
            } else {
              o.v[e] = static_cast<scalar_t>(static_cast<acc_t>(xv[u].v[e]) * gv);
            }
          }
          store_vec(out + base + static_cast<int64_t>(i) * V, o);
        }
      }
    }
    if constexpr (kBackward) {
      sum = block_sum(sum);
      if (threadIdx.x == 0) partial[(bc / C * g.chunks + chunk) * C + bc % C] = sum;  // [b][chunk][c]
    }
  } else {
    const uint32_t nslab = static_cast<uint32_t>(g.slabs), nch = static_cast<uint32_t>(g.chunks);
    const uint32_t bk32 = blockIdx.x / nslab;  // b * chunks + chunk
    const int64_t slab = blockIdx.x % nslab, bk = bk32, b = bk32 / nch, chunk = bk32 % nch;
    const int gs = static_cast<int>(imin(kThreads, g.groups - slab * kThreads));  // groups in the slab
    const int rows = kThreads / gs;  // pixels per step
    const int gi = threadIdx.x % gs, r = threadIdx.x / gs;
    const bool active = r < rows;
    const int64_t c = (slab * kThreads + gi) * V;
    const int64_t q0 = chunk * g.chunk_len, q1 = imin(HW, q0 + g.chunk_len);
    acc_t gv[V], sv[V];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      gv[e] = active ? gate[b * C + c + e] : acc_t(0);
      sv[e] = 0;
    }
    if (active) {
      const int64_t row0 = b * HW;
      for (int64_t q = q0 + r; q < q1; q += static_cast<int64_t>(rows) * kUnroll) {
        vec_t xv[kUnroll], dv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t row = q + static_cast<int64_t>(u) * rows;
          if (row < q1) {
            const int64_t off = (row0 + row) * C + c;
            xv[u] = load_vec<scalar_t, V>(x + off);
            if constexpr (kBackward) dv[u] = load_vec<scalar_t, V>(dy + off);
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t row = q + static_cast<int64_t>(u) * rows;
          if (row < q1) {
            vec_t o;
#pragma unroll
            for (int e = 0; e < V; ++e) {
              if constexpr (kBackward) {
                const acc_t d = static_cast<acc_t>(dv[u].v[e]);
                o.v[e] = static_cast<scalar_t>(d * gv[e]);
                sv[e] += d * static_cast<acc_t>(xv[u].v[e]);
              } else {
                o.v[e] = static_cast<scalar_t>(static_cast<acc_t>(xv[u].v[e]) * gv[e]);
              }
            }
            store_vec(out + (row0 + row) * C + c, o);
          }
        }
      }
    }
    if constexpr (kBackward) {
      // the rows' sums of each channel group, added in row order by the group's row-0 thread
      __shared__ acc_t red[kThreads][V];
      if (active)
#pragma unroll
        for (int e = 0; e < V; ++e) red[threadIdx.x][e] = sv[e];
      __syncthreads();
      if (static_cast<int>(threadIdx.x) < gs) {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          acc_t total = 0;
          for (int rr = 0; rr < rows; ++rr) total += red[rr * gs + threadIdx.x][e];
          partial[bk * C + c + e] = total;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward: the gate MLP and the pool

// Block (b, tile of 32 hidden units j): d_pre[b, :] from the partials into shared memory (the first block of the row
// also stores it), then d_hidden[b, j] = act'(hidden[b, j]) * sum_c d_pre[b, c] * w2[c, j]: lanes along j
// (coalesced rows of w2), warps split c, their sums added in warp order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sle_gate_backward_kernel(const sle_params p, const acc_t* __restrict__ partial, const int chunks, const int team,
                             acc_t* __restrict__ d_pre, acc_t* __restrict__ d_hidden) {
  extern __shared__ __align__(16) unsigned char smem[];
  auto* dp_s = reinterpret_cast<acc_t*>(smem);  // [Ch]
  __shared__ acc_t red[kWarps][32];
  const int64_t Ch = p.Ch;
  const int jtiles = static_cast<int>((Ch + 31) / 32);
  const int64_t b = blockIdx.x / jtiles;
  const int jt = blockIdx.x % jtiles;
  const auto* gate = static_cast<const acc_t*>(p.gate);
  const int sub = threadIdx.x % team, per_round = kThreads / team;
  for (int64_t c0 = 0; c0 < Ch; c0 += per_round) {
    const int64_t c = c0 + threadIdx.x / team;
    acc_t dg = 0;
    if (c < Ch)
      for (int k = sub; k < chunks; k += team) dg += partial[(b * chunks + k) * Ch + c];
    dg = team_sum(dg, team);
    if (c < Ch && sub == 0) {
      const acc_t gv = gate[b * Ch + c];
      const acc_t dp = dg * gv * (acc_t(1) - gv);  // through the sigmoid
      dp_s[c] = dp;
      if (jt == 0) d_pre[b * Ch + c] = dp;
    }
  }
  __syncthreads();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t j = static_cast<int64_t>(jt) * 32 + lane;
  const auto* w2 = static_cast<const acc_t*>(p.w2);
  acc_t v = 0;
  if (j < Ch)
    for (int64_t c = warp; c < Ch; c += kWarps) v += dp_s[c] * w2[c * Ch + j];
  red[warp][lane] = v;
  __syncthreads();
  if (warp == 0 && j < Ch) {
    acc_t total = 0;
    for (int w = 0; w < kWarps; ++w) total += red[w][lane];
    const acc_t hv = static_cast<const acc_t*>(p.hidden)[b * Ch + j];
    d_hidden[b * Ch + j] = total * sle_activation_grad(hv, p.act);
  }
}

// Blocks [0, ktiles): kWCols columns k of w1, thread (group, column) over the rows ch = group, group + kWGroups, ...:
// grad_w1[ch, k] = sum_b d_hidden[b, ch] * pooled[b, k] (each element owned by one thread, batch tiles added in
// order) and d_pooled[b, k] = sum_ch d_hidden[b, ch] * w1[ch, k] (the groups' shares added in group order), one read
// of w1. Blocks after those: grad_w2[c, j] = sum_b d_pre[b, c] * act(hidden[b, j]), a thread per element.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sle_weights_backward_kernel(const sle_params p, const int ktiles, const acc_t* __restrict__ d_pre,
                                const acc_t* __restrict__ d_hidden, acc_t* __restrict__ d_pooled) {
  const int64_t Ch = p.Ch, K = p.K, B = p.B;
  const auto* hidden = static_cast<const acc_t*>(p.hidden);
  if (static_cast<int>(blockIdx.x) >= ktiles) {
    const int64_t idx = static_cast<int64_t>(blockIdx.x - ktiles) * kThreads + threadIdx.x;
    if (idx >= Ch * Ch) return;
    const int64_t c = idx / Ch, j = idx % Ch;
    acc_t v = 0;
    for (int64_t b = 0; b < B; ++b) v += d_pre[b * Ch + c] * sle_activation(hidden[b * Ch + j], p.act);
    static_cast<acc_t*>(p.grad_w2)[idx] = v;
    return;
  }

  __shared__ acc_t dp_s[kWGroups][kBTile][kWCols];
  const int col = threadIdx.x % kWCols, grp = threadIdx.x / kWCols;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kWCols + col;
  const bool valid = k < K;
  const auto* w1 = static_cast<const acc_t*>(p.w1);
  const auto* pooled = static_cast<const acc_t*>(p.pooled);
  auto* grad_w1 = static_cast<acc_t*>(p.grad_w1);
  for (int64_t b0 = 0; b0 < B; b0 += kBTile) {  // uniform trip count: the block syncs inside
    const int nb = static_cast<int>(imin(kBTile, B - b0));
    acc_t pv[kBTile], dp[kBTile];
#pragma unroll
    for (int bb = 0; bb < kBTile; ++bb) {
      pv[bb] = valid && bb < nb ? pooled[(b0 + bb) * K + k] : acc_t(0);
      dp[bb] = 0;
    }
#pragma unroll 2
    for (int64_t ch = grp; ch < Ch; ch += kWGroups) {
      const acc_t wv = valid ? w1[ch * K + k] : acc_t(0);
      acc_t gw = 0;
#pragma unroll
      for (int bb = 0; bb < kBTile; ++bb) {
        if (bb < nb) {
          const acc_t dh = d_hidden[(b0 + bb) * Ch + ch];
          dp[bb] += dh * wv;
          gw += dh * pv[bb];
        }
      }
      if (valid) grad_w1[ch * K + k] = b0 == 0 ? gw : grad_w1[ch * K + k] + gw;
    }
#pragma unroll
    for (int bb = 0; bb < kBTile; ++bb) dp_s[grp][bb][col] = dp[bb];
    __syncthreads();
    for (int e = threadIdx.x; e < nb * kWCols; e += kThreads) {
      const int bb = e / kWCols, cc = e % kWCols;
      const int64_t kk = static_cast<int64_t>(blockIdx.x) * kWCols + cc;
      if (kk >= K) continue;
      acc_t v = 0;
#pragma unroll
      for (int gg = 0; gg < kWGroups; ++gg) v += dp_s[gg][bb][cc];
      d_pooled[(b0 + bb) * K + kk] = v;
    }
    __syncthreads();  // dp_s is refilled by the next batch tile
  }
}

// grad_x_low, a thread per element in memory order (coalesced writes in either layout); the element gathers
// d_pooled[b, c, i, j] / area(i, j) over the bins holding it. kFast: n < 2^31, indices decoded with sle_divider.
template <typename scalar_t, bool kFast>
__global__ void __launch_bounds__(kThreads)
    sle_pool_backward_kernel(const sle_params p, const at::opmath_type<scalar_t>* __restrict__ d_pooled,
                             const bool low_cl, const int64_t n, const sle_divider div_c, const sle_divider div_w,
                             const sle_divider div_h) {
  using acc_t = at::opmath_type<scalar_t>;
  auto* gx = static_cast<scalar_t*>(p.grad_x_low);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; o < n; o += stride) {
    int64_t b, c, y, xx;
    if constexpr (kFast) {
      const uint32_t u = static_cast<uint32_t>(o);
      if (low_cl) {  // [B, h, w, Cl]
        const uint32_t r0 = div_c.div(u), r1 = div_w.div(r0), r2 = div_h.div(r1);
        c = u - r0 * div_c.d;
        xx = r0 - r1 * div_w.d;
        y = r1 - r2 * div_h.d;
        b = r2;
      } else {  // [B, Cl, h, w]
        const uint32_t r0 = div_w.div(u), r1 = div_h.div(r0), r2 = div_c.div(r1);
        xx = u - r0 * div_w.d;
        y = r0 - r1 * div_h.d;
        c = r1 - r2 * div_c.d;
        b = r2;
      }
    } else {
      if (low_cl) {
        c = o % p.Cl;
        xx = o / p.Cl % p.w;
        y = o / (p.Cl * p.w) % p.h;
        b = o / (p.Cl * p.w * p.h);
      } else {
        xx = o % p.w;
        y = o / p.w % p.h;
        c = o / (p.w * p.h) % p.Cl;
        b = o / (p.w * p.h * p.Cl);
      }
    }
    const acc_t* d = d_pooled + (b * p.Cl + c) * kSleBins;
    acc_t v = 0;
#pragma unroll
    for (int i = 0; i < kSlePool; ++i) {
      const int64_t y0 = sle_bin_start(i, p.h), y1 = sle_bin_end(i, p.h);
      if (y < y0 || y >= y1) continue;
#pragma unroll
      for (int j = 0; j < kSlePool; ++j) {
        const int64_t x0 = sle_bin_start(j, p.w), x1 = sle_bin_end(j, p.w);
        if (xx < x0 || xx >= x1) continue;
        v += d[i * kSlePool + j] / static_cast<acc_t>((y1 - y0) * (x1 - x0));
      }
    }
    gx[o] = static_cast<scalar_t>(v);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Launchers

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Lanes per team for `items` team sums in a block: the largest power of two <= 32 that keeps them all in one round.
int team_size(int64_t items) {
  int team = 1;
  while (team < 32 && static_cast<int64_t>(team) * 2 * items <= kThreads) team *= 2;
  return team;
}

int grid_size(int64_t blocks, const char* what) {
  TORCH_CHECK_VALUE(blocks <= INT_MAX, "sle_gate: too many blocks (", blocks, ") for one launch of ", what);
  return static_cast<int>(blocks);
}

// Dynamic shared memory of `bytes` for `kernel`, raising its limit (to the device's most, never to this call's size:
// host threads launching at once then all set the same value) when it is over the default.
template <typename Kernel>
int dynamic_smem(Kernel kernel, int64_t bytes) {
  // well under the default 48 KB with the kernels' static few KB: no query (it costs host time on every call)
  if (bytes <= 32 * 1024) return static_cast<int>(bytes);
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  if (bytes <= attr.maxDynamicSharedSizeBytes) return static_cast<int>(bytes);
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t most = optin - static_cast<int64_t>(attr.sharedSizeBytes);
  TORCH_CHECK_VALUE(bytes <= most, "sle_gate: Ch is too large for the CUDA kernels (", bytes,
                    " bytes of shared memory per block, the device has ", most, ")");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most)));
  return static_cast<int>(bytes);
}

void check_cuda(const at::Tensor& x_high, const sle_params& p) {
  TORCH_CHECK_VALUE(x_high.is_cuda(), "the CUDA sle_gate kernels need CUDA tensors, got ", x_high.device());
  // the kernels count channels and columns of one row in int
  TORCH_CHECK_VALUE(p.K <= INT_MAX - kThreads && p.Ch <= INT_MAX - kThreads,
                    "the CUDA sle_gate kernels need Cl*16 and Ch < 2^31, got Cl=", p.Cl, ", Ch=", p.Ch);
}

template <typename scalar_t, int V>
scale_geometry scale_plan(const sle_params& p) {
  const int64_t target = kBlockBytes / static_cast<int64_t>(sizeof(scalar_t));
  const int64_t HW = p.H * p.W;
  scale_geometry g{};
  if (!p.high_cl) {
    g.chunks = ceil_div(HW, target);
    g.chunk_len = ceil_div(ceil_div(HW, g.chunks), V) * V;
    g.chunks = ceil_div(HW, g.chunk_len);
    g.groups = g.slabs = 1;
  } else {
    g.groups = p.Ch / V;
    g.slabs = ceil_div(g.groups, kThreads);
    const int64_t gs = std::min<int64_t>(g.groups, kThreads);
    g.chunk_len = std::max<int64_t>(1, target / (gs * V));
    g.chunks = ceil_div(HW, g.chunk_len);
  }
  return g;
}

template <typename scalar_t, int V, bool kCL, bool kBackward>
void launch_scale(const sle_params& p, const scale_geometry& g, at::opmath_type<scalar_t>* partial) {
  const int64_t blocks = kCL ? p.B * g.chunks * g.slabs : p.B * p.Ch * g.chunks;
  sle_scale_kernel<scalar_t, V, kCL, kBackward>
      <<<grid_size(blocks, "scale"), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p, g, partial);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The streaming pass with 16-byte vectors where the layout and the pointers allow, else element by element. In the
// backward, allocates the partial sums [B, chunks, Ch] and returns them with their `chunks`.
template <typename scalar_t, bool kBackward>
std::tuple<at::Tensor, int64_t> run_scale(const sle_params& p, const at::Tensor& like_acc) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int64_t HW = p.H * p.W;
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vec = (p.high_cl ? p.Ch % kVec == 0 : HW % kVec == 0) && aligned(p.x_high) &&
                   aligned(kBackward ? p.grad : p.x_high) && aligned(kBackward ? p.grad_x_high : p.y);
  const scale_geometry g = vec ? scale_plan<scalar_t, kVec>(p) : scale_plan<scalar_t, 1>(p);
  at::Tensor partial;
  at::opmath_type<scalar_t>* partial_ptr = nullptr;
  if (kBackward) {
    partial = at::empty({p.B, g.chunks, p.Ch}, like_acc.options());
    partial_ptr = partial.mutable_data_ptr<at::opmath_type<scalar_t>>();
  }
  if (p.high_cl) {
    if (vec) launch_scale<scalar_t, kVec, true, kBackward>(p, g, partial_ptr);
    else launch_scale<scalar_t, 1, true, kBackward>(p, g, partial_ptr);
  } else {
    if (vec) launch_scale<scalar_t, kVec, false, kBackward>(p, g, partial_ptr);
    else launch_scale<scalar_t, 1, false, kBackward>(p, g, partial_ptr);
  }
  return {partial, g.chunks};
}

template <typename scalar_t>
void forward_cuda(const sle_params& p, const at::Tensor& like_acc) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  // pool_hidden's tiling: about kPoolPixels of x_low per block, whole batch tiles when the planes are small
  const int64_t hw = p.h * p.w;
  int64_t cpb = std::clamp<int64_t>(kPoolPixels / (kBTile * hw), 1, kMaxCpb);
  const int64_t nbt = cpb == 1 ? std::clamp<int64_t>(kPoolPixels / hw, 1, kBTile) : kBTile;
  cpb = std::clamp<int64_t>(std::max(cpb, ceil_div(p.Cl, kMaxSplits)), 1, kMaxCpb);
  const int64_t splits = ceil_div(p.Cl, cpb);
  const int64_t pool_blocks = splits * ceil_div(p.B, nbt);
  at::Tensor partial = at::empty({splits, p.B, p.Ch}, like_acc.options());
  sle_pool_hidden_kernel<scalar_t><<<grid_size(pool_blocks, "pool_hidden"), kThreads, 0, stream>>>(
      p, static_cast<int>(cpb), static_cast<int>(nbt), static_cast<int>(splits),
      team_size(nbt * cpb * kSleBins), partial.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  auto gate_kernel = sle_gate_kernel<acc_t>;
  const int smem = dynamic_smem(gate_kernel, p.Ch * static_cast<int64_t>(sizeof(acc_t)));
  gate_kernel<<<grid_size(p.B * ceil_div(p.Ch, kGateTile), "gate"), kThreads, smem, stream>>>(
      p, partial.const_data_ptr<acc_t>(), static_cast<int>(splits), team_size(p.Ch));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  run_scale<scalar_t, false>(p, like_acc);
}

template <typename scalar_t>
void backward_cuda(const sle_params& p, const at::Tensor& like_acc, bool low_cl) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor partial;
  int64_t chunks = 0;
  std::tie(partial, chunks) = run_scale<scalar_t, true>(p, like_acc);
  TORCH_CHECK_VALUE(chunks <= INT_MAX, "sle_gate: too many partial sums (", chunks, ")");

  at::Tensor d_pre = at::empty({p.B, p.Ch}, like_acc.options());
  at::Tensor d_hidden = at::empty({p.B, p.Ch}, like_acc.options());
  auto gate_kernel = sle_gate_backward_kernel<acc_t>;
  const int smem = dynamic_smem(gate_kernel, p.Ch * static_cast<int64_t>(sizeof(acc_t)));
  gate_kernel<<<grid_size(p.B * ceil_div(p.Ch, 32), "gate_backward"), kThreads, smem, stream>>>(
      p, partial.const_data_ptr<acc_t>(), static_cast<int>(chunks), team_size(p.Ch), d_pre.mutable_data_ptr<acc_t>(),
      d_hidden.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor d_pooled = at::empty({p.B, p.K}, like_acc.options());
  const int64_t ktiles = ceil_div(p.K, kWCols);
  sle_weights_backward_kernel<acc_t>
      <<<grid_size(ktiles + ceil_div(p.Ch * p.Ch, kThreads), "weights_backward"), kThreads, 0, stream>>>(
          p, static_cast<int>(ktiles), d_pre.const_data_ptr<acc_t>(), d_hidden.const_data_ptr<acc_t>(),
          d_pooled.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t n = p.B * p.Cl * p.h * p.w;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(n, kThreads), 1 << 20));
  if (n < (int64_t{1} << 31)) {
    const sle_divider dc(static_cast<uint32_t>(p.Cl)), dw(static_cast<uint32_t>(p.w)), dh(static_cast<uint32_t>(p.h));
    sle_pool_backward_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(p, d_pooled.const_data_ptr<acc_t>(),
                                                                             low_cl, n, dc, dw, dh);
  } else {
    sle_pool_backward_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
        p, d_pooled.const_data_ptr<acc_t>(), low_cl, n, sle_divider(), sle_divider(), sle_divider());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::MemoryFormat high_format(const sle_params& p) {
  return p.high_cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sle_gate_cuda(const at::Tensor& x_low,
                                                                         const at::Tensor& x_high,
                                                                         const at::Tensor& w1, const at::Tensor& w2,
                                                                         std::string_view act) {
  sle_params p = sle_check_forward(x_low, x_high, w1, w2, act);
  check_cuda(x_high, p);
  const c10::cuda::CUDAGuard guard(x_high.device());
  at::Tensor y = at::empty(x_high.sizes(), x_high.options().memory_format(high_format(p)));
  at::Tensor gate = at::empty({p.B, p.Ch}, w1.options());
  at::Tensor pooled = at::empty({p.B, p.K}, w1.options());
  at::Tensor hidden = at::empty({p.B, p.Ch}, w1.options());
  p.y = y.mutable_data_ptr();
  p.gate = gate.mutable_data_ptr();
  p.pooled = pooled.mutable_data_ptr();
  p.hidden = hidden.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_high.scalar_type(), "sle_gate_cuda",
                                  [&] { forward_cuda<scalar_t>(p, w1); });
  return {y, gate, pooled, hidden};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sle_gate_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x_low, const at::Tensor& x_high, const at::Tensor& w1,
    const at::Tensor& w2, const at::Tensor& gate, const at::Tensor& pooled, const at::Tensor& hidden,
    std::string_view act) {
  sle_params p = sle_check_backward(grad, x_low, x_high, w1, w2, gate, pooled, hidden, act);
  check_cuda(x_high, p);
  const c10::cuda::CUDAGuard guard(x_high.device());
  const at::MemoryFormat low_fmt = sle_layout("x_low", x_low);
  at::Tensor grad_x_low = at::empty(x_low.sizes(), x_low.options().memory_format(low_fmt));
  at::Tensor grad_x_high = at::empty(x_high.sizes(), x_high.options().memory_format(high_format(p)));
  at::Tensor grad_w1 = at::empty(w1.sizes(), w1.options());
  at::Tensor grad_w2 = at::empty(w2.sizes(), w2.options());
  for (int d = 0; d < 4; ++d) p.glow_stride[d] = grad_x_low.stride(d);
  p.grad_x_low = grad_x_low.mutable_data_ptr();
  p.grad_x_high = grad_x_high.mutable_data_ptr();
  p.grad_w1 = grad_w1.mutable_data_ptr();
  p.grad_w2 = grad_w2.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_high.scalar_type(), "sle_gate_backward_cuda", [&] {
    backward_cuda<scalar_t>(p, w1, low_fmt == at::MemoryFormat::ChannelsLast);
  });
  return {grad_x_low, grad_x_high, grad_w1, grad_w2};
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CUDA, m) {
  m.impl("_sle_gate_cuda", &sle_gate_cuda);
  m.impl("_sle_gate_backward_cuda", &sle_gate_backward_cuda);
}

}  // namespace fsgan_fast
