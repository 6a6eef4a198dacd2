// CPU kernels of pyramid_inject / pyramid_blend (contract: fsgan_fast/ops/pyramid.py, see pyramid.h). inject: one
// task item per g_in row; an inner row runs imresize's row pass into a buffer (imresize.cpp's sums, in the same
// order) and writes its up row and g_in row from the unrounded values. blend: one task item per plane.
#include "pyramid/pyramid.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

namespace fsgan_fast {
namespace {

constexpr int64_t kGrainElems = 32768;  // elements (or multiply-adds) per parallel task at least (ATen's GRAIN_SIZE)

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, work_per_item));
}

template <typename scalar_t>
void inject_cpu_kernel(const inject_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const imresize_params& r = p.rs;
  const auto* prev = static_cast<const scalar_t*>(r.x);
  const auto* row_w = static_cast<const acc_t*>(r.row_w);
  const auto* col_w = static_cast<const acc_t*>(r.col_w);
  const auto* noise = static_cast<const scalar_t*>(p.noise);
  const auto* amp = static_cast<const acc_t*>(p.amp);
  auto* up = static_cast<scalar_t*>(p.up);
  auto* g_in = static_cast<scalar_t*>(p.g_in);
  const int64_t rows = r.B * r.C * p.Hp;
  at::parallel_for(0, rows, grain_for(r.Wi * r.Th + p.Wp * (r.Tw + 1)), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tmp(r.Wi);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bc = row / p.Hp, Y = row % p.Hp, b = bc / r.C, c = bc % r.C;
      const int64_t y = Y - p.pad;
      const bool inner_row = 0 <= y && y < r.Ho;
      const acc_t a = amp[b];
      const scalar_t* noise_plane = noise + (b * p.Cn + (p.Cn == 1 ? 0 : c)) * p.Hn * p.Wn;
      if (inner_row) {  // imresize's row pass (imresize.cpp)
        const scalar_t* plane = prev + bc * r.Hi * r.Wi;
        std::fill(tmp.begin(), tmp.end(), acc_t(0));
        for (int64_t i = 0; i < r.Th; ++i) {
          const int64_t src_row = r.row_idx[y * r.Th + i];
          if (src_row < 0 || src_row >= r.Hi) continue;
          const acc_t w = row_w[y * r.Th + i];
          const scalar_t* src = plane + src_row * r.Wi;
          for (int64_t cc = 0; cc < r.Wi; ++cc) tmp[cc] += imresize_mul(w, static_cast<acc_t>(src[cc]));
        }
      }
      scalar_t* g_row = g_in + row * p.Wp;
      scalar_t* up_row = inner_row ? up + (bc * r.Ho + y) * r.Wo : nullptr;
      for (int64_t X = 0; X < p.Wp; ++X) {
        const int64_t x = X - p.pad;
        const bool inside = inner_row && 0 <= x && x < r.Wo;
        acc_t u = 0;
        if (inside) {
          for (int64_t j = 0; j < r.Tw; ++j) {
            const int64_t col = r.col_idx[x * r.Tw + j];
            if (col < 0 || col >= r.Wi) continue;
            u += imresize_mul(col_w[x * r.Tw + j], tmp[col]);
          }
          up_row[x] = static_cast<scalar_t>(u);
        }
        g_row[X] = static_cast<scalar_t>(inject_value<scalar_t, acc_t, int64_t>(p, inside, u, a, noise_plane, Y, X));
      }
    }
  });
}

template <typename scalar_t>
void blend_cpu_kernel(const blend_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* up = static_cast<const scalar_t*>(p.up);
  const auto* res = static_cast<const scalar_t*>(p.residual);
  const auto* mask = static_cast<const scalar_t*>(p.mask);
  auto* out = static_cast<scalar_t*>(p.out);
  const int64_t HW = p.H * p.W;
  at::parallel_for(0, p.B * p.C, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t o = bc * HW;
      if (mask == nullptr) {
        for (int64_t e = o; e < o + HW; ++e)
          out[e] = static_cast<scalar_t>(blend_value(static_cast<acc_t>(up[e]), static_cast<acc_t>(res[e])));
      } else {
        const scalar_t* m = mask + (p.Bm == 1 ? 0 : bc / p.C) * HW;
        for (int64_t q = 0; q < HW; ++q)
          out[o + q] = static_cast<scalar_t>(
              blend_value(static_cast<acc_t>(up[o + q]), static_cast<acc_t>(res[o + q]), static_cast<acc_t>(m[q])));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> pyramid_inject_cpu(const at::Tensor& prev, const at::Tensor& row_idx,
                                                      const at::Tensor& row_w, const at::Tensor& col_idx,
                                                      const at::Tensor& col_w, const at::Tensor& noise,
                                                      const at::Tensor& amp, int64_t pad) {
  inject_params p = inject_check(prev, row_idx, row_w, col_idx, col_w, noise, amp, pad);
  at::Tensor up = at::empty({p.rs.B, p.rs.C, p.rs.Ho, p.rs.Wo}, prev.options());
  at::Tensor g_in = at::empty({p.rs.B, p.rs.C, p.Hp, p.Wp}, prev.options());
  if (g_in.numel() == 0) return {up, g_in};
  p.up = up.mutable_data_ptr();
  p.g_in = g_in.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prev.scalar_type(), "pyramid_inject_cpu",
                                  [&] { inject_cpu_kernel<scalar_t>(p); });
  return {up, g_in};
}

at::Tensor pyramid_blend_cpu(const at::Tensor& up, const at::Tensor& residual, const std::optional<at::Tensor>& mask) {
  blend_params p = blend_check(up, residual, mask);
  at::Tensor out = at::empty(up.sizes(), up.options());
  if (out.numel() == 0) return out;
  p.out = out.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, up.scalar_type(), "pyramid_blend_cpu",
                                  [&] { blend_cpu_kernel<scalar_t>(p); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CPU, m) {
  m.impl("_pyramid_inject_cpu", &pyramid_inject_cpu);
  m.impl("_pyramid_blend_cpu", &pyramid_blend_cpu);
}

}  // namespace fsgan_fast
