// Per-pixel arithmetic of the fused patch statistics (SPEC §5), shared by csrc/cpu/entropy.cpp and
// csrc/cuda/entropy_kernels.cu, and the exp/log that csrc/include/affseg/uafs_math.h also uses.
//
// Math, for one pixel with logits l_1..l_K: m = max_k l_k, e_k = exp(l_k − m), s = Σ_k e_k,
//   log p_k = l_k − m − log s,  p_k = e_k / s,
//   1 − p_k = o_k / s with o_k = Σ_{j≠k} e_j, computed without cancellation: for k not at the
//   maximum o_k = s − e_k ≥ 1; at the maximum (e_k = 1) o_k = Σ_{e_j<1} e_j + (ties − 1),
//   binary h_k = −[p_k log p_k + (1−p_k) log(1−p_k)],  shannon H = −Σ_k p_k log p_k / log K,
//   with 0·log 0 = 0 (p_k = 0 or o_k below the smallest normal). Logits of ±1e4 stay finite; p = 1
//   exactly gives h = 0. NaN logits give NaN (no fmax/fmin on the value path).
// Memory traffic: none here; callers read each logit once and keep tile sums in registers.
// Limits: K ≥ 2. For float on the host, exp/log are branch-free Cephes polynomials (about 1 ulp)
// so that the CPU's pixel loops vectorise without -ffast-math; on the GPU and for double they are
// the libm/libdevice functions.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "affseg/macros.h"

namespace affseg {

AFFSEG_HD float bits_as_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}

AFFSEG_HD int32_t float_as_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
#endif
}

// exp(x) for x ≤ 0 (the only range the kernels need): 0 below −87.3, NaN stays NaN.
AFFSEG_HD float exp_nonpos(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float xc = x < -87.0f ? -87.0f : x;
  // Round-to-nearest through the 1.5·2^23 shift: no floorf, so SSE2 code vectorises too.
  const float fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (xc - fn * 0.693359375f) + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scaled = p * bits_as_float((static_cast<int32_t>(fn) + 127) << 23);
  return x < -87.0f ? 0.0f : scaled;
#endif
}

// log(x) for normal positive x (callers select 0·log 0 away before it matters); NaN stays NaN.
AFFSEG_HD float log_pos(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  const int32_t bits = float_as_bits(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float mant = bits_as_float((bits & 0x807fffff) | 0x3f000000);  // in [0.5, 1)
  const bool small = mant < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  const float t = small ? mant + mant - 1.0f : mant - 1.0f;
  const float z = t * t;
  float y = 7.0376836292e-2f;
  y = y * t - 1.1514610310e-1f;
  y = y * t + 1.1676998740e-1f;
  y = y * t - 1.2420140846e-1f;
  y = y * t + 1.4249322787e-1f;
  y = y * t - 1.6668057665e-1f;
  y = y * t + 2.0000714765e-1f;
  y = y * t - 2.4999993993e-1f;
  y = y * t + 3.3333331174e-1f;
  y = y * t * z;
  y += e * -2.12194440e-4f;
  y -= 0.5f * z;
  const float res = (t + y) + e * 0.693359375f;
  return x != x ? x : res;
#endif
}

AFFSEG_HD double exp_nonpos(double x) { return exp(x); }
AFFSEG_HD double log_pos(double x) { return log(x); }

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

// NaN-propagating max: a NaN logit must reach every output of its pixel.
template <typename T>
AFFSEG_HD T nan_max(T a, T b) {
  return ((b > a) | (b != b)) ? b : a;  // `|`, not `||`: no branch, so loops vectorise
}

// −q log q for q = o / s with log q = log o − log s; 0 where o is 0 (or subnormal). NaN passes.
template <typename T>
AFFSEG_HD T neg_xlogx_ratio(T o, T inv_s, T log_s) {
  const T q = o * inv_s;
  const T v = -q * (log_pos(o < Tiny<T>::value ? T(1) : o) - log_s);
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
