// CPU kernel of imresize (contract: fsgan_fast/ops/imresize.py, see imresize.h). One task item per output row: the
// row pass (the Th input rows it reads, weighted, over the whole width) into a buffer, then the column taps from it.
// The same sums in the same order as imresize_point (the CUDA kernel), so both give the same bits.
#include "imresize/imresize.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace fsgan_fast {
namespace {

constexpr int64_t kGrainElems = 32768;  // multiply-adds per parallel task at least (ATen's GRAIN_SIZE)

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, work_per_item));
}

template <typename scalar_t>
void imresize_cpu_kernel(const imresize_params& p, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* row_w = static_cast<const acc_t*>(p.row_w);
  const auto* col_w = static_cast<const acc_t*>(p.col_w);
  const int64_t rows = p.B * p.C * p.Ho;
  at::parallel_for(0, rows, grain_for(p.Wi * p.Th + p.Wo * p.Tw), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tmp(p.Wi);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bc = r / p.Ho, y = r % p.Ho;
      const scalar_t* plane = x + bc * p.Hi * p.Wi;
      std::fill(tmp.begin(), tmp.end(), acc_t(0));
      for (int64_t i = 0; i < p.Th; ++i) {
        const int64_t row = p.row_idx[y * p.Th + i];
        if (row < 0 || row >= p.Hi) continue;
        const acc_t w = row_w[y * p.Th + i];
        const scalar_t* src = plane + row * p.Wi;
        for (int64_t c = 0; c < p.Wi; ++c) tmp[c] += imresize_mul(w, static_cast<acc_t>(src[c]));
      }
      scalar_t* dst = out + r * p.Wo;
      for (int64_t xo = 0; xo < p.Wo; ++xo) {
        acc_t acc = 0;
        for (int64_t j = 0; j < p.Tw; ++j) {
          const int64_t col = p.col_idx[xo * p.Tw + j];
          if (col < 0 || col >= p.Wi) continue;
          acc += imresize_mul(col_w[xo * p.Tw + j], tmp[col]);
        }
        dst[xo] = static_cast<scalar_t>(acc);
      }
    }
  });
}

at::Tensor imresize_cpu(const at::Tensor& x, const at::Tensor& row_idx, const at::Tensor& row_w,
                        const at::Tensor& col_idx, const at::Tensor& col_w) {
  const imresize_params p = imresize_check("x", x, row_idx, row_w, col_idx, col_w);
  at::Tensor out = at::empty({p.B, p.C, p.Ho, p.Wo}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "imresize_cpu",
                                  [&] { imresize_cpu_kernel<scalar_t>(p, out.mutable_data_ptr<scalar_t>()); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CPU, m) { m.impl("_imresize_cpu", &imresize_cpu); }

}  // namespace fsgan_fast
