// Per-pixel arithmetic of the fused patch statistics (SPEC §5), shared by csrc/cpu/entropy.cpp and
// csrc/cuda/entropy_kernels.cu.
//
// Math, for one pixel with logits l_1..l_K: m = max_k l_k, e_k = exp(l_k − m), s = Σ_k e_k,
//   log p_k = l_k − m − log s,  p_k = e_k / s,
//   1 − p_k = o_k / s with o_k = Σ_{j≠k} e_j, computed without cancellation: for k not at the
//   maximum o_k = s − e_k ≥ 1; at the maximum (e_k = 1) o_k = Σ_{e_j<1} e_j + (ties − 1),
//   binary h_k = −[p_k log p_k + (1−p_k) log(1−p_k)],  shannon H = −Σ_k p_k log p_k / log K,
//   with 0·log 0 = 0 (p_k = 0 or o_k below the smallest normal). Logits of ±1e4 stay finite; p = 1
//   exactly gives h = 0. NaN logits give NaN (no fmax/fmin on the value path).
// Memory traffic: none here; callers read each logit once and keep tile sums in registers.
// Limits: K ≥ 2. exp and log are affseg/simd_math.h's (accuracy stated there), so that the CPU's
// pixel loops vectorise without -ffast-math.
#pragma once
#include "affseg/macros.h"
#include "affseg/simd_math.h"

namespace affseg {

template <typename T>
struct Tiny;
template <>
struct Tiny<float> {
  static constexpr float value = 1.17549435e-38f;
};
template <>
struct Tiny<double> {
  static constexpr double value = 2.2250738585072014e-308;
};

// −q log q for q = o / s with log q = log o − log s; 0 where o is 0 (or subnormal). NaN passes.
template <typename T>
AFFSEG_HD T neg_xlogx_ratio(T o, T inv_s, T log_s) {
  const T q = o * inv_s;
  const T v = -q * (simd::log(o < Tiny<T>::value ? T(1) : o) - log_s);
  return o < Tiny<T>::value ? T(0) : v;
}

// −p log p from the log-domain: p = e·inv_s, log p = d − log s with d = l − m ≤ 0; 0 where p = 0.
template <typename T>
AFFSEG_HD T neg_plogp(T e, T d, T inv_s, T log_s) {
  const T p = e * inv_s;
  const T v = -p * (d - log_s);
  return p == T(0) ? T(0) : v;
}

// o_k = Σ_{j≠k} e_j from s_lt = Σ_{e_j<1} e_j and ties = #{j : e_j = 1} (see the header comment).
template <typename T>
AFFSEG_HD T others_sum(T e, T s, T s_lt, T ties) {
  return e == T(1) ? s_lt + (ties - T(1)) : s - e;
}

}  // namespace affseg
