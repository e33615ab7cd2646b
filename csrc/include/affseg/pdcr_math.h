// Per-pair arithmetic of the fused PDCR contrastive term (SPEC §3), shared by csrc/cpu/pdcr.cpp and
// csrc/cuda/pdcr_kernels.cu so that the CPU tests exercise the math the GPU runs.
//
// Math, for a row i and a column j of one batch (f, g unit rows; φ label ratios per window w):
//   ŝ_ij = (f_i·g_j − 1)·inv_tau                      (∈ [−2·inv_tau, 0])
//   d_ijw = ½ Σ_k |φ_iwk − φ_jwk|  ("tv")  or  Σ_{k≥1} |φ_iwk − φ_jwk|  ("fg_l1"),  a = 1 − d
//   (w⁺, w⁻) = (a, d), or (d, a) when swapped
//   forward:  lse_iw = LSE_j ŝ_ij·w⁻,  pos_iw = Σ_j ŝ_ij·w⁺,  r_i = (1/W) Σ_w (lse_iw − pos_iw/n_i)
//   backward: ∂r_i/∂ŝ_ij = (1/W) Σ_w (exp(ŝ_ij·w⁻ − lse_iw)·w⁻ − w⁺/n_i)
// Memory traffic: none here; the callers stream feature tiles once per sweep and keep φ in cache.
// Limits: fg_l1 lets a (and so w⁻ in the swapped orientation) be negative, so callers must not
// assume ŝ·w⁻ ≤ 0. NaN operands give NaN (no fmax/fmin on the value path).
#pragma once
#include <cstdint>

#include "affseg/macros.h"
#include "affseg/simd_math.h"

namespace affseg {
namespace pdcr {

// First class of the divergence sum and its scale: tv sums every class with ½, fg_l1 skips the
// background class 0 and has no ½.
AFFSEG_HD int first_class(bool fg_l1) { return fg_l1 ? 1 : 0; }

template <typename T>
AFFSEG_HD T divergence_scale(bool fg_l1) {
  return fg_l1 ? T(1) : T(0.5);
}

template <typename T>
AFFSEG_HD T scaled_logit(T dot, T inv_tau) {
  return (dot - T(1)) * inv_tau;
}

// (w⁺, w⁻) = (a, d) or (d, a) as affine maps of d, w = c0 + c1·d (1 + (−1)·d rounds exactly like
// 1 − d), so that the pair loops carry no branch on the orientation: GCC would unswitch the loop on
// it and vectorise only one of the copies.
template <typename T>
struct WeightMap {
  T pos0, pos1, neg0, neg1;
};

template <typename T>
AFFSEG_HD WeightMap<T> weight_map(bool swapped) {
  return swapped ? WeightMap<T>{T(0), T(1), T(1), T(-1)} : WeightMap<T>{T(1), T(-1), T(0), T(1)};
}

template <typename T>
AFFSEG_HD void pair_weights(T d, const WeightMap<T>& m, T& w_pos, T& w_neg) {
  w_pos = m.pos0 + m.pos1 * d;
  w_neg = m.neg0 + m.neg1 * d;
}

// d_ij for one window from the K ratios of each side (the GPU's pair epilogue; the CPU forms the same
// sum column-vectorised over a tile, with first_class and divergence_scale from here).
template <typename T>
AFFSEG_HD T window_divergence(const T* phi_i, const T* phi_j, int64_t stride_j, int K, bool fg_l1) {
  T sum = T(0);
  for (int k = first_class(fg_l1); k < K; ++k) {
    const T diff = phi_i[k] - phi_j[k * stride_j];
    sum += diff < T(0) ? -diff : diff;
  }
  return divergence_scale<T>(fg_l1) * sum;
}

// One pair's term of W·∂r_i/∂ŝ_ij for one window, from p = exp(ŝ_ij·w⁻ − lse_iw) and 1/n_i.
template <typename T>
AFFSEG_HD T pair_grad_term(T p, T w_pos, T w_neg, T inv_n) {
  return p * w_neg - w_pos * inv_n;
}

// Largest |ŝ·w| the data allows: |ŝ| ≤ 2·inv_tau and |w| ≤ 1 + d_max with d_max from the rows' and
// columns' largest ratio sums. Below `fixed_shift_limit` every exp(ŝ·w⁻) is a normal number and a
// sum of up to 2^31 of them cannot overflow, so the LSE needs no running maximum.
template <typename T>
AFFSEG_HD T logit_bound(T inv_tau, T max_ratio_sum_a, T max_ratio_sum_b, bool fg_l1) {
  const T d_max = divergence_scale<T>(fg_l1) * (max_ratio_sum_a + max_ratio_sum_b);
  return T(2.02) * inv_tau * (T(1) + d_max);
}

template <typename T>
AFFSEG_HD T fixed_shift_limit() {
  return sizeof(T) == 4 ? T(60) : T(600);
}

}  // namespace pdcr
}  // namespace affseg
