// CPU kernels of lfm_fuse / lfm_apply (contract: fsgan_fast/ops/lfm.py). Deterministic: every sum runs in a
// fixed order whatever the thread count. An out-of-range base, position or match selects nothing: a row with
// a bad base gives zeros (and ref_idx -1), a bad position is skipped (ref_idx -1), a bad match adds nothing.
#include "lfm/lfm.h"

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

// Positions matched together: each reference row x_r[c, :] is read once per tile instead of once per position.
constexpr int64_t kMatchTile = 8;
// Elements touched per parallel task at least (ATen's GRAIN_SIZE).
constexpr int64_t kGrainElems = 32768;

// inv[b, k, j] = 1 / max(||x[b, k, :, j]||, eps): the norms of every shot's vectors, summed over c in order.
template <typename scalar_t, typename acc_t>
std::vector<acc_t> inverse_norms(const lfm_params& p) {
  const auto* x = static_cast<const scalar_t*>(p.x);
  std::vector<acc_t> inv(p.B * p.K * p.P);
  at::parallel_for(0, p.B * p.K, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sumsq(p.P);
    for (int64_t bk = begin; bk < end; ++bk) {
      std::fill(sumsq.begin(), sumsq.end(), acc_t(0));
      for (int64_t c = 0; c < p.C; ++c) {
        const scalar_t* row = x + (bk * p.C + c) * p.P;
        for (int64_t j = 0; j < p.P; ++j) {
          const acc_t v = static_cast<acc_t>(row[j]);
          sumsq[j] += v * v;
        }
      }
      for (int64_t j = 0; j < p.P; ++j) inv[bk * p.P + j] = lfm_inv_norm(sumsq[j]);
    }
  });
  return inv;
}

// Step 2: ref_idx_out[b, r, t] = argmax_j cos(f[:, p_t], x_r[:, j]), -1 where nothing is selected.
template <typename scalar_t>
void match_cpu(const lfm_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  if (p.n == 0) return;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const std::vector<acc_t> inv = inverse_norms<scalar_t, acc_t>(p);
  const int64_t R = p.K - 1, P = p.P, C = p.C;
  const int64_t tiles = (p.n + kMatchTile - 1) / kMatchTile;
  at::parallel_for(0, p.B * R * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dot(kMatchTile * P), f_sel(kMatchTile * C), row(P);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (R * tiles), r = item / tiles % R, t0 = item % tiles * kMatchTile;
      const int64_t nt = std::min(kMatchTile, p.n - t0);
      const int64_t base = p.base[b];
      int64_t* out = p.ref_idx_out + (b * R + r) * p.n + t0;
      int64_t pos[kMatchTile];
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t q = p.positions[b * p.n + t0 + t];
        pos[t] = lfm_in_range(base, p.K) && lfm_in_range(q, P) ? q : -1;
        out[t] = -1;
      }
      if (!lfm_in_range(base, p.K)) continue;
      const scalar_t* f = x + (b * p.K + base) * C * P;
      const int64_t shot = lfm_ref_shot(r, base);
      const scalar_t* xr = x + (b * p.K + shot) * C * P;
      for (int64_t t = 0; t < nt; ++t)
        for (int64_t c = 0; c < C; ++c)
          f_sel[t * C + c] = pos[t] < 0 ? acc_t(0) : static_cast<acc_t>(f[c * P + pos[t]]);
      // dot[t, j] = sum_c f[c, p_t] * x_r[c, j]: c outer so that the inner loop streams along j
      std::fill(dot.begin(), dot.end(), acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t j = 0; j < P; ++j) row[j] = static_cast<acc_t>(xr[c * P + j]);
        for (int64_t t = 0; t < nt; ++t) {
          const acc_t ft = f_sel[t * C + c];
          acc_t* d = dot.data() + t * P;
          for (int64_t j = 0; j < P; ++j) d[j] += ft * row[j];
        }
      }
      const acc_t* inv_r = inv.data() + (b * p.K + shot) * P;
      for (int64_t t = 0; t < nt; ++t) {
        if (pos[t] < 0) continue;
        const acc_t inv_f = inv[(b * p.K + base) * P + pos[t]];
        acc_t best_v = -std::numeric_limits<acc_t>::infinity();
        int64_t best_j = std::numeric_limits<int64_t>::max();
        for (int64_t j = 0; j < P; ++j) {
          const acc_t score = dot[t * P + j] * inv_f * inv_r[j];
          if (lfm_better(score, j, best_v, best_j)) {
            best_v = score;
            best_j = j;
          }
        }
        out[t] = best_j;
      }
    }
  });
}

// Step 3: fused = base map, with alpha_base * f + sum_r alpha_r * x_r[:, ref_idx] at the selected positions.
// One task per (b, c) row, positions in order, so a repeated position deterministically keeps its last value.
template <typename scalar_t>
void fuse_cpu(const lfm_params& p, const int64_t* ref_idx) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* alpha = static_cast<const acc_t*>(p.alpha);
  auto* fused = static_cast<scalar_t*>(p.fused);
  const int64_t R = p.K - 1, P = p.P, C = p.C;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / (P + p.n * p.K));
  at::parallel_for(0, p.B * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      const int64_t base = p.base[b];
      scalar_t* out = fused + bc * P;
      if (!lfm_in_range(base, p.K)) {
        std::fill(out, out + P, scalar_t(0));
        continue;
      }
      const scalar_t* f = x + ((b * p.K + base) * C + c) * P;
      std::copy(f, f + P, out);
      for (int64_t t = 0; t < p.n; ++t) {
        const int64_t q = p.positions[b * p.n + t];
        if (!lfm_in_range(q, P)) continue;
        acc_t acc = alpha[b * p.K + base] * static_cast<acc_t>(f[q]);
        for (int64_t r = 0; r < R; ++r) {
          const int64_t j = ref_idx[(b * R + r) * p.n + t];
          if (!lfm_in_range(j, P)) continue;
          const int64_t shot = lfm_ref_shot(r, base);
          acc += alpha[b * p.K + shot] * static_cast<acc_t>(x[((b * p.K + shot) * C + c) * P + j]);
        }
        out[q] = static_cast<scalar_t>(acc);
      }
    }
  });
}

// Step 4. One task per (b, k, c) row of grad_x; it also leaves its share of grad_alpha[b, k] in partial[b, k, c],
// summed over c in order afterwards.
template <typename scalar_t>
void backward_cpu(const lfm_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* grad = static_cast<const scalar_t*>(p.grad);
  const auto* alpha = static_cast<const acc_t*>(p.alpha);
  auto* grad_x = static_cast<scalar_t*>(p.grad_x);
  auto* grad_alpha = static_cast<acc_t*>(p.grad_alpha);
  const int64_t K = p.K, R = K - 1, P = p.P, C = p.C, n = p.n;
  std::vector<acc_t> partial(p.B * K * C);
  const int64_t grain = std::max<int64_t>(1, kGrainElems / (P + n));
  at::parallel_for(0, p.B * K * C, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(P);
    for (int64_t bkc = begin; bkc < end; ++bkc) {
      const int64_t b = bkc / (K * C), k = bkc / C % K, c = bkc % C;
      const int64_t base = p.base[b];
      scalar_t* gx = grad_x + bkc * P;
      const scalar_t* g = grad + (b * C + c) * P;
      const scalar_t* xk = x + bkc * P;
      const int64_t* pos = p.positions + b * n;
      acc_t part = 0;
      if (!lfm_in_range(base, K)) {
        std::fill(gx, gx + P, scalar_t(0));
      } else if (k == base) {
        // passes through, scaled by alpha_base at the selected positions
        const acc_t a = alpha[b * K + k];
        std::copy(g, g + P, gx);
        for (int64_t t = 0; t < n; ++t) {
          const int64_t q = pos[t];
          if (!lfm_in_range(q, P)) continue;
          gx[q] = static_cast<scalar_t>(a * static_cast<acc_t>(g[q]));
          part += static_cast<acc_t>(xk[q]) * static_cast<acc_t>(g[q]);
        }
      } else {
        // reference r receives alpha_r * grad at every position matched to it, summed in t order
        const int64_t r = k - (k > base ? 1 : 0);
        const int64_t* idx = p.ref_idx + (b * R + r) * n;
        const acc_t a = alpha[b * K + k];
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t t = 0; t < n; ++t) {
          const int64_t q = pos[t], j = idx[t];
          if (!lfm_in_range(q, P) || !lfm_in_range(j, P)) continue;
          const acc_t gq = static_cast<acc_t>(g[q]);
          acc[j] += a * gq;
          part += static_cast<acc_t>(xk[j]) * gq;
        }
        for (int64_t j = 0; j < P; ++j) gx[j] = static_cast<scalar_t>(acc[j]);
      }
      partial[bkc] = part;
    }
  });
  for (int64_t bk = 0; bk < p.B * K; ++bk) {
    acc_t sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += partial[bk * C + c];
    grad_alpha[bk] = sum;
  }
}

std::tuple<at::Tensor, at::Tensor> lfm_fuse_cpu(const at::Tensor& feats, const at::Tensor& base,
                                               const at::Tensor& positions, const at::Tensor& alpha) {
  lfm_params p = lfm_check_fuse(feats, base, positions, alpha);
  at::Tensor fused = at::empty({p.B, p.C, p.H, p.W}, feats.options());
  at::Tensor ref_idx = at::empty({p.B, p.K - 1, p.n}, positions.options());
  p.fused = fused.mutable_data_ptr();
  p.ref_idx_out = ref_idx.mutable_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "lfm_fuse_cpu", [&] {
    match_cpu<scalar_t>(p);
    fuse_cpu<scalar_t>(p, p.ref_idx_out);
  });
  return {fused, ref_idx};
}

at::Tensor lfm_apply_cpu(const at::Tensor& x, const at::Tensor& base, const at::Tensor& positions,
                         const at::Tensor& ref_idx, const at::Tensor& alpha) {
  lfm_params p = lfm_check_apply(x, base, positions, ref_idx, alpha);
  at::Tensor fused = at::empty({p.B, p.C, p.H, p.W}, x.options());
  p.fused = fused.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lfm_apply_cpu",
                                  [&] { fuse_cpu<scalar_t>(p, p.ref_idx); });
  return fused;
}

std::tuple<at::Tensor, at::Tensor> lfm_apply_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                         const at::Tensor& base, const at::Tensor& positions,
                                                         const at::Tensor& ref_idx, const at::Tensor& alpha) {
  lfm_params p = lfm_check_apply_backward(grad, x, base, positions, ref_idx, alpha);
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_alpha = at::empty({p.B, p.K}, alpha.options());
  p.grad_x = grad_x.mutable_data_ptr();
  p.grad_alpha = grad_alpha.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lfm_apply_backward_cpu",
                                  [&] { backward_cpu<scalar_t>(p); });
  return {grad_x, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CPU, m) {
  m.impl("_lfm_fuse_cpu", &lfm_fuse_cpu);
  m.impl("_lfm_apply_cpu", &lfm_apply_cpu);
  m.impl("_lfm_apply_backward_cpu", &lfm_apply_backward_cpu);
}

}  // namespace fsgan_fast
