// crop_resize kernels: what the CPU (crop_resize.cpp) and CUDA (crop_resize.cu) implementations share. The contract
// and the references (crop_resize_reference, crop_resize_backward_reference) live in fsgan_fast/ops/crop_resize.py:
//
//   box n = (y0, x0, y1, x1) of image image_index[n];  per axis, output index i of n_out samples
//   pos = clamp(y0 + (i + 0.5) * ((y1 - y0) / n_out) - 0.5, 0, size - 1),  i0 = floor(pos), i1 = min(i0 + 1, size - 1)
//   out[n,c,i,j] = w00 x[r0,c0] + w01 x[r0,c1] + w10 x[r1,c0] + w11 x[r1,c1],  w00 = (1-fy)(1-fx), w01 = (1-fy) fx, ...
//
// in opmath, every product rounded before it is added (imresize_mul: no fused multiply-add, as the reference's
// separate PyTorch ops), summed in that order, rounded once. The backward adds w * grad into the same four pixels.
// A NaN position keeps NaN weights and reads pixel 0 (never out of bounds); an image index outside [0, B) gives a NaN
// output row and no gradient.
#pragma once

#include "imresize/imresize.h"

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <math.h>
#include <cstdint>

namespace fsgan_fast {

// One crop_resize (forward) or its backward. Forward: src = x [B,C,H,W], dst = out [N,C,h,w]. Backward: src = grad
// [N,C,h,w], dst = grad_x's accumulation buffer [B,C,H,W] (opmath). boxes [N,4] opmath, image_index int64 [N]; all
// contiguous. Float pointers are typed by the kernel's scalar type or its opmath type (boxes, the backward's dst).
struct crop_resize_params {
  int64_t B, C, H, W;  // the images
  int64_t N, h, w;     // the boxes and the output size
  const void* boxes;
  const int64_t* image_index;
  const void* src;
  void* dst;
};

// One axis of one sample: neighbours i0 <= i1 in [0, size) and the weight f of i1 (the weight of i0 is 1 - f).
template <typename acc_t>
struct crop_resize_tap {
  int64_t i0, i1;
  acc_t f;
};

C10_HOST_DEVICE inline float crop_resize_floor(float v) { return floorf(v); }
C10_HOST_DEVICE inline double crop_resize_floor(double v) { return floor(v); }

template <typename acc_t>
C10_HOST_DEVICE inline crop_resize_tap<acc_t> crop_resize_axis(acc_t start, acc_t stop, int64_t i, int64_t n_out,
                                                               int64_t size) {
  const acc_t step = (stop - start) / static_cast<acc_t>(n_out);
  acc_t pos = start + imresize_mul(static_cast<acc_t>(i) + acc_t(0.5), step);
  pos = pos - acc_t(0.5);
  const acc_t last = static_cast<acc_t>(size - 1);
  // comparisons rather than fmin/fmax, which would turn a NaN into a bound: NaN stays NaN, as in the reference
  if (pos < acc_t(0)) pos = acc_t(0);
  if (pos > last) pos = last;
  const acc_t low = crop_resize_floor(pos);
  int64_t i0 = low >= acc_t(0) ? static_cast<int64_t>(low) : 0;  // false for NaN: pixel 0, never out of bounds
  if (i0 > size - 1) i0 = size - 1;
  crop_resize_tap<acc_t> t;
  t.i0 = i0;
  t.i1 = i0 + 1 < size ? i0 + 1 : size - 1;
  t.f = pos - low;
  return t;
}

// The box of n along rows (axis 0) or columns (axis 1).
template <typename acc_t>
C10_HOST_DEVICE inline crop_resize_tap<acc_t> crop_resize_row(const crop_resize_params& p, int64_t n, int64_t i) {
  const acc_t* b = static_cast<const acc_t*>(p.boxes) + n * 4;
  return crop_resize_axis<acc_t>(imresize_table(b), imresize_table(b + 2), i, p.h, p.H);
}
template <typename acc_t>
C10_HOST_DEVICE inline crop_resize_tap<acc_t> crop_resize_col(const crop_resize_params& p, int64_t n, int64_t j) {
  const acc_t* b = static_cast<const acc_t*>(p.boxes) + n * 4;
  return crop_resize_axis<acc_t>(imresize_table(b + 1), imresize_table(b + 3), j, p.w, p.W);
}

// The four corner weights in the summation order (r0c0, r0c1, r1c0, r1c1).
template <typename acc_t>
C10_HOST_DEVICE inline void crop_resize_weights(acc_t fy, acc_t fx, acc_t (&wt)[4]) {
  const acc_t gy = acc_t(1) - fy, gx = acc_t(1) - fx;
  wt[0] = imresize_mul(gy, gx);
  wt[1] = imresize_mul(gy, fx);
  wt[2] = imresize_mul(fy, gx);
  wt[3] = imresize_mul(fy, fx);
}

inline void crop_resize_check_boxes(const at::Tensor& boxes, const at::Tensor& image_index, const char* ref_name,
                                    const at::Tensor& ref, at::ScalarType acc) {
  TORCH_CHECK_TYPE(boxes.scalar_type() == acc, "boxes must be ", acc, " (the opmath type of ", ref_name, "'s ",
                   ref.scalar_type(), "), got ", boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must have shape [N, 4], got ", boxes.sizes());
  TORCH_CHECK_TYPE(image_index.scalar_type() == at::kLong, "image_index must be int64, got ",
                   image_index.scalar_type());
  TORCH_CHECK_VALUE(image_index.dim() == 1 && image_index.size(0) == boxes.size(0),
                    "image_index must have shape [N=", boxes.size(0), "], got ", image_index.sizes());
  TORCH_CHECK_VALUE(boxes.device() == ref.device(), "boxes is on ", boxes.device(), " but ", ref_name, " is on ",
                    ref.device());
  TORCH_CHECK_VALUE(image_index.device() == ref.device(), "image_index is on ", image_index.device(), " but ",
                    ref_name, " is on ", ref.device());
  TORCH_CHECK_VALUE(boxes.is_contiguous(), "boxes must be contiguous");
  TORCH_CHECK_VALUE(image_index.is_contiguous(), "image_index must be contiguous");
}

// Validates the forward's inputs (see fsgan_fast/ops/crop_resize.py); returns sizes and pointers (dst unset).
inline crop_resize_params crop_resize_check(const at::Tensor& x, const at::Tensor& boxes,
                                            const at::Tensor& image_index, int64_t out_h, int64_t out_w) {
  imresize_check_dtype("x", x);
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be 4-D [B, C, H, W], got ", x.dim(), "-D shape ", x.sizes());
  TORCH_CHECK_VALUE(x.numel() > 0, "x must have no empty dimension, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.is_contiguous(), "x must be contiguous");
  crop_resize_check_boxes(boxes, image_index, "x", x, imresize_opmath_type(x.scalar_type()));
  TORCH_CHECK_VALUE(out_h >= 1 && out_w >= 1, "out must be two ints >= 1 (h, w), got (", out_h, ", ", out_w, ")");
  crop_resize_params p{};
  p.B = x.size(0);
  p.C = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  p.N = boxes.size(0);
  p.h = out_h;
  p.w = out_w;
  p.boxes = boxes.const_data_ptr();
  p.image_index = image_index.const_data_ptr<int64_t>();
  p.src = x.const_data_ptr();
  p.dst = nullptr;
  return p;
}

// Validates the backward's inputs; returns sizes and pointers (dst unset).
inline crop_resize_params crop_resize_backward_check(const at::Tensor& grad, const at::Tensor& boxes,
                                                     const at::Tensor& image_index, int64_t batch, int64_t height,
                                                     int64_t width) {
  imresize_check_dtype("grad", grad);
  TORCH_CHECK_VALUE(grad.dim() == 4, "grad must be 4-D [N, C, h, w], got ", grad.dim(), "-D shape ", grad.sizes());
  TORCH_CHECK_VALUE(grad.is_contiguous(), "grad must be contiguous");
  crop_resize_check_boxes(boxes, image_index, "grad", grad, imresize_opmath_type(grad.scalar_type()));
  TORCH_CHECK_VALUE(grad.size(0) == boxes.size(0), "grad must have one row per box (N=", boxes.size(0), "), got ",
                    grad.size(0));
  TORCH_CHECK_VALUE(batch >= 1 && height >= 1 && width >= 1, "batch, height and width must be >= 1, got ", batch, ", ",
                    height, ", ", width);
  TORCH_CHECK_VALUE(grad.size(1) >= 1 && grad.size(2) >= 1 && grad.size(3) >= 1,
                    "grad must have C, h, w >= 1, got shape ", grad.sizes());
  crop_resize_params p{};
  p.B = batch;
  p.C = grad.size(1);
  p.H = height;
  p.W = width;
  p.N = grad.size(0);
  p.h = grad.size(2);
  p.w = grad.size(3);
  p.boxes = boxes.const_data_ptr();
  p.image_index = image_index.const_data_ptr<int64_t>();
  p.src = grad.const_data_ptr();
  p.dst = nullptr;
  return p;
}

}  // namespace fsgan_fast
