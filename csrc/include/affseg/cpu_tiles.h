// The register-blocked dot-product micro-kernel of the CPU kernels (pdcr.cpp, supcon.cpp): one tile
// of a matrix product, out (=/+=) A·Bᵗ-panel, kept in registers while the depth runs.
//
// Why one header: the PDCR and SupCon sweeps (and their gradient products) are the same small
// matrix products followed by different epilogues; one micro-kernel, one padding rule.
// Shape: kMicroRows rows × micro_cols<T>(isa) columns per register block: two 256-bit registers per
// row up to AVX2, two 512-bit ones with AVX-512. 4 rows × 2 registers = 8 independent FMA chains,
// what two FMA ports of latency 4 need; one zmm per row would leave the AVX-512 build latency-bound
// at half its rate. Per depth step: 2 vector loads + 4 broadcasts for 8 FMAs, all from L1 (a B strip
// is depth × 2 registers, reused by every row block of the tile).
// FLOPs: 2·rows·depth·cols per call; bytes: the A rows and the B strips, from cache.
// Limits: rows a multiple of kMicroRows, cols a multiple of kPad (the callers pad panels and tiles
// with zeros); any depth. Include after `#pragma GCC optimize("no-trapping-math")`, inside an
// AFFSEG_FOR_EACH_ISA build (affseg/cpu_isa.h): the functions are forced inline into its target.
#pragma once
#include <cstdint>

#include "affseg/cpu_isa.h"

#ifndef AFFSEG_ALWAYS_INLINE
#define AFFSEG_ALWAYS_INLINE inline __attribute__((always_inline))
#endif

namespace affseg {
namespace cpu {
namespace tiles {

// One 64-byte line of T; panels and tiles are padded to kPad, a multiple of every build's width, so
// that one layout serves all builds.
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);
template <typename T>
constexpr int64_t kPad = 2 * kLanes<T>;
template <typename T>
constexpr int64_t micro_cols(int isa) {
  return isa >= kAvx512 ? 2 * kLanes<T> : kLanes<T>;
}
constexpr int64_t kMicroRows = 4;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// A row stride for n items of T: n rounded up to kPad (an even number of 64-byte lines) plus one
// line, so an odd number of lines: the rows a micro-kernel reads one after another (the depth
// steps of a c-major panel) then fall into different L1 sets, where a power-of-two stride
// (N = 4096, 8192) would put them all on one.
template <typename T>
int64_t odd_line_stride(int64_t n) {
  return round_up(n, kPad<T>) + kLanes<T>;
}

// A builtin rather than std::fma: the <cmath> function is compiled without the includer's optimize
// pragma, so GCC would not inline it into the loops.
template <typename T, bool kFma>
AFFSEG_ALWAYS_INLINE T madd(T a, T b, T c) {
  if constexpr (!kFma) {
    return a * b + c;
  } else if constexpr (sizeof(T) == 4) {
    return __builtin_fmaf(a, b, c);
  } else {
    return __builtin_fma(a, b, c);
  }
}

// out[r][j] (= or +=) Σ_k a[r][k]·bt[k·ldb + j] for r < rows (a multiple of kMicroRows) and
// j < cols (a multiple of kPad). 4 rows × micro_cols accumulators stay in registers while k runs.
template <typename T, int kIsa, bool kAccumulate>
AFFSEG_ALWAYS_INLINE void tile_product(const T* const* a, int64_t rows, int64_t depth, const T* bt, int64_t ldb,
                                       int64_t cols, T* out, int64_t ldo) {
  constexpr bool kFma = kIsa >= kAvx2;
  constexpr int64_t J = micro_cols<T>(kIsa);
  for (int64_t j0 = 0; j0 < cols; j0 += J) {
    for (int64_t r0 = 0; r0 < rows; r0 += kMicroRows) {
      const T* __restrict__ a0 = a[r0];
      const T* __restrict__ a1 = a[r0 + 1];
      const T* __restrict__ a2 = a[r0 + 2];
      const T* __restrict__ a3 = a[r0 + 3];
      T* o = out + r0 * ldo + j0;
      T c0[J], c1[J], c2[J], c3[J];
      for (int64_t jj = 0; jj < J; ++jj) {
        c0[jj] = kAccumulate ? o[jj] : T(0);
        c1[jj] = kAccumulate ? o[ldo + jj] : T(0);
        c2[jj] = kAccumulate ? o[2 * ldo + jj] : T(0);
        c3[jj] = kAccumulate ? o[3 * ldo + jj] : T(0);
      }
      for (int64_t k = 0; k < depth; ++k) {
        const T* __restrict__ b = bt + k * ldb + j0;
        const T x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k];
        for (int64_t jj = 0; jj < J; ++jj) {
          c0[jj] = madd<T, kFma>(x0, b[jj], c0[jj]);
          c1[jj] = madd<T, kFma>(x1, b[jj], c1[jj]);
          c2[jj] = madd<T, kFma>(x2, b[jj], c2[jj]);
          c3[jj] = madd<T, kFma>(x3, b[jj], c3[jj]);
        }
      }
      for (int64_t jj = 0; jj < J; ++jj) {
        o[jj] = c0[jj];
        o[ldo + jj] = c1[jj];
        o[2 * ldo + jj] = c2[jj];
        o[3 * ldo + jj] = c3[jj];
      }
    }
  }
}

}  // namespace tiles
}  // namespace cpu
}  // namespace affseg
