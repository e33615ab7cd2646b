// Measures affseg::simd::exp / simd::log (csrc/include/affseg/simd_math.h) in every ISA build this CPU
// can run, the way the kernels use them: inside `omp simd` loops of an AFFSEG_FOR_EACH_ISA build.
// Prints one line per (function, type, ISA):  <fn> <type> <isa> max_rel=<e> bad_special=<count>
// and "skip <isa>" for builds the CPU cannot run. tests/test_simd_math.py compiles, runs and judges it.
#include <cfloat>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "affseg/cpu_isa.h"
#pragma GCC optimize("no-trapping-math")
#include "affseg/simd_math.h"

#define CHECK_LOOPS                                                                                         \
  template <typename T>                                                                                     \
  __attribute__((noinline)) void exp_loop(const T* __restrict__ x, T* __restrict__ y, int64_t n) {          \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) y[i] = affseg::simd::exp(x[i]);                    \
  }                                                                                                         \
  template <typename T>                                                                                     \
  __attribute__((noinline)) void log_loop(const T* __restrict__ x, T* __restrict__ y, int64_t n) {          \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) y[i] = affseg::simd::log(x[i]);                    \
  }                                                                                                         \
  template void exp_loop<float>(const float*, float*, int64_t);                                             \
  template void exp_loop<double>(const double*, double*, int64_t);                                          \
  template void log_loop<float>(const float*, float*, int64_t);                                             \
  template void log_loop<double>(const double*, double*, int64_t);

AFFSEG_FOR_EACH_ISA(CHECK_LOOPS)

template <typename T>
using Loop = void (*)(const T*, T*, int64_t);

template <typename T>
struct Isa {
  const char* name;
  int level;
  Loop<T> exp, log;
};

template <typename T>
std::vector<Isa<T>> isas() {
  return {{"baseline", 0, base::exp_loop<T>, base::log_loop<T>},
          {"avx2", 1, avx2::exp_loop<T>, avx2::log_loop<T>},
          {"avx512", 2, avx512::exp_loop<T>, avx512::log_loop<T>}};
}

bool same(long double got, long double want) {
  return (std::isnan(got) && std::isnan(want)) || got == want;
}

// Inputs: a uniform sweep of the whole finite-result range and beyond, values near 0 (subnormals too),
// then the special values, whose results must be exact.
template <typename T>
void check_exp(const Isa<T>& isa, const std::vector<T>& x, const std::vector<T>& special, const T* special_want) {
  std::vector<T> y(x.size()), ys(special.size());
  isa.exp(x.data(), y.data(), static_cast<int64_t>(x.size()));
  isa.exp(special.data(), ys.data(), static_cast<int64_t>(special.size()));
  // simd_math.h flushes results below 2^-125 (float) / 2^-1021 (double), twice the smallest normal.
  const long double tiny = 2.0L * std::numeric_limits<T>::min();
  long double worst = 0;
  int bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const long double want = std::exp(static_cast<long double>(x[i]));
    if (want > std::numeric_limits<T>::max()) {
      bad += !std::isinf(y[i]);
    } else if (want < tiny) {
      bad += !(std::fabs(static_cast<long double>(y[i]) - want) <= tiny);  // the flush-to-zero contract
    } else {
      const long double rel = std::fabs(static_cast<long double>(y[i]) - want) / want;
      worst = rel > worst || rel != rel ? rel : worst;
    }
  }
  for (size_t i = 0; i < special.size(); ++i) bad += !same(ys[i], special_want[i]);
  std::printf("exp %s %s max_rel=%.3Le bad_special=%d\n", sizeof(T) == 4 ? "float" : "double", isa.name, worst, bad);
}

template <typename T>
void check_log(const Isa<T>& isa, const std::vector<T>& x, const std::vector<T>& special, const T* special_want) {
  std::vector<T> y(x.size()), ys(special.size());
  isa.log(x.data(), y.data(), static_cast<int64_t>(x.size()));
  isa.log(special.data(), ys.data(), static_cast<int64_t>(special.size()));
  long double worst = 0;
  int bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const long double want = std::log(static_cast<long double>(x[i]));
    if (want == 0) {
      bad += y[i] != 0;
      continue;
    }
    const long double rel = std::fabs(static_cast<long double>(y[i]) - want) / std::fabs(want);
    worst = rel > worst || rel != rel ? rel : worst;
  }
  for (size_t i = 0; i < special.size(); ++i) bad += !same(ys[i], special_want[i]);
  std::printf("log %s %s max_rel=%.3Le bad_special=%d\n", sizeof(T) == 4 ? "float" : "double", isa.name, worst, bad);
}

template <typename T>
void run_type(int level, std::mt19937_64& rng) {
  constexpr T inf = std::numeric_limits<T>::infinity();
  constexpr T nan = std::numeric_limits<T>::quiet_NaN();
  constexpr T tiny = std::numeric_limits<T>::min();
  constexpr T denorm = std::numeric_limits<T>::denorm_min();
  const T lo = sizeof(T) == 4 ? T(-110) : T(-760), hi = sizeof(T) == 4 ? T(90) : T(712);
  std::vector<T> ex;
  std::uniform_real_distribution<double> uni(lo, hi);
  for (int i = 0; i < 2000000; ++i) ex.push_back(static_cast<T>(uni(rng)));
  std::uniform_real_distribution<double> mag(-45.0, 0.0);
  for (int i = 0; i < 200000; ++i) {
    const T v = static_cast<T>(std::pow(10.0, mag(rng)));  // |x| from 1e-45: subnormal inputs too
    ex.push_back(v);
    ex.push_back(-v);
  }
  for (T v : {tiny, -tiny, denorm, -denorm, T(1), T(-1), std::log(std::numeric_limits<T>::max()),
              std::log(tiny)}) {
    ex.push_back(v);
  }
  const std::vector<T> exp_special{T(0), T(-0.0), -inf, inf, nan, T(-1e30), T(1e30)};
  const T exp_want[] = {T(1), T(1), T(0), inf, nan, T(0), inf};

  std::vector<T> lx;
  std::uniform_int_distribution<uint64_t> pattern(1, sizeof(T) == 4 ? 0x7f7fffffull : 0x7fefffffffffffffull);
  for (int i = 0; i < 2000000; ++i) {  // every positive finite float/double, subnormals included
    const uint64_t b = pattern(rng);
    T v;
    if constexpr (sizeof(T) == 4) {
      const uint32_t b32 = static_cast<uint32_t>(b);
      std::memcpy(&v, &b32, sizeof v);
    } else {
      std::memcpy(&v, &b, sizeof v);
    }
    lx.push_back(v);
  }
  std::uniform_real_distribution<double> near_one(0.5, 2.0);
  for (int i = 0; i < 500000; ++i) lx.push_back(static_cast<T>(near_one(rng)));
  for (T v : {T(1), tiny, denorm, std::numeric_limits<T>::max()}) lx.push_back(v);
  const std::vector<T> log_special{T(0), T(-0.0), inf, nan, T(-1), -inf, -denorm};
  const T log_want[] = {-inf, -inf, inf, nan, nan, nan, nan};

  for (const Isa<T>& isa : isas<T>()) {
    if (isa.level > level) {
      std::printf("skip %s %s\n", sizeof(T) == 4 ? "float" : "double", isa.name);
      continue;
    }
    check_exp(isa, ex, exp_special, exp_want);
    check_log(isa, lx, log_special, log_want);
  }
}

int main() {
  std::mt19937_64 rng(7);
  // simd_level() also honours AFFSEG_CPU_ISA; here every build the CPU supports is checked.
  int level = 0;
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = 1;
  if (level == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    level = 2;
#endif
  run_type<float>(level, rng);
  run_type<double>(level, rng);
  return 0;
}
