// Per-pixel arithmetic of UAFS re-weighting (SPEC §6), shared by csrc/cpu/uafs.cpp and
// csrc/cuda/uafs_kernels.cu.
//
// Math, for one pixel with attention logits a_1..a_M: m = max a, d_j = a_j − m, e_j = exp(d_j),
//   s = Σ e_j, p_j = e_j / s, H = −Σ p_j log p_j = log s − Σ p_j d_j (one log per pixel),
//   U = H / log M,  forward y_c = x_c (2 − U),
//   backward grad_x_c = g_c (2 − U),  dU = −Σ_c g_c x_c,
//   grad_a_j = dU · ∂U/∂a_j = −dU · p_j (log p_j + H) / log M with log p_j = d_j − log s.
// Memory traffic: forward reads att (M values) and x once and writes y; backward reads g, x, att
// once and writes grad_x, grad_att. Nothing per pixel is stored between them: backward recomputes
// U from att. Limits: M ≥ 2; NaN in x or att reaches the outputs of that pixel.
#pragma once
#include "affseg/entropy_math.h"
#include "affseg/macros.h"

namespace affseg {

// H from the pixel's running statistics: s = Σ e_j, pd = Σ e_j d_j (so Σ p_j d_j = pd / s).
template <typename T>
AFFSEG_HD T uafs_entropy(T log_s, T s, T pd) {
  return log_s - pd / s;
}

// ∂U/∂a_j for one class (the factor grad_att_j = dU · this).
template <typename T>
AFFSEG_HD T uafs_dU_da(T e, T d, T inv_s, T log_s, T H, T inv_log_m) {
  const T p = e * inv_s;
  return -p * ((d - log_s) + H) * inv_log_m;
}

}  // namespace affseg
