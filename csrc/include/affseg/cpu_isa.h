// Run-time ISA dispatch for the CPU kernels: the one idiom every csrc/cpu/*.cpp uses.
//
// Why: setup.py builds for baseline x86-64 (SSE2) so one wheel runs everywhere, yet the exp/log
// and dot-product loops are compute-bound and 2-3× faster with wider vectors. So each file writes
// its hot loops once, as a macro BODY, and
//   AFFSEG_FOR_EACH_ISA(BODY)
// compiles BODY three times in one translation unit: in namespaces `base` (SSE2), `avx2` (AVX2+FMA)
// and `avx512` (AVX-512 F/VL/DQ/BW), each holding `constexpr int kIsaLevel` (0, 1, 2) for code
// that must differ (FMA builtins, vector widths). Helpers defined outside BODY are inlined into each
// build (a default-target function may inline into a wider-target caller). At the call site
//   AFFSEG_DISPATCH_ISA(run = &isa::kernel<T>);
// runs the statement once with `isa` naming the build simd_level() selected. Off x86-64 only
// `base` exists and the other two names alias it.
//
// AFFSEG_CPU_ISA caps the choice so the tests can run every build on one machine:
//   unset, "" or "auto": the widest build the CPU supports;  "avx512", "avx2", "baseline": at most
//   that one (a cap above what the CPU supports selects what it supports). Any other value is an
//   error at the first kernel call (std::invalid_argument naming the accepted values), never ignored.
// The choice is made once per process; torch.ops.affseg._cpu_isa() reports it.
#pragma once

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <strings.h>

namespace affseg {
namespace cpu {

constexpr int kBaseline = 0, kAvx2 = 1, kAvx512 = 2;

inline const char* isa_name(int level) {
  return level == kAvx512 ? "avx512" : level == kAvx2 ? "avx2" : "baseline";
}

// Widest build this CPU can run.
inline int supported_level() {
#if defined(__x86_64__)
  int level = kBaseline;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = kAvx2;
  if (level == kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw")) {
    level = kAvx512;
  }
  return level;
#else
  return kBaseline;
#endif
}

// The level selected for a CPU supporting `supported` under AFFSEG_CPU_ISA=`cap` (nullptr: unset);
// -1 when `cap` is not an accepted value.
inline int capped_level(int supported, const char* cap) {
  if (cap == nullptr || cap[0] == '\0' || strcasecmp(cap, "auto") == 0) return supported;
  int limit = -1;
  if (strcasecmp(cap, "baseline") == 0) limit = kBaseline;
  if (strcasecmp(cap, "avx2") == 0) limit = kAvx2;
  if (strcasecmp(cap, "avx512") == 0) limit = kAvx512;
  if (limit < 0) return -1;
  return limit < supported ? limit : supported;
}

// The build every CPU kernel runs, fixed at the first call. Throws std::invalid_argument (torch
// turns it into a Python exception) while AFFSEG_CPU_ISA holds an unknown value.
inline int simd_level() {
  static const char* const cap = std::getenv("AFFSEG_CPU_ISA");
  static const int level = capped_level(supported_level(), cap);
  if (level < 0) {
    throw std::invalid_argument(std::string("AFFSEG_CPU_ISA='") + cap +
                                "' is not a known CPU instruction set; use one of: auto, avx512, avx2, baseline "
                                "(or leave it unset for the widest the CPU supports)");
  }
  return level;
}

}  // namespace cpu
}  // namespace affseg

#if defined(__x86_64__)
#define AFFSEG_FOR_EACH_ISA(BODY)                                              \
  namespace base {                                                             \
  constexpr int kIsaLevel = ::affseg::cpu::kBaseline;                          \
  BODY                                                                         \
  }                                                                            \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")")              \
  namespace avx2 {                                                             \
  constexpr int kIsaLevel = ::affseg::cpu::kAvx2;                              \
  BODY                                                                         \
  }                                                                            \
  _Pragma("GCC pop_options") _Pragma("GCC push_options")                       \
  _Pragma("GCC target(\"avx512f,avx512vl,avx512dq,avx512bw,avx2,fma\")")       \
  namespace avx512 {                                                           \
  constexpr int kIsaLevel = ::affseg::cpu::kAvx512;                            \
  BODY                                                                         \
  }                                                                            \
  _Pragma("GCC pop_options")
#else
#define AFFSEG_FOR_EACH_ISA(BODY)                     \
  namespace base {                                    \
  constexpr int kIsaLevel = ::affseg::cpu::kBaseline; \
  BODY                                                \
  }                                                   \
  namespace avx2 = base;                              \
  namespace avx512 = base;
#endif

// Runs the statement once (commas allowed), with the namespace alias `isa` bound to the build simd_level() selected.
#define AFFSEG_DISPATCH_ISA(...)                 \
  do {                                           \
    switch (::affseg::cpu::simd_level()) {       \
      case ::affseg::cpu::kAvx512: {             \
        namespace isa = avx512;                  \
        __VA_ARGS__;                             \
        break;                                   \
      }                                          \
      case ::affseg::cpu::kAvx2: {               \
        namespace isa = avx2;                    \
        __VA_ARGS__;                             \
        break;                                   \
      }                                          \
      default: {                                 \
        namespace isa = base;                    \
        __VA_ARGS__;                             \
        break;                                   \
      }                                          \
    }                                            \
  } while (0)
