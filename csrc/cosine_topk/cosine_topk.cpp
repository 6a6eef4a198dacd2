// CPU kernels of cosine_topk (contract: fsgan_fast/ops/cosine_topk.py). Normalisation, dot products and selection in
// one pass per tile: the [B, P, M] similarity exists only one tile at a time in a task's buffer. Deterministic: every
// sum runs in channel order whatever the thread count, and the selection is a total order.
#include "cosine_topk/cosine_topk.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

namespace fsgan_fast {
namespace {

constexpr int64_t kPixelTile = 64;  // pixels per task over the prototypes: their dots with every prototype fit in L1/L2
constexpr int64_t kProtoTile = 8;   // prototypes per task over the pixels: each feature row is read once per tile

// 1 / max(||q_m||, eps) for every prototype.
template <typename acc_t>
std::vector<acc_t> prototype_inv_norms(const topk_params& p) {
  const auto* q = static_cast<const acc_t*>(p.prototypes);
  std::vector<acc_t> inv(p.M);
  for (int64_t m = 0; m < p.M; ++m) {
    acc_t ss = 0;
    for (int64_t c = 0; c < p.C; ++c) ss += q[m * p.C + c] * q[m * p.C + c];
    inv[m] = topk_inv_norm(ss);
  }
  return inv;
}

// Step 2: per pixel, the k best prototypes. One task per (image, tile of pixels): dot[m][t] accumulated over the
// channels (the inner loop streams along the pixels of a feature row), then each pixel scans the prototypes in order.
template <typename scalar_t, int KP>
void prototypes_cpu(const topk_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* f = static_cast<const scalar_t*>(p.feats);
  const auto* q = static_cast<const acc_t*>(p.prototypes);
  auto* score = static_cast<scalar_t*>(p.score);
  const std::vector<acc_t> inv_q = prototype_inv_norms<acc_t>(p);
  const int64_t P = p.P, C = p.C, M = p.M, tiles = (P + kPixelTile - 1) / kPixelTile;
  at::parallel_for(0, p.B * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dot(M * kPixelTile), ss(kPixelTile), row(kPixelTile);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / tiles, p0 = item % tiles * kPixelTile;
      const int64_t nt = std::min(kPixelTile, P - p0);
      std::fill(dot.begin(), dot.end(), acc_t(0));
      std::fill(ss.begin(), ss.end(), acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* fr = f + (b * C + c) * P + p0;
        for (int64_t t = 0; t < nt; ++t) {
          row[t] = static_cast<acc_t>(fr[t]);
          ss[t] += row[t] * row[t];
        }
        for (int64_t m = 0; m < M; ++m) {
          const acc_t qm = q[m * C + c];
          acc_t* d = dot.data() + m * kPixelTile;
          for (int64_t t = 0; t < nt; ++t) d[t] += qm * row[t];
        }
      }
      for (int64_t t = 0; t < nt; ++t) {
        const acc_t inv_f = topk_inv_norm(ss[t]);
        acc_t bv[KP];
        int64_t bi[KP];
        std::fill(bv, bv + KP, -std::numeric_limits<acc_t>::infinity());
        std::fill(bi, bi + KP, std::numeric_limits<int64_t>::max());
        for (int64_t m = 0; m < M; ++m) topk_insert<KP>(bv, bi, dot[m * kPixelTile + t] * inv_f * inv_q[m], m);
        for (int64_t j = 0; j < p.k; ++j) {
          const int64_t at = (b * p.k + j) * P + p0 + t;
          p.idx[at] = bi[j];
          score[at] = static_cast<scalar_t>(bv[j]);
        }
      }
    }
  });
}

// Step 3: per image and prototype, the k best pixels. The pixels' inverse norms first (one task per image), then one
// task per (image, tile of prototypes): dot[m][p] over the whole image, each prototype scanning its pixels in order.
template <typename scalar_t, int KP>
void pixels_cpu(const topk_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* f = static_cast<const scalar_t*>(p.feats);
  const auto* q = static_cast<const acc_t*>(p.prototypes);
  auto* score = static_cast<scalar_t*>(p.score);
  const std::vector<acc_t> inv_q = prototype_inv_norms<acc_t>(p);
  const int64_t P = p.P, C = p.C, M = p.M, tiles = (M + kProtoTile - 1) / kProtoTile;
  std::vector<acc_t> inv_f(p.B * P);
  at::parallel_for(0, p.B, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ss(P);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(ss.begin(), ss.end(), acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* fr = f + (b * C + c) * P;
        for (int64_t j = 0; j < P; ++j) {
          const acc_t v = static_cast<acc_t>(fr[j]);
          ss[j] += v * v;
        }
      }
      for (int64_t j = 0; j < P; ++j) inv_f[b * P + j] = topk_inv_norm(ss[j]);
    }
  });
  at::parallel_for(0, p.B * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dot(kProtoTile * P), row(P);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / tiles, m0 = item % tiles * kProtoTile;
      const int64_t mt = std::min(kProtoTile, M - m0);
      std::fill(dot.begin(), dot.end(), acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* fr = f + (b * C + c) * P;
        for (int64_t j = 0; j < P; ++j) row[j] = static_cast<acc_t>(fr[j]);
        for (int64_t m = 0; m < mt; ++m) {
          const acc_t qm = q[(m0 + m) * C + c];
          acc_t* d = dot.data() + m * P;
          for (int64_t j = 0; j < P; ++j) d[j] += qm * row[j];
        }
      }
      for (int64_t m = 0; m < mt; ++m) {
        acc_t bv[KP];
        int64_t bi[KP];
        std::fill(bv, bv + KP, -std::numeric_limits<acc_t>::infinity());
        std::fill(bi, bi + KP, std::numeric_limits<int64_t>::max());
        const acc_t* d = dot.data() + m * P;
        const acc_t* inv = inv_f.data() + b * P;
        for (int64_t j = 0; j < P; ++j) topk_insert<KP>(bv, bi, d[j] * inv[j] * inv_q[m0 + m], j);
        for (int64_t j = 0; j < p.k; ++j) {
          const int64_t at = (b * M + m0 + m) * p.k + j;
          p.idx[at] = bi[j];
          score[at] = static_cast<scalar_t>(bv[j]);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> cosine_topk_cpu(const at::Tensor& feats, const at::Tensor& prototypes, int64_t k,
                                                   bool over_pixels) {
  topk_params p = topk_check(feats, prototypes, k, over_pixels);
  const std::vector<int64_t> shape = over_pixels ? std::vector<int64_t>{p.B, p.M, p.k}
                                                 : std::vector<int64_t>{p.B, p.k, p.H, p.W};
  at::Tensor idx = at::empty(shape, feats.options().dtype(at::kLong));
  at::Tensor score = at::empty(shape, feats.options());
  p.idx = idx.mutable_data_ptr<int64_t>();
  p.score = score.mutable_data_ptr();
  if (p.B == 0) return {idx, score};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "cosine_topk_cpu", [&] {
    topk_dispatch_width(p.k, [&](auto width) {
      constexpr int KP = decltype(width)::value;
      if (p.over_pixels) {
        pixels_cpu<scalar_t, KP>(p);
      } else {
        prototypes_cpu<scalar_t, KP>(p);
      }
    });
  });
  return {idx, score};
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CPU, m) { m.impl("_cosine_topk_cpu", &cosine_topk_cpu); }

}  // namespace fsgan_fast
