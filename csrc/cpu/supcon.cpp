// CPU kernels for the soft SupCon denominator (SPEC §4): cos_lse_fwd / cos_lse_bwd.
//
// Layout: each batch item's unit rows are copied once, zero-padded to Npad rows (a multiple of the
// dot micro-tile) and Cpad channels, both row-major (Npad, Cpad) for the backward's Σ w_jk f_k and
// transposed (Cpad, Npad) so the dot micro-kernel's inner loop runs over contiguous columns. A
// thread owns kRows rows and sweeps all columns in tiles of kTile: dot products in a register-blocked
// kRows × 2-vector micro-kernel (GCC vector extensions), then an `omp simd` pass over the tile for
// the online log-sum-exp (forward) or the pair weights (backward). The loops are compiled per ISA
// (affseg/cpu_isa.h): 16-byte vectors on the SSE2 baseline the extension is built for, 32-byte ones
// from AVX2 up (2-3× faster), picked at run time. Nothing of size N² is stored; extra memory is
// the two padded copies, O(N·C). Per-element math: supcon_math.h.
// Limits: float32/float64 unit rows f (B, N, C), valid (B, N) bool; no size limit (int64 indexing).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "affseg/checks.h"
#include "affseg/glue_checks.h"
#include "affseg/cpu_isa.h"

// The kernels below (and the math header they inline) never read floating-point exception flags, so
// comparisons may be evaluated speculatively: without this GCC keeps the selects in simd::exp and
// pair_weight as branches and the `omp simd` loops over a tile stay scalar. Functions defined before
// the pragma (std::max, ...) are not inlined into the ones after it, so the hot loops avoid them.
#pragma GCC optimize("no-trapping-math")
// 32-byte vector helpers are always inlined into AVX2 code, so the note that passing them by value
// would change the ABI without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#include "affseg/simd_math.h"
#include "affseg/supcon_math.h"

namespace affseg {
namespace {

constexpr int kRows = 4;        // rows per task and per micro-kernel
constexpr int64_t kTile = 256;  // columns per tile: kRows · kTile logits stay in L1
constexpr int64_t kPadBytes = 64;  // rows and channels are padded to two of the widest (AVX2) vectors

#define AFFSEG_ALWAYS_INLINE __attribute__((always_inline)) inline

// VB-byte vectors of T (GCC vector extensions): 16 bytes on the SSE2 baseline, 32 bytes in the AVX2
// builds (affseg/cpu_isa.h), whose target reaches these helpers through forced inlining.
template <typename T, int VB>
struct Vec {
  typedef T type __attribute__((vector_size(VB)));
};

template <typename T>
int64_t padded(int64_t n) {
  constexpr int64_t step = kPadBytes / sizeof(T);
  return (n + step - 1) / step * step;
}

template <typename V, typename T>
AFFSEG_ALWAYS_INLINE V load_vec(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
AFFSEG_ALWAYS_INLINE void store_vec(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// Unit rows of one call, zero-padded: rows (B, Npad, Cpad) and transposed (B, Cpad, Npad).
struct Padded {
  at::Tensor rows, transposed;
  int64_t npad, cpad;
};

template <typename T>
Padded pad_features(const at::Tensor& f) {
  const int64_t B = f.size(0), N = f.size(1), C = f.size(2);
  Padded p;
  p.npad = padded<T>(N);
  p.cpad = padded<T>(C);
  p.rows = at::zeros({B, p.npad, p.cpad}, f.options());
  p.rows.narrow(1, 0, N).narrow(2, 0, C).copy_(f);
  p.transposed = p.rows.transpose(1, 2).contiguous();
  return p;
}

template <typename T>
struct Args {
  const T* rows;  // padded (B, Npad, Cpad)
  const T* ft;    // padded (B, Cpad, Npad)
  const bool* valid;
  int64_t B, N, C, npad, cpad;
  T inv_tau;
};

// dots[r][j] = f_{row r} · f_{j0 + j} for j < width (a multiple of two vectors).
template <typename T, int VB>
AFFSEG_ALWAYS_INLINE void dot_tile(const T* const rows[kRows], const T* ft, int64_t npad, int64_t cpad, int64_t j0,
                                   int64_t width, T (*dots)[kTile]) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t L = VB / sizeof(T);
  for (int64_t j = 0; j < width; j += 2 * L) {
    V acc[kRows][2] = {};
    const T* col = ft + j0 + j;
    for (int64_t c = 0; c < cpad; ++c) {
      const V b0 = load_vec<V>(col + c * npad);
      const V b1 = load_vec<V>(col + c * npad + L);
      for (int r = 0; r < kRows; ++r) {
        const T a = rows[r][c];
        acc[r][0] += a * b0;
        acc[r][1] += a * b1;
      }
    }
    for (int r = 0; r < kRows; ++r) {
      store_vec(dots[r] + j, acc[r][0]);
      store_vec(dots[r] + j + L, acc[r][1]);
    }
  }
}

// Forward for rows i0 .. i0 + kRows - 1 of item b: online LSE over column tiles.
template <typename T, int VB>
AFFSEG_ALWAYS_INLINE void forward_block(const Args<T>& a, int64_t b, int64_t i0, T* lse) {
  const T neg_inf = supcon::neg_inf<T>();
  alignas(64) T dots[kRows][kTile];
  const bool* vb = a.valid + b * a.N;
  const T* ft = a.ft + b * a.cpad * a.npad;
  const T* rows[kRows];
  for (int r = 0; r < kRows; ++r) rows[r] = a.rows + (b * a.npad + std::min(i0 + r, a.N - 1)) * a.cpad;
  T m[kRows], s[kRows];
  bool nan[kRows];
  for (int r = 0; r < kRows; ++r) {
    m[r] = neg_inf;
    s[r] = T(0);
    nan[r] = false;
  }
  for (int64_t j0 = 0; j0 < a.N; j0 += kTile) {
    const int64_t width = std::min(kTile, a.npad - j0);
    const int64_t live = std::min(kTile, a.N - j0);
    dot_tile<T, VB>(rows, ft, a.npad, a.cpad, j0, width, dots);
    for (int r = 0; r < kRows; ++r) {
      T* x = dots[r];
      const int64_t diag = i0 + r - j0;
      T tile_max = neg_inf;
      bool tile_nan = false;
#pragma omp simd reduction(max : tile_max) reduction(| : tile_nan)
      for (int64_t j = 0; j < live; ++j) {
        const T v = (vb[j0 + j] && j != diag) ? x[j] * a.inv_tau : neg_inf;
        tile_nan |= v != v;
        tile_max = v > tile_max ? v : tile_max;  // not std::max: see the optimize pragma
        x[j] = v;
      }
      nan[r] = nan[r] || tile_nan;
      if (tile_max == neg_inf) continue;
      const T new_max = tile_max > m[r] ? tile_max : m[r];
      T sum = T(0);
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < live; ++j) sum += simd::exp(x[j] - new_max);
      s[r] = s[r] * supcon::rescale(m[r], new_max) + sum;
      m[r] = new_max;
    }
  }
  for (int r = 0; r < kRows && i0 + r < a.N; ++r) {
    lse[b * a.N + i0 + r] = nan[r] ? std::numeric_limits<T>::quiet_NaN() : supcon::lse_finish(m[r], s[r]);
  }
}

// Backward for rows i0 .. i0 + kRows - 1 of item b: grad f_j = inv_tau Σ_k w_jk f_k, one row sweep.
// coef[k] = a_k (supcon::row_coefficient) and colmask[k] = valid_k as 0/1, precomputed per call (a
// bool load would keep the weight loop scalar).
template <typename T, int VB>
AFFSEG_ALWAYS_INLINE void backward_block(const Args<T>& a, int64_t b, int64_t i0, const T* coef, const T* colmask,
                                         const T* lse, T* accum, T* grad_f) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t L = VB / sizeof(T);
  alignas(64) T w[kRows][kTile];
  const bool* vb = a.valid + b * a.N;
  const T* cb = coef + b * a.N;
  const T* mb = colmask + b * a.N;
  const T* lb = lse + b * a.N;
  const T* ft = a.ft + b * a.cpad * a.npad;
  const T* fr = a.rows + b * a.npad * a.cpad;
  const T* rows[kRows];
  T a_row[kRows], l_row[kRows];
  bool v_row[kRows];
  bool any = false;
  for (int r = 0; r < kRows; ++r) {
    const int64_t i = std::min(i0 + r, a.N - 1);
    const bool live = i0 + r < a.N;
    rows[r] = fr + i * a.cpad;
    a_row[r] = live ? cb[i] : T(0);
    l_row[r] = lb[i];
    v_row[r] = live && vb[i];
    any = any || a_row[r] != T(0) || v_row[r];
  }
  std::fill(accum, accum + kRows * a.cpad, T(0));
  for (int64_t j0 = 0; any && j0 < a.N; j0 += kTile) {
    const int64_t width = std::min(kTile, a.npad - j0);
    const int64_t live = std::min(kTile, a.N - j0);
    dot_tile<T, VB>(rows, ft, a.npad, a.cpad, j0, width, w);
    for (int r = 0; r < kRows; ++r) {
      T* x = w[r];
      const int64_t diag = i0 + r - j0;
      const T a_j = a_row[r], l_j = l_row[r];
      const bool v_j = v_row[r];
#pragma omp simd
      for (int64_t j = 0; j < live; ++j) {
        const T wt = supcon::pair_weight(x[j] * a.inv_tau, a_j, l_j, mb[j0 + j] != T(0), cb[j0 + j], lb[j0 + j], v_j);
        x[j] = j == diag ? T(0) : wt;
      }
      for (int64_t j = live; j < width; ++j) x[j] = T(0);
    }
    // accum[r][:] += Σ_j w[r][j] f_{j0+j}: a kRows × 2-vector register block per channel pair.
    for (int64_t c = 0; c < a.cpad; c += 2 * L) {
      V s[kRows][2];
      for (int r = 0; r < kRows; ++r) {
        s[r][0] = load_vec<V>(accum + r * a.cpad + c);
        s[r][1] = load_vec<V>(accum + r * a.cpad + c + L);
      }
      const T* col = fr + j0 * a.cpad + c;
      for (int64_t j = 0; j < width; ++j) {
        const V b0 = load_vec<V>(col + j * a.cpad);
        const V b1 = load_vec<V>(col + j * a.cpad + L);
        for (int r = 0; r < kRows; ++r) {
          s[r][0] += w[r][j] * b0;
          s[r][1] += w[r][j] * b1;
        }
      }
      for (int r = 0; r < kRows; ++r) {
        store_vec(accum + r * a.cpad + c, s[r][0]);
        store_vec(accum + r * a.cpad + c + L, s[r][1]);
      }
    }
  }
  for (int r = 0; r < kRows && i0 + r < a.N; ++r) {
    T* g = grad_f + (b * a.N + i0 + r) * a.C;
    for (int64_t c = 0; c < a.C; ++c) g[c] = a.inv_tau * accum[r * a.cpad + c];
  }
}

// The OpenMP loops over (item, row block), one build per ISA (affseg/cpu_isa.h). The parallel region
// is outlined from these functions, so it inherits their target; the block helpers are inlined into
// it. Vectors: 16 bytes on the baseline, 32 bytes from AVX2 up (64-byte vectors would need 128-byte
// padding of rows and channels, and the kernel is not measured on an AVX-512 machine yet).
#define AFFSEG_SUPCON_LOOPS                                                                                   \
  constexpr int kVecBytes = kIsaLevel == ::affseg::cpu::kBaseline ? 16 : 32;                                  \
  struct Loops {                                                                                              \
    template <typename T>                                                                                     \
    static void forward(const Args<T>& a, T* lse) {                                                           \
      const int64_t blocks = (a.N + kRows - 1) / kRows;                                                       \
      _Pragma("omp parallel for collapse(2) schedule(static)") for (int64_t b = 0; b < a.B; ++b) {            \
        for (int64_t blk = 0; blk < blocks; ++blk) forward_block<T, kVecBytes>(a, b, blk * kRows, lse);      \
      }                                                                                                       \
    }                                                                                                         \
    template <typename T>                                                                                     \
    static void backward(const Args<T>& a, const T* coef, const T* colmask, const T* lse, T* grad_f) {        \
      const int64_t blocks = (a.N + kRows - 1) / kRows;                                                       \
      _Pragma("omp parallel") {                                                                               \
        std::vector<T> accum(static_cast<size_t>(kRows * a.cpad));                                            \
        _Pragma("omp for collapse(2) schedule(static)") for (int64_t b = 0; b < a.B; ++b) {                   \
          for (int64_t blk = 0; blk < blocks; ++blk) {                                                        \
            backward_block<T, kVecBytes>(a, b, blk * kRows, coef, colmask, lse, accum.data(), grad_f);        \
          }                                                                                                   \
        }                                                                                                     \
      }                                                                                                       \
    }                                                                                                         \
  };
AFFSEG_FOR_EACH_ISA(AFFSEG_SUPCON_LOOPS)
#undef AFFSEG_SUPCON_LOOPS

template <typename T>
Args<T> make_args(const Padded& p, const at::Tensor& valid, int64_t C, double inv_tau) {
  return Args<T>{p.rows.data_ptr<T>(), p.transposed.data_ptr<T>(), valid.data_ptr<bool>(), valid.size(0),
                 valid.size(1), C, p.npad, p.cpad, static_cast<T>(inv_tau)};
}

template <typename T>
void cos_lse_forward(const at::Tensor& f, const at::Tensor& valid, double inv_tau, T* lse) {
  const Padded p = pad_features<T>(f);
  const Args<T> a = make_args<T>(p, valid, f.size(2), inv_tau);
  AFFSEG_DISPATCH_ISA(isa::Loops::forward<T>(a, lse));
}

template <typename T>
void cos_lse_backward(const at::Tensor& f, const at::Tensor& valid, const T* grad, const T* lse, double inv_tau,
                      T* grad_f) {
  const Padded p = pad_features<T>(f);
  const Args<T> a = make_args<T>(p, valid, f.size(2), inv_tau);
  std::vector<T> coef(static_cast<size_t>(a.B * a.N)), colmask(coef.size());
  for (size_t i = 0; i < coef.size(); ++i) {
    coef[i] = supcon::row_coefficient(grad[i], lse[i]);
    colmask[i] = a.valid[i] ? T(1) : T(0);
  }
  AFFSEG_DISPATCH_ISA(isa::Loops::backward<T>(a, coef.data(), colmask.data(), lse, grad_f));
}

at::Tensor cos_lse_fwd_cpu(const at::Tensor& f_in, const at::Tensor& valid_in, double inv_tau) {
  check_cos_lse_inputs(f_in, valid_in, at::kCPU);
  const at::Tensor f = f_in.contiguous();
  const at::Tensor valid = valid_in.contiguous();
  const int64_t B = f.size(0), N = f.size(1);
  at::Tensor lse = at::empty({B, N}, f.options());
  if (lse.numel() == 0) return lse;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "cos_lse_fwd_cpu",
                             [&] { cos_lse_forward<scalar_t>(f, valid, inv_tau, lse.data_ptr<scalar_t>()); });
  return lse;
}

at::Tensor cos_lse_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& f_in, const at::Tensor& valid_in,
                           const at::Tensor& lse_in, double inv_tau) {
  check_cos_lse_bwd_inputs(grad_in, f_in, valid_in, lse_in, at::kCPU);
  const at::Tensor f = f_in.contiguous();
  const at::Tensor valid = valid_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  at::Tensor grad_f = at::zeros_like(f);
  if (f.size(0) * f.size(1) == 0) return grad_f;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "cos_lse_bwd_cpu", [&] {
    cos_lse_backward<scalar_t>(f, valid, grad.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), inv_tau,
                               grad_f.data_ptr<scalar_t>());
  });
  return grad_f;
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CPU, m) {
  m.impl("cos_lse_fwd", &affseg::cos_lse_fwd_cpu);
  m.impl("cos_lse_bwd", &affseg::cos_lse_bwd_cpu);
}
