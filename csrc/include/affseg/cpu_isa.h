// Run-time ISA dispatch for the CPU kernels.
//
// The hot pixel loops are compiled several times in one translation unit: for baseline x86-64
// (SSE2), AVX2+FMA and AVX-512 (F/VL/DQ/BW), through AFFSEG_FOR_EACH_ISA(BODY), which defines BODY
// in namespaces `base`, `avx2` and `avx512`. simd_level() picks one at run time, so one wheel runs
// everywhere and still uses the widest vectors the CPU has. Off x86-64 only `base` exists and the
// other two names alias it.
#pragma once

#include <cstdlib>
#include <cstring>

namespace affseg {
namespace cpu {

// 0: baseline, 1: AVX2+FMA, 2: AVX-512, as the CPU supports. AFFSEG_CPU_ISA=baseline|avx2 caps
// it, so the tests can run every compiled path on one machine.
inline int simd_level() {
#if defined(__x86_64__)
  int level = 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = 1;
  if (level == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw")) {
    level = 2;
  }
  const char* cap = std::getenv("AFFSEG_CPU_ISA");
  if (cap != nullptr && std::strcmp(cap, "baseline") == 0) level = 0;
  if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && level > 1) level = 1;
  return level;
#else
  return 0;
#endif
}

}  // namespace cpu
}  // namespace affseg

#if defined(__x86_64__)
#define AFFSEG_FOR_EACH_ISA(BODY)                                              \
  namespace base {                                                             \
  BODY                                                                         \
  }                                                                            \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")")              \
  namespace avx2 {                                                             \
  BODY                                                                         \
  }                                                                            \
  _Pragma("GCC pop_options") _Pragma("GCC push_options")                       \
  _Pragma("GCC target(\"avx512f,avx512vl,avx512dq,avx512bw,avx2,fma\")")       \
  namespace avx512 {                                                           \
  BODY                                                                         \
  }                                                                            \
  _Pragma("GCC pop_options")
#else
#define AFFSEG_FOR_EACH_ISA(BODY) \
  namespace base {                \
  BODY                            \
  }                               \
  namespace avx2 = base;          \
  namespace avx512 = base;
#endif
