// CPU kernel of the fused patch statistics (SPEC §5): affseg::patch_entropy.
//
// One OpenMP task per (batch, row of tiles). It walks the tile row's pixel rows along the
// contiguous last dim in chunks of kChunk pixels, reads each pixel's K logits once, and computes
// the per-pixel statistics in vectorised loops (arithmetic in affseg/entropy_math.h). Without a
// class mask the chunk's values are added into per-column double sums of the tile row (vertical
// adds only) and reduced across each tile's columns once per tile row; with a mask each pixel adds
// into its class's tile sums. No full-size temporary: per thread, chunk-sized buffers and one
// row of column sums.
// Limits: float32/float64 logits with 2 or 3 spatial dims, K ≥ 1 (the math needs K ≥ 2; K = 1 gives
// 0/0 for the Shannon entropy), class_mask int64; no size limit (int64 indexing, per-thread buffers
// of 4·K·256 values). Hot loops per ISA through affseg/cpu_isa.h; exp/log from affseg/simd_math.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

// Without -fno-trapping-math GCC will not if-convert the float selects of the exp/log polynomials
// and the 0·log 0 guards, so no pixel loop would vectorise. It changes no result, only whether FP
// exception flags may be raised by speculated lanes; scoped to this file's own code.
#pragma GCC optimize("no-trapping-math")
#include "affseg/checks.h"
#include "affseg/cpu_isa.h"
#include "affseg/entropy_math.h"
#include "affseg/simd_math.h"

namespace affseg {
namespace {

constexpr int64_t kChunk = 256;

struct Geometry {
  int64_t B, K, S[3], p[3], P[3];
  int64_t pixels() const { return S[0] * S[1] * S[2]; }
  int64_t tiles() const { return P[0] * P[1] * P[2]; }
};

// The pixel loops of one chunk, one function each and kept out of line: GCC stops if-converting
// (and so vectorising) them once they are inlined into the chunk driver. They are compiled three
// times, for baseline x86-64 (SSE2), AVX2+FMA and AVX-512, and picked at run time: setup.py
// builds for the baseline, and the exp/log polynomials are compute-bound (AVX-512 is about 1.7×
// AVX2 and 3× SSE2 on the binary entropy here).
#define AFFSEG_PIXEL_PASSES                                                                                \
  struct Passes {                                                                                          \
  template <typename T>                                                                                    \
  static __attribute__((noinline)) void max_pass(const T* __restrict__ l, T* __restrict__ m, int64_t n) {  \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) m[i] = simd::nan_max(m[i], l[i]);                  \
  }                                                                                                        \
  template <typename T>                                                                                    \
  static __attribute__((noinline)) void exp_pass(const T* __restrict__ l, const T* __restrict__ m,         \
                                          T* __restrict__ d, T* __restrict__ e, T* __restrict__ s_lt,      \
                                          T* __restrict__ ties, int64_t n) {                               \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {                                                  \
      const T dd = l[i] - m[i];                                                                            \
      const T ee = simd::exp(dd);                                                                          \
      d[i] = dd;                                                                                           \
      e[i] = ee;                                                                                           \
      s_lt[i] += ee < T(1) ? ee : T(0);                                                                    \
      ties[i] += ee == T(1) ? T(1) : T(0);                                                                 \
    }                                                                                                      \
  }                                                                                                        \
  template <typename T>                                                                                    \
  static __attribute__((noinline)) void norm_pass(const T* __restrict__ s_lt, const T* __restrict__ ties,  \
                                           T* __restrict__ inv_s, T* __restrict__ log_s, int64_t n) {      \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {                                                  \
      const T s = s_lt[i] + ties[i];                                                                       \
      inv_s[i] = T(1) / s;                                                                                 \
      log_s[i] = simd::log(s);                                                                             \
    }                                                                                                      \
  }                                                                                                        \
  template <typename T>                                                                                    \
  static __attribute__((noinline)) void binary_pass(const T* __restrict__ d, const T* __restrict__ e,      \
                                             const T* __restrict__ s_lt, const T* __restrict__ ties,       \
                                             const T* __restrict__ inv_s, const T* __restrict__ log_s,     \
                                             T* __restrict__ p, T* __restrict__ h, int64_t n) {            \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {                                                  \
      p[i] = e[i] * inv_s[i];                                                                              \
      const T o = others_sum(e[i], s_lt[i] + ties[i], s_lt[i], ties[i]);                                   \
      h[i] = neg_plogp(e[i], d[i], inv_s[i], log_s[i]) + neg_xlogx_ratio(o, inv_s[i], log_s[i]);           \
    }                                                                                                      \
  }                                                                                                        \
  template <typename T>                                                                                    \
  static __attribute__((noinline)) void shannon_pass(const T* __restrict__ d, const T* __restrict__ e,     \
                                              const T* __restrict__ inv_s, const T* __restrict__ log_s,    \
                                              T* __restrict__ p, T* __restrict__ h, int64_t n) {           \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {                                                  \
      p[i] = e[i] * inv_s[i];                                                                              \
      h[i] += neg_plogp(e[i], d[i], inv_s[i], log_s[i]);                                                   \
    }                                                                                                      \
  }                                                                                                        \
  template <typename T>                                                                                    \
  static __attribute__((noinline)) void accumulate_pass(const T* __restrict__ v, double* __restrict__ acc, \
                                                 int64_t n) {                                              \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<double>(v[i]);               \
  }                                                                                                        \
  };

AFFSEG_FOR_EACH_ISA(AFFSEG_PIXEL_PASSES)
#undef AFFSEG_PIXEL_PASSES

// Per-pixel statistics of one chunk of n ≤ kChunk pixels: h (K rows, or 1 row of normalised
// Shannon entropy) and p (K rows). `row` points at class 0 of the chunk's first pixel.
template <typename T>
struct ChunkStats {
  std::vector<T> d, e, h, p, m, s_lt, ties, inv_s, log_s;
  explicit ChunkStats(int64_t K)
      : d(K * kChunk), e(K * kChunk), h(K * kChunk), p(K * kChunk), m(kChunk), s_lt(kChunk),
        ties(kChunk), inv_s(kChunk), log_s(kChunk) {}

  template <typename P>
  void compute(const T* row, int64_t stride_k, int64_t K, int64_t n, bool shannon, T inv_log_k) {
    std::copy(row, row + n, m.begin());
    for (int64_t k = 1; k < K; ++k) P::max_pass(row + k * stride_k, m.data(), n);
    std::fill(s_lt.begin(), s_lt.begin() + n, T(0));
    std::fill(ties.begin(), ties.begin() + n, T(0));
    for (int64_t k = 0; k < K; ++k) {
      P::exp_pass(row + k * stride_k, m.data(), d.data() + k * kChunk, e.data() + k * kChunk, s_lt.data(),
                  ties.data(), n);
    }
    P::norm_pass(s_lt.data(), ties.data(), inv_s.data(), log_s.data(), n);
    if (!shannon && K == 2) {
      // Two classes: 1 − p_0 = p_1, so both binary entropies equal −Σ_k p_k log p_k, with no log(o_k).
      std::fill(h.begin(), h.begin() + n, T(0));
      for (int64_t k = 0; k < 2; ++k) {
        P::shannon_pass(d.data() + k * kChunk, e.data() + k * kChunk, inv_s.data(), log_s.data(),
                        p.data() + k * kChunk, h.data(), n);
      }
      std::copy(h.begin(), h.begin() + n, h.begin() + kChunk);
      return;
    }
    if (!shannon) {
      for (int64_t k = 0; k < K; ++k) {
        P::binary_pass(d.data() + k * kChunk, e.data() + k * kChunk, s_lt.data(), ties.data(), inv_s.data(),
                       log_s.data(), p.data() + k * kChunk, h.data() + k * kChunk, n);
      }
      return;
    }
    std::fill(h.begin(), h.begin() + n, T(0));
    for (int64_t k = 0; k < K; ++k) {
      P::shannon_pass(d.data() + k * kChunk, e.data() + k * kChunk, inv_s.data(), log_s.data(),
                      p.data() + k * kChunk, h.data(), n);
    }
    for (int64_t i = 0; i < n; ++i) h[i] *= inv_log_k;
  }
};

template <typename T, typename P>
void patch_entropy_kernel(const T* logits, const int64_t* mask, T* ent, T* conf, int64_t* cnt,
                          const Geometry& g, bool shannon) {
  const int64_t K = g.K, N = g.pixels(), S1 = g.S[1], S2 = g.S[2];
  const int64_t k_out = (shannon && mask == nullptr) ? 1 : K;
  const T inv_log_k = T(1) / std::log(T(K));
  const int64_t tile_rows = g.B * g.P[0] * g.P[1];
#pragma omp parallel
  {
    ChunkStats<T> cs(K);
    // Tile-row accumulators, [tile x][class]: sums of h and p, and pixel counts.
    std::vector<double> acc_h(g.P[2] * K), acc_p(g.P[2] * K), acc_n(g.P[2] * K);
    // Without a mask, per-column sums over the tile row's pixel rows, [class][x]: vertical adds
    // only, reduced across each tile's columns once per tile row (not once per pixel row).
    std::vector<double> col_h(mask == nullptr ? k_out * S2 : 0), col_p(mask == nullptr ? K * S2 : 0);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < tile_rows; ++r) {
      const int64_t b = r / (g.P[0] * g.P[1]);
      const int64_t t0 = (r / g.P[1]) % g.P[0];
      const int64_t t1 = r % g.P[1];
      std::fill(acc_h.begin(), acc_h.end(), 0.0);
      std::fill(acc_p.begin(), acc_p.end(), 0.0);
      std::fill(acc_n.begin(), acc_n.end(), 0.0);
      std::fill(col_h.begin(), col_h.end(), 0.0);
      std::fill(col_p.begin(), col_p.end(), 0.0);
      const int64_t z1 = std::min(g.S[0], (t0 + 1) * g.p[0]);
      const int64_t y1 = std::min(S1, (t1 + 1) * g.p[1]);
      for (int64_t z = t0 * g.p[0]; z < z1; ++z) {
        for (int64_t y = t1 * g.p[1]; y < y1; ++y) {
          const int64_t pix_row = (z * S1 + y) * S2;
          for (int64_t x0 = 0; x0 < S2; x0 += kChunk) {
            const int64_t n = std::min(kChunk, S2 - x0);
            cs.template compute<P>(logits + b * K * N + pix_row + x0, N, K, n, shannon, inv_log_k);
            if (mask == nullptr) {
              for (int64_t k = 0; k < K; ++k) {
                P::accumulate_pass(cs.p.data() + k * kChunk, col_p.data() + k * S2 + x0, n);
                if (k < k_out) P::accumulate_pass(cs.h.data() + k * kChunk, col_h.data() + k * S2 + x0, n);
              }
            } else {
              const int64_t* mrow = mask + b * N + pix_row + x0;
              for (int64_t i = 0; i < n; ++i) {
                const int64_t c = mrow[i];
                if (c < 0 || c >= K) continue;
                const int64_t slot = ((x0 + i) / g.p[2]) * K + c;
                acc_h[slot] += cs.h[(shannon ? 0 : c * kChunk) + i];
                acc_p[slot] += cs.p[c * kChunk + i];
                acc_n[slot] += 1.0;
              }
            }
          }
        }
      }
      if (mask == nullptr) {
        const int64_t rows = (z1 - t0 * g.p[0]) * (y1 - t1 * g.p[1]);
        for (int64_t tx = 0; tx < g.P[2]; ++tx) {
          const int64_t a = tx * g.p[2], e = std::min(S2, a + g.p[2]);
          for (int64_t k = 0; k < K; ++k) {
            for (int64_t x = a; x < e; ++x) acc_p[tx * K + k] += col_p[k * S2 + x];
            if (k < k_out) {
              for (int64_t x = a; x < e; ++x) acc_h[tx * K + k] += col_h[k * S2 + x];
            }
          }
          acc_n[tx * K] = static_cast<double>(rows * (e - a));
        }
      }
      for (int64_t tx = 0; tx < g.P[2]; ++tx) {
        for (int64_t k = 0; k < K; ++k) {
          const double n = acc_n[tx * K + (mask == nullptr ? 0 : k)];
          const double inv = n > 0 ? 1.0 / n : 0.0;
          const int64_t out = (((b * K + k) * g.P[0] + t0) * g.P[1] + t1) * g.P[2] + tx;
          conf[out] = static_cast<T>(acc_p[tx * K + k] * inv);
          cnt[out] = static_cast<int64_t>(n);
          if (k < k_out) {
            const int64_t out_h = (((b * k_out + k) * g.P[0] + t0) * g.P[1] + t1) * g.P[2] + tx;
            ent[out_h] = static_cast<T>(acc_h[tx * K + k] * inv);
          }
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_entropy_cpu(const at::Tensor& logits,
                                                                   at::IntArrayRef patch_size, bool shannon,
                                                                   const c10::optional<at::Tensor>& class_mask) {
  AFFSEG_CHECK_FLOAT(logits);
  AFFSEG_CHECK_DEVICE(logits, at::kCPU);
  TORCH_CHECK(logits.dim() == 4 || logits.dim() == 5, "logits must be (B, K, *S) with 2 or 3 spatial dims");
  const int64_t nd = logits.dim() - 2;
  TORCH_CHECK(static_cast<int64_t>(patch_size.size()) == nd, "patch_size needs one entry per spatial dim");
  TORCH_CHECK(logits.size(1) >= 1, "logits need at least one class");
  Geometry g{};
  g.B = logits.size(0);
  g.K = logits.size(1);
  for (int64_t d = 0; d < 3; ++d) {
    const int64_t src = d - (3 - nd);
    g.S[d] = src < 0 ? 1 : logits.size(2 + src);
    g.p[d] = src < 0 ? 1 : patch_size[src];
    TORCH_CHECK(g.p[d] > 0, "patch_size entries must be positive");
    g.P[d] = (g.S[d] + g.p[d] - 1) / g.p[d];
  }
  const bool has_mask = class_mask.has_value() && class_mask->defined();
  if (has_mask) {
    TORCH_CHECK(class_mask->scalar_type() == at::kLong, "class_mask must be int64");
    AFFSEG_CHECK_DEVICE(*class_mask, at::kCPU);
    std::vector<int64_t> want{g.B};
    for (int64_t d = 0; d < nd; ++d) want.push_back(logits.size(2 + d));
    TORCH_CHECK(class_mask->sizes() == at::IntArrayRef(want), "class_mask must have shape (B, *S)");
  }
  const at::Tensor x = logits.contiguous();
  const at::Tensor mask = has_mask ? class_mask->contiguous() : at::Tensor();
  std::vector<int64_t> grid;
  for (int64_t d = 3 - nd; d < 3; ++d) grid.push_back(g.P[d]);
  std::vector<int64_t> shape_k{g.B, g.K}, shape_h{g.B, (shannon && !has_mask) ? 1 : g.K};
  shape_k.insert(shape_k.end(), grid.begin(), grid.end());
  shape_h.insert(shape_h.end(), grid.begin(), grid.end());
  at::Tensor ent = at::empty(shape_h, x.options());
  at::Tensor conf = at::empty(shape_k, x.options());
  at::Tensor cnt = at::empty(shape_k, x.options().dtype(at::kLong));
  if (conf.numel() == 0) return {ent, conf, cnt};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "patch_entropy_cpu", [&] {
    AFFSEG_DISPATCH_ISA(patch_entropy_kernel<scalar_t, isa::Passes>(
        x.data_ptr<scalar_t>(), has_mask ? mask.data_ptr<int64_t>() : nullptr, ent.data_ptr<scalar_t>(),
        conf.data_ptr<scalar_t>(), cnt.data_ptr<int64_t>(), g, shannon));
  });
  return {ent, conf, cnt};
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CPU, m) { m.impl("patch_entropy", &affseg::patch_entropy_cpu); }
