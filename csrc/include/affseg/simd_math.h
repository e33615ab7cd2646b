// The one exp and log of affseg's kernels: simd::exp and simd::log, float and double.
//
// Why a polynomial on the host: the CPU kernels rely on GCC auto-vectorising `omp simd` loops that
// call these functions. glibc's exp/log are opaque calls (no vector variant without -ffast-math),
// so a loop calling them stays scalar. These are branch-free (selects only) and call nothing, so the
// same source vectorises to SSE2, AVX2+FMA or AVX-512 code in whichever AFFSEG_FOR_EACH_ISA build
// (affseg/cpu_isa.h) inlines it. On the GPU (nvcc device code) they are CUDA's expf/logf/exp/log.
//
// Accuracy on the host, stated as the bounds tests/test_simd_math.py enforces in every ISA build
// this CPU can run, against long-double expl/logl over ~2.5 M inputs per function (measured on
// AVX2 hardware: exp float 1.0e-7, log float 7.9e-8, exp double 1.8e-16, log double 1.1e-16):
//   exp float  : ≤ 2 ulp relative (2.4e-7) for results in [2^-125, FLT_MAX];
//   exp double : ≤ 2 ulp relative (4.5e-16) for results in [2^-1021, DBL_MAX];
//   log float  : ≤ 2 ulp relative (2.4e-7) for every x > 0, subnormals included;
//   log double : std::log (glibc, < 1 ulp), as before this header existed: the double kernels take
//                one log per row or pixel (K per pixel in the binary entropy pass, which so stays
//                scalar for double), never one per pair, so no double log polynomial was written.
// Special values, identical for both types and all ISAs:
//   exp: NaN → NaN; −inf and any x whose result is below 2^-125 (float, x < −86.64) or 2^-1021
//        (double, x < −707.7) → 0, an absolute error below 2·FLT_MIN / 2·DBL_MIN; +inf and
//        overflow (x > ln FLT_MAX / ln DBL_MAX) → +inf.
//   log: NaN → NaN; x < 0 → NaN; ±0 → −inf; +inf → +inf; subnormal x → its exact-range log.
//
// Requirement on the includer: compile with no-trapping-math in effect (`#pragma GCC optimize
// ("no-trapping-math")` before this include, as every csrc/cpu/*.cpp does). Otherwise GCC must
// assume a speculated comparison may trap, keeps the selects as branches and vectorises nothing.
// Results are unchanged either way: only whether FP exception flags may be raised.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "affseg/macros.h"

namespace affseg {
namespace simd {

// Bit casts through memcpy (GCC folds them to register moves; std::bit_cast needs C++20 headers that
// nvcc's host pass may not have).
AFFSEG_HD uint32_t bits_of(float f) {
  uint32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
AFFSEG_HD float float_of(uint32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
AFFSEG_HD uint64_t bits_of(double f) {
  uint64_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
AFFSEG_HD double double_of(uint64_t i) {
  double f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

// exp(x) = 2^n · e^r with n = round(x / ln 2) and |r| ≤ ln2/2 (Cody–Waite: ln 2 split in two so that
// n·ln2_hi is exact). n is rounded by adding 1.5·2^23 (+ the exponent bias − 1): the sum's low
// mantissa bits then hold n + 126, so 2^(n−1) is those bits shifted into the exponent field — no
// float→int conversion, which AVX2 lacks for double — and the result is 2e^r·2^(n−1), which
// reaches FLT_MAX (n = 128) without a special case. Polynomial: Taylor to degree 7, whose remainder
// on |r| ≤ ln2/2 (below 6e-9 relative) is under one ulp; measured faster than Cephes' degree-5
// minimax form here (fewer dependent operations after the reduction).
AFFSEG_HD float exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  constexpr float lo = -86.6433975699931636f;  // ln 2^-125: below it the result flushes to 0
  constexpr float hi = 88.7228391116729996f;   // ln FLT_MAX
  // Both comparisons unconditionally, then selects: one evaluated under a branch would keep GCC from
  // if-converting the caller's loop.
  const bool below = x < lo;
  const bool above = x > hi;
  float xc = below ? lo : x;
  xc = above ? hi : xc;
  constexpr float magic = 12582912.0f + 126.0f;  // 1.5·2^23 + bias − 1
  const float t = xc * 1.44269504088896341f + magic;
  const float n = t - magic;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  // p = 2·e^r: every coefficient doubled, which scales each Horner step exactly, so that
  // p·2^(n−1) needs no extra multiply; n − 1 + 127 stays in 1..254 for every n the clamps allow.
  float p = 2.0f / 5040.0f;
  p = p * r + 2.0f / 720.0f;
  p = p * r + 2.0f / 120.0f;
  p = p * r + 2.0f / 24.0f;
  p = p * r + 2.0f / 6.0f;
  p = p * r + 1.0f;
  p = p * r + 2.0f;
  p = p * r + 2.0f;
  float y = p * float_of(bits_of(t) << 23);
  y = above ? __builtin_inff() : y;
  return below ? 0.0f : y;
#endif
}

// As the float version with 1.5·2^52 and bias 1023 − 1; polynomial: Taylor to degree 13, whose remainder
// on |r| ≤ ln2/2 is below 2e-18 relative, so the error is rounding only.
AFFSEG_HD double exp(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  constexpr double lo = -707.70327135170424;  // ln 2^-1021
  constexpr double hi = 709.78271289338397;   // ln DBL_MAX
  const bool below = x < lo;
  const bool above = x > hi;
  double xc = below ? lo : x;
  xc = above ? hi : xc;
  constexpr double magic = 6755399441055744.0 + 1022.0;  // 1.5·2^52 + bias − 1
  const double t = xc * 1.4426950408889634 + magic;
  const double n = t - magic;
  const double r = (xc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 2.0 / 6227020800.0;  // 2·e^r, as in the float version
  p = p * r + 2.0 / 479001600.0;
  p = p * r + 2.0 / 39916800.0;
  p = p * r + 2.0 / 3628800.0;
  p = p * r + 2.0 / 362880.0;
  p = p * r + 2.0 / 40320.0;
  p = p * r + 2.0 / 5040.0;
  p = p * r + 2.0 / 720.0;
  p = p * r + 2.0 / 120.0;
  p = p * r + 2.0 / 24.0;
  p = p * r + 2.0 / 6.0;
  p = p * r + 1.0;
  p = p * r + 2.0;
  p = p * r + 2.0;
  double y = p * double_of(bits_of(t) << 52);
  y = above ? __builtin_inf() : y;
  return below ? 0.0 : y;
#endif
}

// log(x) = e·ln 2 + log(m) with x = m·2^e, m ∈ [√½, √2) (read from the bits; subnormals are first
// scaled by 2^23), log(1 + t) by Cephes' minimax degree-9 fit, ln 2 split in two as in exp.
AFFSEG_HD float log(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  const bool sub = x < 1.17549435e-38f;  // subnormal, zero or negative
  const float xs = sub ? x * 8388608.0f : x;
  const uint32_t bits = bits_of(xs);
  float e = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xff) - 126) - (sub ? 23.0f : 0.0f);
  const float mant = float_of((bits & 0x007fffffu) | 0x3f000000u);  // in [0.5, 1)
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
  float res = (t + y) + e * 0.693359375f;
  res = x == __builtin_inff() ? x : res;
  res = x == 0.0f ? -__builtin_inff() : res;
  res = x < 0.0f ? __builtin_nanf("") : res;
  return x != x ? x : res;
#endif
}

AFFSEG_HD double log(double x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}

// max that lets a NaN operand win, so a NaN input reaches every statistic derived from the max.
// `|`, not `||`: no short-circuit branch, so loops over it vectorise.
template <typename T>
AFFSEG_HD T nan_max(T a, T b) {
  return ((b > a) | (b != b)) ? b : a;
}

}  // namespace simd
}  // namespace affseg
