// CPU kernels of sle_gate (contract: fsgan_fast/ops/sle_gate.py). The gate's two small products go through ATen's
// matmul; the pool, the activations, the multiply, its backward reduction and the pool's backward are loops here.
// Deterministic: every sum runs in a fixed order whatever the thread count.
#include "sle_gate/sle_gate.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <string_view>
#include <tuple>
#include <vector>

namespace fsgan_fast {
namespace {

constexpr int64_t kGrainElems = 32768;  // elements touched per parallel task at least (ATen's GRAIN_SIZE)
constexpr int64_t kRowsPerChunk = 64;   // channels_last backward: pixels per partial sum, fixed by the shape only

int64_t grain_for(int64_t elems_per_item) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_item)); }

at::MemoryFormat high_format(const sle_params& p) {
  return p.high_cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// pooled[b, c*16 + i*4 + j] = mean of x_low[b, c] over bin (i, j), pixels summed row by row.
template <typename scalar_t>
void pool_cpu(const sle_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.x_low);
  auto* pooled = static_cast<acc_t*>(p.pooled);
  const int64_t* s = p.low_stride;
  at::parallel_for(0, p.B * p.Cl, grain_for(p.h * p.w), [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const scalar_t* plane = x + bc / p.Cl * s[0] + bc % p.Cl * s[1];
      for (int64_t i = 0; i < kSlePool; ++i) {
        const int64_t y0 = sle_bin_start(i, p.h), y1 = sle_bin_end(i, p.h);
        for (int64_t j = 0; j < kSlePool; ++j) {
          const int64_t x0 = sle_bin_start(j, p.w), x1 = sle_bin_end(j, p.w);
          acc_t sum = 0;
          for (int64_t yy = y0; yy < y1; ++yy)
            for (int64_t xx = x0; xx < x1; ++xx) sum += static_cast<acc_t>(plane[yy * s[2] + xx * s[3]]);
          pooled[bc * kSleBins + i * kSlePool + j] = sum / static_cast<acc_t>((y1 - y0) * (x1 - x0));
        }
      }
    }
  });
}

// grad_x_low[b, c, y, x] = sum over the bins (i, j) holding (y, x) of d_pooled[b, c, i, j] / area(i, j).
template <typename scalar_t>
void pool_backward_cpu(const sle_params& p, const at::opmath_type<scalar_t>* d_pooled) {
  using acc_t = at::opmath_type<scalar_t>;
  auto* gx = static_cast<scalar_t*>(p.grad_x_low);
  const int64_t* s = p.glow_stride;
  at::parallel_for(0, p.B * p.Cl, grain_for(p.h * p.w), [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      scalar_t* plane = gx + bc / p.Cl * s[0] + bc % p.Cl * s[1];
      const acc_t* d = d_pooled + bc * kSleBins;
      for (int64_t yy = 0; yy < p.h; ++yy) {
        for (int64_t xx = 0; xx < p.w; ++xx) {
          acc_t sum = 0;
          for (int64_t i = 0; i < kSlePool; ++i) {
            const int64_t y0 = sle_bin_start(i, p.h), y1 = sle_bin_end(i, p.h);
            if (yy < y0 || yy >= y1) continue;
            for (int64_t j = 0; j < kSlePool; ++j) {
              const int64_t x0 = sle_bin_start(j, p.w), x1 = sle_bin_end(j, p.w);
              if (xx < x0 || xx >= x1) continue;
              sum += d[i * kSlePool + j] / static_cast<acc_t>((y1 - y0) * (x1 - x0));
            }
          }
          plane[yy * s[2] + xx * s[3]] = static_cast<scalar_t>(sum);
        }
      }
    }
  });
}

// y = x_high * gate, rounded once. Contiguous: one task item per (b, c) plane; channels_last: per pixel row of Ch.
template <typename scalar_t>
void scale_cpu(const sle_params& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.x_high);
  const auto* gate = static_cast<const acc_t*>(p.gate);
  auto* y = static_cast<scalar_t*>(p.y);
  const int64_t HW = p.H * p.W, C = p.Ch;
  if (!p.high_cl) {
    at::parallel_for(0, p.B * C, grain_for(HW), [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const acc_t g = gate[bc];
        for (int64_t e = bc * HW; e < (bc + 1) * HW; ++e) y[e] = static_cast<scalar_t>(static_cast<acc_t>(x[e]) * g);
      }
    });
  } else {
    at::parallel_for(0, p.B * HW, grain_for(C), [&](int64_t begin, int64_t end) {
      for (int64_t bp = begin; bp < end; ++bp) {
        const acc_t* g = gate + bp / HW * C;
        for (int64_t c = 0; c < C; ++c)
          y[bp * C + c] = static_cast<scalar_t>(static_cast<acc_t>(x[bp * C + c]) * g[c]);
      }
    });
  }
}

// grad_x_high = dy * gate and d_gate[b, c] = sum over H*W of dy * x_high, from one pass over dy and x_high.
// Channels_last sums kRowsPerChunk pixels per partial, then the partials in order.
template <typename scalar_t>
void scale_backward_cpu(const sle_params& p, at::opmath_type<scalar_t>* d_gate) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(p.x_high);
  const auto* dy = static_cast<const scalar_t*>(p.grad);
  const auto* gate = static_cast<const acc_t*>(p.gate);
  auto* gx = static_cast<scalar_t*>(p.grad_x_high);
  const int64_t HW = p.H * p.W, C = p.Ch;
  if (!p.high_cl) {
    at::parallel_for(0, p.B * C, grain_for(HW), [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const acc_t g = gate[bc];
        acc_t sum = 0;
        for (int64_t e = bc * HW; e < (bc + 1) * HW; ++e) {
          const acc_t d = static_cast<acc_t>(dy[e]);
          gx[e] = static_cast<scalar_t>(d * g);
          sum += d * static_cast<acc_t>(x[e]);
        }
        d_gate[bc] = sum;
      }
    });
    return;
  }
  const int64_t chunks = (HW + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<acc_t> partial(p.B * chunks * C);
  at::parallel_for(0, p.B * chunks, grain_for(kRowsPerChunk * C), [&](int64_t begin, int64_t end) {
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / chunks, p0 = bk % chunks * kRowsPerChunk, p1 = std::min(HW, p0 + kRowsPerChunk);
      const acc_t* g = gate + b * C;
      acc_t* part = partial.data() + bk * C;
      std::fill(part, part + C, acc_t(0));
      for (int64_t q = p0; q < p1; ++q) {
        const int64_t row = (b * HW + q) * C;
        for (int64_t c = 0; c < C; ++c) {
          const acc_t d = static_cast<acc_t>(dy[row + c]);
          gx[row + c] = static_cast<scalar_t>(d * g[c]);
          part[c] += d * static_cast<acc_t>(x[row + c]);
        }
      }
    }
  });
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      acc_t sum = 0;
      for (int64_t k = 0; k < chunks; ++k) sum += partial[(b * chunks + k) * C + c];
      d_gate[b * C + c] = sum;
    }
  }
}

// out[i] = sigmoid(v[i]) or act(v[i]); out may be v.
template <typename acc_t>
void pointwise_cpu(const acc_t* v, acc_t* out, int64_t n, int act, bool sigmoid) {
  for (int64_t i = 0; i < n; ++i) out[i] = sigmoid ? sle_sigmoid(v[i]) : sle_activation(v[i], act);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sle_gate_cpu(const at::Tensor& x_low,
                                                                        const at::Tensor& x_high,
                                                                        const at::Tensor& w1, const at::Tensor& w2,
                                                                        std::string_view act) {
  sle_params p = sle_check_forward(x_low, x_high, w1, w2, act);
  const auto acc_opts = w1.options();
  at::Tensor pooled = at::empty({p.B, p.K}, acc_opts);
  at::Tensor y = at::empty(x_high.sizes(), x_high.options().memory_format(high_format(p)));
  p.pooled = pooled.mutable_data_ptr();
  p.y = y.mutable_data_ptr();
  at::Tensor hidden, gate;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_high.scalar_type(), "sle_gate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pool_cpu<scalar_t>(p);
    hidden = at::mm(pooled, w1.view({p.Ch, p.K}).t());
    at::Tensor a = at::empty_like(hidden);
    pointwise_cpu(hidden.const_data_ptr<acc_t>(), a.mutable_data_ptr<acc_t>(), a.numel(), p.act, false);
    gate = at::mm(a, w2.view({p.Ch, p.Ch}).t());
    pointwise_cpu(gate.const_data_ptr<acc_t>(), gate.mutable_data_ptr<acc_t>(), gate.numel(), p.act, true);
    p.gate = gate.mutable_data_ptr();
    scale_cpu<scalar_t>(p);
  });
  return {y, gate, pooled, hidden};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sle_gate_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x_low, const at::Tensor& x_high, const at::Tensor& w1,
    const at::Tensor& w2, const at::Tensor& gate, const at::Tensor& pooled, const at::Tensor& hidden,
    std::string_view act) {
  sle_params p = sle_check_backward(grad, x_low, x_high, w1, w2, gate, pooled, hidden, act);
  at::Tensor grad_x_high = at::empty(x_high.sizes(), x_high.options().memory_format(high_format(p)));
  at::Tensor grad_x_low = at::empty(x_low.sizes(), x_low.options().memory_format(sle_layout("x_low", x_low)));
  for (int d = 0; d < 4; ++d) p.glow_stride[d] = grad_x_low.stride(d);
  p.grad_x_high = grad_x_high.mutable_data_ptr();
  p.grad_x_low = grad_x_low.mutable_data_ptr();
  at::Tensor grad_w1, grad_w2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_high.scalar_type(), "sle_gate_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor d_pre = at::empty({p.B, p.Ch}, gate.options());
    auto* dp = d_pre.mutable_data_ptr<acc_t>();
    scale_backward_cpu<scalar_t>(p, dp);  // d_gate, turned into d_pre below
    const acc_t* g = gate.const_data_ptr<acc_t>();
    const acc_t* hid = hidden.const_data_ptr<acc_t>();
    at::Tensor a = at::empty_like(hidden);
    auto* ap = a.mutable_data_ptr<acc_t>();
    for (int64_t i = 0; i < p.B * p.Ch; ++i) {
      dp[i] *= g[i] * (acc_t(1) - g[i]);  // through the sigmoid
      ap[i] = sle_activation(hid[i], p.act);
    }
    grad_w2 = at::mm(d_pre.t(), a).view(w2.sizes());
    at::Tensor d_hidden = at::mm(d_pre, w2.view({p.Ch, p.Ch}));
    auto* dh = d_hidden.mutable_data_ptr<acc_t>();
    for (int64_t i = 0; i < p.B * p.Ch; ++i) dh[i] *= sle_activation_grad(hid[i], p.act);
    grad_w1 = at::mm(d_hidden.t(), pooled).view(w1.sizes());
    const at::Tensor d_pooled = at::mm(d_hidden, w1.view({p.Ch, p.K}));
    pool_backward_cpu<scalar_t>(p, d_pooled.const_data_ptr<acc_t>());
  });
  return {grad_x_low, grad_x_high, grad_w1, grad_w2};
}

}  // namespace

TORCH_LIBRARY_IMPL(fsgan_fast, CPU, m) {
  m.impl("_sle_gate_cpu", &sle_gate_cpu);
  m.impl("_sle_gate_backward_cpu", &sle_gate_backward_cpu);
}

}  // namespace fsgan_fast
