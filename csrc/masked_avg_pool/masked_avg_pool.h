// masked_avg_pool kernels: what the CPU (masked_avg_pool.cpp) and CUDA (masked_avg_pool.cu) implementations share.
// The contract and the reference live in fsgan_fast/ops/masked_avg_pool.py; the checks here mirror its
// _check_masked_avg_pool for the prepared inputs the private ops receive (weights already resized).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace fsgan_fast {

// One call. feats [B,C,P] contiguous in the kernel's scalar type; weights [B,M,P] contiguous in its opmath type.
// sums [B,M,C] and wsum [B,M] (opmath) are the per-image masked sums and weights of step 2; vectors [M,C] (scalar
// type) and present [M] the result of steps 3-4.
struct pool_params {
  int64_t B, C, M, P;
  bool per_image;
  const void* feats;
  const void* weights;
  void* sums;
  void* wsum;
  void* vectors;
  bool* present;
};

// Step 3-4 for one (class, channel), folding the images in order exactly as pool_reference does: per image, the mean
// where the image has the class; or the plain sums. Returns the vector entry; *present_out gets the class's flag.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t pool_fold(const acc_t* sums, const acc_t* wsum, int64_t B, int64_t M, int64_t C,
                                       int64_t m, int64_t c, bool per_image, bool* present_out) {
  acc_t acc = 0, total = 0;
  for (int64_t b = 0; b < B; ++b) {
    const acc_t w = wsum[b * M + m];
    const acc_t s = sums[(b * M + m) * C + c];
    if (per_image) {
      if (w > 0) {
        acc += s / w;
        total += 1;
      }
    } else {
      acc += s;
      total += w;
    }
  }
  const bool present = total > 0;
  *present_out = present;
  return present ? acc / total : acc_t(0);
}

inline pool_params pool_check(const at::Tensor& feats, const at::Tensor& weights, bool per_image) {
  const auto st = feats.scalar_type();
  TORCH_CHECK_TYPE(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble,
                   "feats must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK_VALUE(feats.dim() == 4, "feats must be 4-D [B, C, H, W], got ", feats.dim(), "-D shape ", feats.sizes());
  TORCH_CHECK_VALUE(feats.is_contiguous(), "feats must be contiguous");
  TORCH_CHECK_VALUE(feats.numel() > 0, "feats must have no empty dimension, got shape ", feats.sizes());
  const auto acc = st == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(weights.scalar_type() == acc, "weights must be ", acc, " for feats of ", st, ", got ",
                   weights.scalar_type());
  TORCH_CHECK_VALUE(weights.dim() == 4 && weights.size(0) == feats.size(0) && weights.size(1) >= 1 &&
                        weights.size(2) == feats.size(2) && weights.size(3) == feats.size(3),
                    "weights must have shape [B=", feats.size(0), ", M >= 1, H=", feats.size(2), ", W=",
                    feats.size(3), "] (the masks resized to the feature grid), got ", weights.sizes());
  TORCH_CHECK_VALUE(weights.device() == feats.device(), "weights is on ", weights.device(), " but feats is on ",
                    feats.device());
  TORCH_CHECK_VALUE(weights.is_contiguous(), "weights must be contiguous");
  pool_params p{};
  p.B = feats.size(0);
  p.C = feats.size(1);
  p.M = weights.size(1);
  p.P = feats.size(2) * feats.size(3);
  // offsets within one image's features or weights are int32 inside the CUDA kernels
  TORCH_CHECK_VALUE(p.C * p.P <= std::numeric_limits<int32_t>::max() &&
                        p.M * p.P <= std::numeric_limits<int32_t>::max(),
                    "C*H*W=", p.C * p.P, " or M*H*W=", p.M * p.P, " is too large");
  p.per_image = per_image;
  p.feats = feats.const_data_ptr();
  p.weights = weights.const_data_ptr();
  return p;
}

}  // namespace fsgan_fast
