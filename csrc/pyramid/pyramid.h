// pyramid_inject / pyramid_blend kernels: what the CPU (pyramid.cpp) and CUDA (pyramid.cu) implementations share.
// The contract and the references (inject_reference, blend_reference) live in fsgan_fast/ops/pyramid.py; the resize
// inside inject is imresize's (imresize/imresize.h: same sums, same order), kept unrounded for g_in:
//
//   inner (Y, X) = (y + p, x + p):  up[b,c,y,x] = round(u),  u = the resize of prev at (y, x) in opmath
//   noise [Ho,Wo]:        g_in[b,c,Y,X] = round(u + amp[b] * noise[b,c',y,x]) inside, 0 on the border
//   noise [Ho+2p,Wo+2p]:  g_in[b,c,Y,X] = round((inside ? u : 0) + amp[b] * noise[b,c',Y,X])
//
// with c' = 0 for one noise channel, else c; amp * noise rounded before the add (no fma), as the reference.
// blend: out = round(up + residual) or round(up + mask[b' ,0] * residual), b' = 0 for a one-row mask.
#pragma once

#include "imresize/imresize.h"

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace fsgan_fast {

// One pyramid_inject: the resize of prev (rs; rs.x is prev), noise [B,Cn,Hn,Wn], amp [B] (opmath), the outputs
// up [B,C,Ho,Wo] and g_in [B,C,Hp,Wp] (Hp = Ho + 2*pad). Float pointers typed as in imresize_params.
struct inject_params {
  imresize_params rs;
  int64_t pad, Hp, Wp;
  int64_t Cn, Hn, Wn;
  bool noise_padded;  // noise is [Hp, Wp] (else [Ho, Wo])
  const void* noise;
  const void* amp;
  void* up;
  void* g_in;
};

// One pyramid_blend: up, residual, out [B,C,H,W]; mask [Bm,1,H,W] or null.
struct blend_params {
  int64_t B, C, H, W, Bm;
  const void* up;
  const void* residual;
  const void* mask;
  void* out;
};

// g_in's value at (Y, X) of plane (b, c) in opmath, from u (the unrounded resize there, ignored outside) and the
// noise plane noise[b, c'].
template <typename scalar_t, typename acc_t, typename index_t>
C10_HOST_DEVICE inline acc_t inject_value(const inject_params& p, bool inside, acc_t u, acc_t a,
                                          const scalar_t* noise_plane, index_t Y, index_t X) {
  if (p.noise_padded) {
    const acc_t nz = static_cast<acc_t>(noise_plane[Y * static_cast<index_t>(p.Wn) + X]);
    return (inside ? u : acc_t(0)) + imresize_mul(a, nz);
  }
  if (!inside) return acc_t(0);
  const index_t y = Y - static_cast<index_t>(p.pad), x = X - static_cast<index_t>(p.pad);
  const acc_t nz = static_cast<acc_t>(noise_plane[y * static_cast<index_t>(p.Wn) + x]);
  return u + imresize_mul(a, nz);
}

// blend's value in opmath: up + residual, or up + mask * residual (the product rounded before the add)
template <typename acc_t>
C10_HOST_DEVICE inline acc_t blend_value(acc_t up, acc_t residual) {
  return up + residual;
}
template <typename acc_t>
C10_HOST_DEVICE inline acc_t blend_value(acc_t up, acc_t residual, acc_t mask) {
  return up + imresize_mul(mask, residual);
}

inline void pyramid_check_operand(const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have ", ref_name, "'s dtype ",
                   ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// Validates inject's inputs (see fsgan_fast/ops/pyramid.py); returns their sizes and pointers (outputs unset).
inline inject_params inject_check(const at::Tensor& prev, const at::Tensor& row_idx, const at::Tensor& row_w,
                                  const at::Tensor& col_idx, const at::Tensor& col_w, const at::Tensor& noise,
                                  const at::Tensor& amp, int64_t pad) {
  inject_params p{};
  p.rs = imresize_check("prev", prev, row_idx, row_w, col_idx, col_w);
  const imresize_params& r = p.rs;
  TORCH_CHECK_VALUE(pad >= 0, "pad must be >= 0, got ", pad);
  p.pad = pad;
  p.Hp = r.Ho + 2 * pad;
  p.Wp = r.Wo + 2 * pad;
  pyramid_check_operand("noise", noise, "prev", prev);
  TORCH_CHECK_VALUE(noise.dim() == 4, "noise must be 4-D [B, C, H, W], got ", noise.dim(), "-D shape ",
                    noise.sizes());
  p.Cn = noise.size(1);
  p.Hn = noise.size(2);
  p.Wn = noise.size(3);
  TORCH_CHECK_VALUE(noise.size(0) == r.B, "noise must have prev's batch size ", r.B, ", got ", noise.size(0));
  TORCH_CHECK_VALUE(p.Cn == 1 || p.Cn == r.C, "noise must have 1 or C=", r.C, " channels, got ", p.Cn);
  const bool plain = p.Hn == r.Ho && p.Wn == r.Wo;
  p.noise_padded = !plain;
  TORCH_CHECK_VALUE(plain || (p.Hn == p.Hp && p.Wn == p.Wp), "noise must be ", r.Ho, "x", r.Wo, " or ", p.Hp, "x",
                    p.Wp, " (padded by ", pad, "), got ", p.Hn, "x", p.Wn);
  const auto acc = imresize_opmath_type(prev.scalar_type());
  TORCH_CHECK_TYPE(amp.scalar_type() == acc, "amp must be ", acc, " (the opmath type of prev's ", prev.scalar_type(),
                   "), got ", amp.scalar_type());
  TORCH_CHECK_VALUE(amp.dim() == 1 && amp.size(0) == r.B, "amp must have shape [B=", r.B, "], got ", amp.sizes());
  TORCH_CHECK_VALUE(amp.device() == prev.device(), "amp is on ", amp.device(), " but prev is on ", prev.device());
  TORCH_CHECK_VALUE(amp.is_contiguous(), "amp must be contiguous");
  p.noise = noise.const_data_ptr();
  p.amp = amp.const_data_ptr();
  return p;
}

// Validates blend's inputs; returns their sizes and pointers (out unset).
inline blend_params blend_check(const at::Tensor& up, const at::Tensor& residual,
                                const std::optional<at::Tensor>& mask) {
  imresize_check_dtype("up", up);
  TORCH_CHECK_VALUE(up.dim() == 4, "up must be 4-D [B, C, H, W], got ", up.dim(), "-D shape ", up.sizes());
  TORCH_CHECK_VALUE(up.is_contiguous(), "up must be contiguous");
  pyramid_check_operand("residual", residual, "up", up);
  TORCH_CHECK_VALUE(residual.sizes() == up.sizes(), "residual must have up's shape ", up.sizes(), ", got ",
                    residual.sizes());
  blend_params p{};
  p.B = up.size(0);
  p.C = up.size(1);
  p.H = up.size(2);
  p.W = up.size(3);
  p.Bm = 0;
  p.up = up.const_data_ptr();
  p.residual = residual.const_data_ptr();
  p.mask = nullptr;
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    pyramid_check_operand("mask", m, "up", up);
    TORCH_CHECK_VALUE(m.dim() == 4 && (m.size(0) == 1 || m.size(0) == p.B) && m.size(1) == 1 && m.size(2) == p.H &&
                          m.size(3) == p.W,
                      "mask must have shape [B=", p.B, " or 1, 1, ", p.H, ", ", p.W, "], got ", m.sizes());
    p.Bm = m.size(0);
    p.mask = m.const_data_ptr();
  }
  return p;
}

}  // namespace fsgan_fast
