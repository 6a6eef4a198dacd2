// imresize kernels: what the CPU (imresize.cpp) and CUDA (imresize.cu) implementations share, and what the pyramid
// kernels (csrc/pyramid/) reuse. The contract and the reference (taps_reference) live in fsgan_fast/ops/imresize.py:
//
//   out[b,c,y,x] = sum_j col_w[x,j] * (sum_i row_w[y,i] * x[b,c,row_idx[y,i],col_idx[x,j]])
//
// in opmath, the inner sum first (as the reference's row pass), each sum in tap order, every product rounded before
// it is added (no fused multiply-add, as the reference's separate multiply and sum), rounded once to x's dtype. CPU
// and CUDA therefore give the same bits. A tap whose index lies outside the input reads nothing (the Python side
// only builds indices in range; this keeps a bad table from reading out of bounds).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace fsgan_fast {

// One resize: x [B,C,Hi,Wi] contiguous; row tables [Ho,Th], column tables [Wo,Tw], all contiguous. Float pointers
// are typed by the kernel's scalar type (x) or its opmath type (row_w, col_w).
struct imresize_params {
  int64_t B, C, Hi, Wi, Ho, Wo, Th, Tw;
  const void* x;
  const int64_t* row_idx;
  const void* row_w;
  const int64_t* col_idx;
  const void* col_w;
};

inline at::ScalarType imresize_opmath_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// A read of the small tap tables: through the read-only cache on the GPU.
template <typename T>
C10_HOST_DEVICE inline T imresize_table(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// a * b rounded on its own: never contracted with a following add into an fma (CPU and CUDA agree bit for bit).
C10_HOST_DEVICE inline float imresize_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
C10_HOST_DEVICE inline double imresize_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// One output value, unrounded: `plane` is x[b,c] ([Hi,Wi]), (y, x) the output pixel. index_t: the type of the
// offsets within the plane (int where Hi*Wi is checked to fit).
template <typename scalar_t, typename acc_t, typename index_t>
C10_HOST_DEVICE inline acc_t imresize_point(const scalar_t* plane, const imresize_params& p, index_t y, index_t x) {
  const int64_t* ri = p.row_idx + static_cast<int64_t>(y) * p.Th;
  const acc_t* rw = static_cast<const acc_t*>(p.row_w) + static_cast<int64_t>(y) * p.Th;
  const int64_t* ci = p.col_idx + static_cast<int64_t>(x) * p.Tw;
  const acc_t* cw = static_cast<const acc_t*>(p.col_w) + static_cast<int64_t>(x) * p.Tw;
  const index_t Th = static_cast<index_t>(p.Th), Tw = static_cast<index_t>(p.Tw);
  acc_t acc = 0;
  for (index_t j = 0; j < Tw; ++j) {
    const int64_t col = imresize_table(ci + j);
    if (col < 0 || col >= p.Wi) continue;
    acc_t s = 0;
    for (index_t i = 0; i < Th; ++i) {
      const int64_t row = imresize_table(ri + i);
      if (row < 0 || row >= p.Hi) continue;
      const index_t off = static_cast<index_t>(row) * static_cast<index_t>(p.Wi) + static_cast<index_t>(col);
      s += imresize_mul(imresize_table(rw + i), static_cast<acc_t>(plane[off]));
    }
    acc += imresize_mul(imresize_table(cw + j), s);
  }
  return acc;
}

inline void imresize_check_dtype(const char* name, const at::Tensor& t) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble, name,
                   " must be float16, bfloat16, float32 or float64, got ", st);
}

// A tap table pair: idx int64 [n, T] and w opmath [n, T], contiguous, on x's device.
inline void imresize_check_table(const char* idx_name, const at::Tensor& idx, const char* w_name, const at::Tensor& w,
                                 at::ScalarType acc, const char* x_name, const at::Tensor& x) {
  TORCH_CHECK_TYPE(idx.scalar_type() == at::kLong, idx_name, " must be int64, got ", idx.scalar_type());
  TORCH_CHECK_TYPE(w.scalar_type() == acc, w_name, " must be ", acc, " (the opmath type of ", x_name, "'s ",
                   x.scalar_type(), "), got ", w.scalar_type());
  TORCH_CHECK_VALUE(idx.dim() == 2, idx_name, " must be 2-D [n, taps], got shape ", idx.sizes());
  TORCH_CHECK_VALUE(w.sizes() == idx.sizes(), w_name, " must have ", idx_name, "'s shape ", idx.sizes(), ", got ",
                    w.sizes());
  TORCH_CHECK_VALUE(idx.device() == x.device(), idx_name, " is on ", idx.device(), " but ", x_name, " is on ",
                    x.device());
  TORCH_CHECK_VALUE(w.device() == x.device(), w_name, " is on ", w.device(), " but ", x_name, " is on ", x.device());
  TORCH_CHECK_VALUE(idx.is_contiguous(), idx_name, " must be contiguous");
  TORCH_CHECK_VALUE(w.is_contiguous(), w_name, " must be contiguous");
}

// Validates x [B,C,Hi,Wi] (named x_name in messages) and the four tables; returns their sizes and pointers.
inline imresize_params imresize_check(const char* x_name, const at::Tensor& x, const at::Tensor& row_idx,
                                      const at::Tensor& row_w, const at::Tensor& col_idx, const at::Tensor& col_w) {
  imresize_check_dtype(x_name, x);
  TORCH_CHECK_VALUE(x.dim() == 4, x_name, " must be 4-D [B, C, H, W], got ", x.dim(), "-D shape ", x.sizes());
  TORCH_CHECK_VALUE(x.is_contiguous(), x_name, " must be contiguous");
  const auto acc = imresize_opmath_type(x.scalar_type());
  imresize_check_table("row_idx", row_idx, "row_w", row_w, acc, x_name, x);
  imresize_check_table("col_idx", col_idx, "col_w", col_w, acc, x_name, x);
  imresize_params p{};
  p.B = x.size(0);
  p.C = x.size(1);
  p.Hi = x.size(2);
  p.Wi = x.size(3);
  p.Ho = row_idx.size(0);
  p.Th = row_idx.size(1);
  p.Wo = col_idx.size(0);
  p.Tw = col_idx.size(1);
  p.x = x.const_data_ptr();
  p.row_idx = row_idx.const_data_ptr<int64_t>();
  p.row_w = row_w.const_data_ptr();
  p.col_idx = col_idx.const_data_ptr<int64_t>();
  p.col_w = col_w.const_data_ptr();
  return p;
}

}  // namespace fsgan_fast
