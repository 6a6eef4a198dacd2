// CPU kernels of crop_resize (contract: fsgan_fast/ops/crop_resize.py, see crop_resize.h). Forward: one task item
// per output row (n, c, i); a task computes a box's column taps once and reuses them along its rows. Backward: one
// task item per gradient plane (b, c), which adds the contributions of every box of image b in box, row, column
// order: no two tasks write the same element, so there are no atomics and the result is deterministic.
#include "crop_resize/crop_resize.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace fsgan_fast {
namespace {

constexpr int64_t kGrainElems = 32768;  // elements per parallel task at least (ATen's GRAIN_SIZE)

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, work_per_item));
}

template <typename acc_t>
void column_taps(const crop_resize_params& p, int64_t n, std::vector<crop_resize_tap<acc_t>>& cols) {
  for (int64_t j = 0; j < p.w; ++j) cols[j] = crop_resize_col<acc_t>(p, n, j);
}

template <typename scalar_t>
void crop_resize_cpu_kernel(const crop_resize_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.src);
  auto* out = static_cast<scalar_t*>(p.dst);
  const int64_t rows = p.N * p.C * p.h;
  // work counted in output elements (a few ns each): small crops stay on one thread, where waking a second costs
  // more than the whole op
  at::parallel_for(0, rows, grain_for(p.w), [&](int64_t begin, int64_t end) {
    std::vector<crop_resize_tap<acc_t>> cols(p.w);
    int64_t cols_of = -1;  // the box whose column taps `cols` holds
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % p.h, nc = row / p.h, n = nc / p.C, c = nc % p.C;
      scalar_t* dst = out + row * p.w;
      const int64_t b = p.image_index[n];
      if (b < 0 || b >= p.B) {  // outside the contract (checked in Python): a NaN row, no read
        std::fill(dst, dst + p.w, static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN()));
        continue;
      }
      if (cols_of != n) {
        column_taps<acc_t>(p, n, cols);
        cols_of = n;
      }
      const crop_resize_tap<acc_t> ty = crop_resize_row<acc_t>(p, n, i);
      const scalar_t* plane = x + (b * p.C + c) * p.H * p.W;
      const scalar_t* top = plane + ty.i0 * p.W;
      const scalar_t* bottom = plane + ty.i1 * p.W;
      for (int64_t j = 0; j < p.w; ++j) {
        const crop_resize_tap<acc_t>& tx = cols[j];
        acc_t wt[4];
        crop_resize_weights(ty.f, tx.f, wt);
        acc_t v = imresize_mul(wt[0], static_cast<acc_t>(top[tx.i0]));
        v += imresize_mul(wt[1], static_cast<acc_t>(top[tx.i1]));
        v += imresize_mul(wt[2], static_cast<acc_t>(bottom[tx.i0]));
        v += imresize_mul(wt[3], static_cast<acc_t>(bottom[tx.i1]));
        dst[j] = static_cast<scalar_t>(v);
      }
    }
  });
}

// acc: grad_x's accumulation buffer [B,C,H,W] in opmath, zeroed.
template <typename scalar_t>
void crop_resize_backward_cpu_kernel(const crop_resize_params& p, at::opmath_type<scalar_t>* acc) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* grad = static_cast<const scalar_t*>(p.src);
  // the boxes of each image, in box order: a plane visits only its own
  std::vector<std::vector<int64_t>> boxes_of(p.B);
  for (int64_t n = 0; n < p.N; ++n) {
    const int64_t b = p.image_index[n];
    if (b >= 0 && b < p.B) boxes_of[b].push_back(n);
  }
  const int64_t per_plane = std::max<int64_t>(1, p.N / p.B) * p.h * p.w;  // incoming gradient elements
  at::parallel_for(0, p.B * p.C, grain_for(per_plane), [&](int64_t begin, int64_t end) {
    std::vector<crop_resize_tap<acc_t>> cols(p.w);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / p.C, c = bc % p.C;
      acc_t* plane = acc + bc * p.H * p.W;
      for (const int64_t n : boxes_of[b]) {
        column_taps<acc_t>(p, n, cols);
        const scalar_t* g = grad + (n * p.C + c) * p.h * p.w;
        for (int64_t i = 0; i < p.h; ++i) {
          const crop_resize_tap<acc_t> ty = crop_resize_row<acc_t>(p, n, i);
          acc_t* top = plane + ty.i0 * p.W;
          acc_t* bottom = plane + ty.i1 * p.W;
          for (int64_t j = 0; j < p.w; ++j) {
            const crop_resize_tap<acc_t>& tx = cols[j];
            acc_t wt[4];
            crop_resize_weights(ty.f, tx.f, wt);
            const acc_t gv = static_cast<acc_t>(g[i * p.w + j]);
            top[tx.i0] += imresize_mul(wt[0], gv);
            top[tx.i1] += imresize_mul(wt[1], gv);
            bottom[tx.i0] += imresize_mul(wt[2], gv);
            bottom[tx.i1] += imresize_mul(wt[3], gv);
          }
        }
      }
    }
  });
}

at::Tensor crop_resize_cpu(const at::Tensor& x, const at::Tensor& boxes, const at::Tensor& image_index, int64_t out_h,
                           int64_t out_w) {
  crop_resize_params p = crop_resize_check(x, boxes, image_index, out_h, out_w);
  at::Tensor out = at::empty({p.N, p.C, p.h, p.w}, x.options());
  if (out.numel() == 0) return out;
  p.dst = out.mutable_data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crop_resize_cpu",
                                  [&] { crop_resize_cpu_kernel<scalar_t>(p); });
  return out;
}

at::Tensor crop_resize_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes, const at::Tensor& image_index,
                                    int64_t batch, int64_t height, int64_t width) {
  crop_resize_params p = crop_resize_backward_check(grad, boxes, image_index, batch, height, width);
  const auto acc_type = imresize_opmath_type(grad.scalar_type());
  // float32/float64 accumulate in the result itself; float16/bfloat16 in a float32 buffer, rounded once at the end
  at::Tensor acc = at::zeros({p.B, p.C, p.H, p.W}, grad.options().dtype(acc_type));
  if (p.N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_resize_backward_cpu", [&] {
      crop_resize_backward_cpu_kernel<scalar_t>(p, acc.mutable_data_ptr<at::opmath_type<scalar_t>>());
    });
  }
  return acc_type == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CPU, m) {
  m.impl("_crop_resize_cpu", &crop_resize_cpu);
  m.impl("_crop_resize_backward_cpu", &crop_resize_backward_cpu);
}

}  // namespace fsgan_fast
