// CPU kernel of masked_avg_pool (contract: fsgan_fast/ops/masked_avg_pool.py). Deterministic: each masked sum runs
// over the pixels in order, and the images are folded in order (pool_fold), whatever the thread count.
#include "masked_avg_pool/masked_avg_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace fsgan_fast {
namespace {

constexpr int64_t kGrainElems = 32768;  // elements touched per parallel task at least (ATen's GRAIN_SIZE)

template <typename scalar_t>
void pool_cpu(const pool_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* f = static_cast<const scalar_t*>(p.feats);
  const auto* w = static_cast<const acc_t*>(p.weights);
  const int64_t B = p.B, C = p.C, M = p.M, P = p.P;
  std::vector<acc_t> sums(B * M * C), wsum(B * M);
  // step 2, weights: W[b, m]
  at::parallel_for(0, B * M, std::max<int64_t>(1, kGrainElems / P), [&](int64_t begin, int64_t end) {
    for (int64_t bm = begin; bm < end; ++bm) {
      acc_t s = 0;
      for (int64_t j = 0; j < P; ++j) s += w[bm * P + j];
      wsum[bm] = s;
    }
  });
  // step 2, masked sums: one task per (image, channel) row, converted once and dotted with each class's weights
  at::parallel_for(0, B * C, std::max<int64_t>(1, kGrainElems / (P * M)), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(P);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      for (int64_t j = 0; j < P; ++j) row[j] = static_cast<acc_t>(f[bc * P + j]);
      for (int64_t m = 0; m < M; ++m) {
        const acc_t* wr = w + (b * M + m) * P;
        acc_t s = 0;
        for (int64_t j = 0; j < P; ++j) s += wr[j] * row[j];
        sums[(b * M + m) * C + c] = s;
      }
    }
  });
  // steps 3-4
  auto* vectors = static_cast<scalar_t*>(p.vectors);
  at::parallel_for(0, M * C, std::max<int64_t>(1, kGrainElems / B), [&](int64_t begin, int64_t end) {
    for (int64_t mc = begin; mc < end; ++mc) {
      const int64_t m = mc / C, c = mc % C;
      bool present = false;
      vectors[mc] = static_cast<scalar_t>(pool_fold(sums.data(), wsum.data(), B, M, C, m, c, p.per_image, &present));
      if (c == 0) p.present[m] = present;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> masked_avg_pool_cpu(const at::Tensor& feats, const at::Tensor& weights,
                                                       bool per_image) {
  pool_params p = pool_check(feats, weights, per_image);
  at::Tensor vectors = at::empty({p.M, p.C}, feats.options());
  at::Tensor present = at::empty({p.M}, feats.options().dtype(at::kBool));
  p.vectors = vectors.mutable_data_ptr();
  p.present = present.mutable_data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "masked_avg_pool_cpu",
                                  [&] { pool_cpu<scalar_t>(p); });
  return {vectors, present};
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CPU, m) { m.impl("_masked_avg_pool_cpu", &masked_avg_pool_cpu); }

}  // namespace fsgan_fast
