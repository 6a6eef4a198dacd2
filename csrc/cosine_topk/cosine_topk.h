// cosine_topk kernels: what the CPU (cosine_topk.cpp) and CUDA (cosine_topk.cu) implementations share.
// The contract and the reference live in fsgan_fast/ops/cosine_topk.py; the checks here mirror its _check_cosine_topk
// for the prepared inputs the private ops receive.
#pragma once

#include <ATen/NumericUtils.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace fsgan_fast {

constexpr int64_t kTopkMax = 16;  // largest k: the running lists live in registers

// One call. feats [B,C,P] contiguous in the kernel's scalar type; prototypes [M,C] contiguous in its opmath type
// (raw, not normalised). Outputs: over the prototypes idx/score [B,k,P]; over the pixels [B,M,k].
struct topk_params {
  int64_t B, C, H, W, P, M, k;
  bool over_pixels;
  const void* feats;
  const void* prototypes;
  int64_t* idx;
  void* score;
};

C10_HOST_DEVICE inline float topk_sqrt(float v) { return sqrtf(v); }
C10_HOST_DEVICE inline double topk_sqrt(double v) { return sqrt(v); }

// 1 / max(||v||, 1e-8) from ||v||^2; a NaN norm stays NaN, as torch's clamp_min keeps it.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t topk_inv_norm(acc_t sumsq) {
  const acc_t norm = topk_sqrt(sumsq);
  const acc_t eps = acc_t(1e-8);
  return acc_t(1) / (norm < eps ? eps : norm);
}

// Strict total order of the candidates, as a stable descending torch.sort: NaN before any number, then the larger
// value, then on ties the smaller index. Empty slots are (-inf, INT64_MAX): every real candidate beats them.
template <typename acc_t>
C10_HOST_DEVICE inline bool topk_better(acc_t v, int64_t i, acc_t best_v, int64_t best_i) {
  if (at::_isnan(v)) return !at::_isnan(best_v) || i < best_i;
  if (at::_isnan(best_v)) return false;
  return v > best_v || (v == best_v && i < best_i);
}

// Inserts (v, i) into the sorted list (bv, bi) of KP slots, dropping the last: the candidate bubbles down from the
// front, trading places with each slot it beats. Fully unrolled, so the lists stay in registers on the GPU.
template <int KP, typename acc_t, typename idx_t>
C10_HOST_DEVICE inline void topk_insert(acc_t (&bv)[KP], idx_t (&bi)[KP], acc_t v, idx_t i) {
  if (!topk_better<acc_t>(v, i, bv[KP - 1], bi[KP - 1])) return;  // the list is sorted: it beats no slot
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int j = 0; j < KP; ++j) {
    if (topk_better<acc_t>(v, i, bv[j], bi[j])) {
      const acc_t tv = bv[j];
      const idx_t ti = bi[j];
      bv[j] = v;
      bi[j] = i;
      v = tv;
      i = ti;
    }
  }
}

inline topk_params topk_check(const at::Tensor& feats, const at::Tensor& prototypes, int64_t k, bool over_pixels) {
  const auto st = feats.scalar_type();
  TORCH_CHECK_TYPE(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble,
                   "feats must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK_VALUE(feats.dim() == 4, "feats must be 4-D [B, C, H, W], got ", feats.dim(), "-D shape ", feats.sizes());
  TORCH_CHECK_VALUE(feats.is_contiguous(), "feats must be contiguous");
  topk_params p{};
  p.B = feats.size(0);
  p.C = feats.size(1);
  p.H = feats.size(2);
  p.W = feats.size(3);
  p.P = p.H * p.W;
  TORCH_CHECK_VALUE(p.C >= 1 && p.H >= 1 && p.W >= 1, "feats must have C, H, W >= 1, got shape ", feats.sizes());
  // pixel and prototype indices, and offsets within one image, are int32 inside the CUDA kernels
  TORCH_CHECK_VALUE(p.C * p.P <= std::numeric_limits<int32_t>::max(), "C*H*W=", p.C * p.P, " is too large");
  const auto acc = st == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(prototypes.scalar_type() == acc, "prototypes must be ", acc, " for feats of ", st, ", got ",
                   prototypes.scalar_type());
  TORCH_CHECK_VALUE(prototypes.dim() == 2 && prototypes.size(1) == p.C && prototypes.size(0) >= 1,
                    "prototypes must have shape [M >= 1, C=", p.C, "], got ", prototypes.sizes());
  TORCH_CHECK_VALUE(prototypes.device() == feats.device(), "prototypes is on ", prototypes.device(),
                    " but feats is on ", feats.device());
  TORCH_CHECK_VALUE(prototypes.is_contiguous(), "prototypes must be contiguous");
  p.M = prototypes.size(0);
  TORCH_CHECK_VALUE(p.M * p.C <= std::numeric_limits<int32_t>::max(), "M*C=", p.M * p.C, " is too large");
  const int64_t n = over_pixels ? p.P : p.M;
  TORCH_CHECK_VALUE(1 <= k && k <= kTopkMax && k <= n, "k must lie in [1, min(16, ", over_pixels ? "H*W" : "M", "=",
                    n, ")], got ", k);
  p.k = k;
  p.over_pixels = over_pixels;
  p.feats = feats.const_data_ptr();
  p.prototypes = prototypes.const_data_ptr();
  return p;
}

// Calls fn(std::integral_constant<int, KP>) with KP, the list width the kernels take for k: 1, 4 or 16.
template <typename Fn>
inline void topk_dispatch_width(int64_t k, Fn&& fn) {
  if (k <= 1) {
    fn(std::integral_constant<int, 1>{});
  } else if (k <= 4) {
    fn(std::integral_constant<int, 4>{});
  } else {
    fn(std::integral_constant<int, 16>{});
  }
}

}  // namespace fsgan_fast
