// CPU kernels for the soft SupCon denominator (SPEC §4): cos_lse_fwd / cos_lse_bwd.
//
// Math: supcon_math.h. lse_i = LSE_{k≠i, valid_k} inv_tau·f_i·f_k; the backward is one row sweep
// using the symmetry of the similarity matrix (w_jk holds both j's and k's terms).
// Layout: each batch item's unit rows are copied once, zero-padded to Npad rows and Cpad channels
// (multiples of cpu_tiles.h's kPad), row-major (Npad, Cpad) for the backward's Σ_k w_jk f_k and
// transposed (Cpad, ldt) for the dot tiles. One OpenMP task per (item, block of 32 rows) sweeps the
// columns in tiles of 256: the 32 × 256 dot tile from cpu_tiles.h's register-blocked micro-kernel
// (two zmm per row with AVX-512, two ymm with AVX2), then an `omp simd` pass over the tile. For
// τ ≥ 0.025 (float32) the LSE uses the fixed shift inv_tau (|s| ≤ inv_tau on unit rows): one exp per
// pair forward, and one per pair backward with a_k·exp(inv_tau − lse_k) precomputed per row;
// otherwise an online maximum forward and two exps per pair backward. The loops are compiled per
// ISA (affseg/cpu_isa.h) and picked at run time.
// FLOPs: forward 2·N²·C (dots) + N² exps; backward 4·N²·C (dots and the gradient product) + N²
// exps (two below τ = 0.025). Bytes: O(N·C) in and out, O(N) row statistics; nothing of size N²
// (the tiles are per thread: 32 × 256 logits and 32 × Cpad accumulators).
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
#include "affseg/cpu_tiles.h"
#include "affseg/simd_math.h"
#include "affseg/supcon_math.h"

namespace affseg {
namespace {

using namespace cpu::tiles;

constexpr int64_t kBlock = 32;  // rows per task (a multiple of kMicroRows)
constexpr int64_t kTile = 256;  // columns per tile (a multiple of kPad): 32 × 256 logits stay in L2

// Unit rows of one call, zero-padded: rows (B, Npad, Cpad) and transposed (B, Cpad, ldt), ldt ≥ Npad
// the odd-line stride of cpu_tiles.h (N = 8192 would put every depth step on one L1 set).
struct Padded {
  at::Tensor rows, transposed;
  int64_t npad, cpad, ldt;
};

template <typename T>
Padded pad_features(const at::Tensor& f) {
  const int64_t B = f.size(0), N = f.size(1), C = f.size(2);
  Padded p;
  p.npad = round_up(std::max<int64_t>(N, 1), kPad<T>);
  p.cpad = round_up(std::max<int64_t>(C, 1), kPad<T>);
  p.ldt = odd_line_stride<T>(p.npad);
  p.rows = at::zeros({B, p.npad, p.cpad}, f.options());
  p.rows.narrow(1, 0, N).narrow(2, 0, C).copy_(f);
  p.transposed = at::zeros({B, p.cpad, p.ldt}, f.options());
  p.transposed.narrow(2, 0, p.npad).copy_(p.rows.transpose(1, 2));
  return p;
}

template <typename T>
struct Args {
  const T* rows;     // padded (B, Npad, Cpad)
  const T* ft;       // padded (B, Cpad, ldt)
  const T* colmask;  // (B, N) valid as 0/1 (a bool load would keep the tile loops scalar)
  const bool* valid;
  int64_t B, N, C, npad, cpad, ldt;
  T inv_tau;
  bool fixed_shift;  // supcon::fixed_shift(inv_tau): exp(s − inv_tau) needs no running maximum
};

// The rows i0 .. i0 + count − 1 of item b as micro-kernel operands (rows4 of them, the padding ones
// pointing at the zero row Npad − 1 or, when N = Npad, at the last row: computed, never used).
template <typename T>
AFFSEG_ALWAYS_INLINE int64_t block_rows(const Args<T>& a, int64_t b, int64_t i0, int64_t count,
                                        const T* rows[kBlock]) {
  const int64_t rows4 = round_up(count, kMicroRows);
  for (int64_t r = 0; r < rows4; ++r) rows[r] = a.rows + (b * a.npad + std::min(i0 + r, a.npad - 1)) * a.cpad;
  return rows4;
}

// Forward for rows i0 .. i0 + count − 1 of item b: the LSE over column tiles, with the fixed shift
// inv_tau (|s| ≤ inv_tau on unit rows: one exp pass) or an online maximum.
template <typename T, int kIsa>
AFFSEG_ALWAYS_INLINE void forward_block(const Args<T>& a, int64_t b, int64_t i0, int64_t count, T* dots,
                                        T* lse) {
  const T neg_inf = supcon::neg_inf<T>();
  const T* mask = a.colmask + b * a.N;
  const T* ft = a.ft + b * a.cpad * a.ldt;
  const T* rows[kBlock];
  const int64_t rows4 = block_rows(a, b, i0, count, rows);
  T m[kBlock], s[kBlock];
  bool nan[kBlock];
  for (int64_t r = 0; r < kBlock; ++r) {
    m[r] = neg_inf;
    s[r] = T(0);
    nan[r] = false;
  }
  const T inv_tau = a.inv_tau;
  for (int64_t j0 = 0; j0 < a.N; j0 += kTile) {
    const int64_t width = std::min(kTile, a.npad - j0);
    const int64_t live = std::min(kTile, a.N - j0);
    tile_product<T, kIsa, false>(rows, rows4, a.C, ft + j0, a.ldt, width, dots, kTile);
    for (int64_t r = 0; r < count; ++r) {
      T* x = dots + r * kTile;
      const int64_t diag = i0 + r - j0;
      const T* mk = mask + j0;
      if (a.fixed_shift) {
        T sum = T(0);
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < live; ++j) {
          const T e = simd::exp(x[j] * inv_tau - inv_tau);
          sum += (mk[j] != T(0) && j != diag) ? e : T(0);
        }
        s[r] += sum;
        continue;
      }
      T tile_max = neg_inf;
      bool tile_nan = false;
#pragma omp simd reduction(max : tile_max) reduction(| : tile_nan)
      for (int64_t j = 0; j < live; ++j) {
        const T v = (mk[j] != T(0) && j != diag) ? x[j] * inv_tau : neg_inf;
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
  for (int64_t r = 0; r < count; ++r) {
    T out;
    if (a.fixed_shift) {
      out = inv_tau + simd::log(s[r]);  // log 0 = −inf: no valid column; a NaN logit reached the sum
    } else {
      out = nan[r] ? std::numeric_limits<T>::quiet_NaN() : supcon::lse_finish(m[r], s[r]);
    }
    lse[b * a.N + i0 + r] = out;
  }
}

// Backward for rows i0 .. i0 + count − 1 of item b: grad f_j = inv_tau Σ_k w_jk f_k, one row sweep.
// coef[k] = a_k (supcon::row_coefficient); under the fixed shift scaled[k] = a_k·exp(inv_tau − lse_k)
// so that w_jk = exp(s_jk − inv_tau)·(scaled_j [k used] + scaled_k [j used]): one exp per pair.
template <typename T, int kIsa>
AFFSEG_ALWAYS_INLINE void backward_block(const Args<T>& a, int64_t b, int64_t i0, int64_t count, const T* coef,
                                         const T* scaled, const T* lse, T* w, T* accum, T* grad_f) {
  const T* mask = a.colmask + b * a.N;
  const bool* vb = a.valid + b * a.N;
  const T* cb = coef + b * a.N;
  const T* sb = scaled + b * a.N;
  const T* lb = lse + b * a.N;
  const T* ft = a.ft + b * a.cpad * a.ldt;
  const T* fr = a.rows + b * a.npad * a.cpad;
  const T* rows[kBlock];
  const T* wrows[kBlock];
  const int64_t rows4 = block_rows(a, b, i0, count, rows);
  bool any = false;
  for (int64_t r = 0; r < count; ++r) any = any || cb[i0 + r] != T(0) || vb[i0 + r];
  for (int64_t r = 0; r < rows4; ++r) wrows[r] = w + r * kTile;
  std::fill(accum, accum + rows4 * a.cpad, T(0));
  std::fill(w + count * kTile, w + rows4 * kTile, T(0));
  const T inv_tau = a.inv_tau;
  for (int64_t j0 = 0; any && j0 < a.N; j0 += kTile) {
    const int64_t width = std::min(kTile, a.npad - j0);
    const int64_t live = std::min(kTile, a.N - j0);
    tile_product<T, kIsa, false>(rows, rows4, a.C, ft + j0, a.ldt, width, w, kTile);
    for (int64_t r = 0; r < count; ++r) {
      T* x = w + r * kTile;
      const int64_t i = i0 + r, diag = i - j0;
      const T a_j = cb[i], l_j = lb[i], s_j = sb[i];
      const bool v_j = vb[i];
      const T* mk = mask + j0;
      const T* ck = cb + j0;
      const T* lk = lb + j0;
      const T* sk = sb + j0;
      if (a.fixed_shift) {
#pragma omp simd
        for (int64_t j = 0; j < live; ++j) {
          const T e = simd::exp(x[j] * inv_tau - inv_tau);
          const bool use_forward = (mk[j] != T(0)) & (a_j != T(0));
          const bool use_transposed = v_j & (ck[j] != T(0));
          const T wt = (use_forward ? s_j * e : T(0)) + (use_transposed ? sk[j] * e : T(0));
          x[j] = j == diag ? T(0) : wt;
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < live; ++j) {
          const T wt = supcon::pair_weight(x[j] * inv_tau, a_j, l_j, mk[j] != T(0), ck[j], lk[j], v_j);
          x[j] = j == diag ? T(0) : wt;
        }
      }
      for (int64_t j = live; j < width; ++j) x[j] = T(0);
    }
    tile_product<T, kIsa, true>(wrows, rows4, width, fr + j0 * a.cpad, a.cpad, a.cpad, accum, a.cpad);
  }
  for (int64_t r = 0; r < count; ++r) {
    T* g = grad_f + (b * a.N + i0 + r) * a.C;
    for (int64_t c = 0; c < a.C; ++c) g[c] = inv_tau * accum[r * a.cpad + c];
  }
}

// The OpenMP loops over (item, row block), one build per ISA (affseg/cpu_isa.h). The parallel region
// is outlined from these functions, so it inherits their target; the block helpers are inlined into it.
#define AFFSEG_SUPCON_LOOPS                                                                                   \
  struct Loops {                                                                                              \
    template <typename T>                                                                                     \
    static void forward(const Args<T>& a, T* lse) {                                                           \
      const int64_t blocks = (a.N + kBlock - 1) / kBlock;                                                     \
      _Pragma("omp parallel") {                                                                               \
        std::vector<T> dots(static_cast<size_t>(kBlock * kTile));                                             \
        _Pragma("omp for collapse(2) schedule(dynamic, 1)") for (int64_t b = 0; b < a.B; ++b) {               \
          for (int64_t blk = 0; blk < blocks; ++blk) {                                                        \
            const int64_t i0 = blk * kBlock;                                                                  \
            forward_block<T, kIsaLevel>(a, b, i0, std::min(kBlock, a.N - i0), dots.data(), lse);              \
          }                                                                                                   \
        }                                                                                                     \
      }                                                                                                       \
    }                                                                                                         \
    template <typename T>                                                                                     \
    static void backward(const Args<T>& a, const T* coef, const T* scaled, const T* lse, T* grad_f) {         \
      const int64_t blocks = (a.N + kBlock - 1) / kBlock;                                                     \
      _Pragma("omp parallel") {                                                                               \
        std::vector<T> w(static_cast<size_t>(kBlock * kTile));                                                \
        std::vector<T> accum(static_cast<size_t>(kBlock * a.cpad));                                           \
        _Pragma("omp for collapse(2) schedule(dynamic, 1)") for (int64_t b = 0; b < a.B; ++b) {               \
          for (int64_t blk = 0; blk < blocks; ++blk) {                                                        \
            const int64_t i0 = blk * kBlock;                                                                  \
            backward_block<T, kIsaLevel>(a, b, i0, std::min(kBlock, a.N - i0), coef, scaled, lse, w.data(),   \
                                         accum.data(), grad_f);                                               \
          }                                                                                                   \
        }                                                                                                     \
      }                                                                                                       \
    }                                                                                                         \
  };
AFFSEG_FOR_EACH_ISA(AFFSEG_SUPCON_LOOPS)
#undef AFFSEG_SUPCON_LOOPS

template <typename T>
Args<T> make_args(const Padded& p, const at::Tensor& valid, const std::vector<T>& colmask, int64_t C,
                  double inv_tau) {
  return Args<T>{p.rows.data_ptr<T>(), p.transposed.data_ptr<T>(), colmask.data(), valid.data_ptr<bool>(),
                 valid.size(0), valid.size(1), C, p.npad, p.cpad, p.ldt, static_cast<T>(inv_tau),
                 supcon::fixed_shift(static_cast<T>(inv_tau))};
}

template <typename T>
std::vector<T> column_mask(const at::Tensor& valid) {
  const bool* v = valid.data_ptr<bool>();
  std::vector<T> mask(static_cast<size_t>(valid.numel()));
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = v[i] ? T(1) : T(0);
  return mask;
}

template <typename T>
void cos_lse_forward(const at::Tensor& f, const at::Tensor& valid, double inv_tau, T* lse) {
  const Padded p = pad_features<T>(f);
  const std::vector<T> colmask = column_mask<T>(valid);
  const Args<T> a = make_args<T>(p, valid, colmask, f.size(2), inv_tau);
  AFFSEG_DISPATCH_ISA(isa::Loops::forward<T>(a, lse));
}

template <typename T>
void cos_lse_backward(const at::Tensor& f, const at::Tensor& valid, const T* grad, const T* lse, double inv_tau,
                      T* grad_f) {
  const Padded p = pad_features<T>(f);
  const std::vector<T> colmask = column_mask<T>(valid);
  Args<T> a = make_args<T>(p, valid, colmask, f.size(2), inv_tau);
  std::vector<T> coef(static_cast<size_t>(a.B * a.N)), scaled(coef.size(), T(0));
  bool finite = true;
  for (size_t i = 0; i < coef.size(); ++i) {
    coef[i] = supcon::row_coefficient(grad[i], lse[i]);
    if (a.fixed_shift && coef[i] != T(0)) {
      scaled[i] = coef[i] * std::exp(a.inv_tau - lse[i]);
      finite = finite && std::isfinite(scaled[i]);
    }
  }
  // a·exp(inv_tau − lse) can overflow (|a| ≳ 1e4 with lse near −inv_tau) although every a·p is
  // finite, and a NaN g or lse must propagate as the two-exp path does: both take that path.
  a.fixed_shift = a.fixed_shift && finite;
  AFFSEG_DISPATCH_ISA(isa::Loops::backward<T>(a, coef.data(), scaled.data(), lse, grad_f));
}

at::Tensor cos_lse_fwd_cpu(const at::Tensor& f_in, const at::Tensor& valid_in, double inv_tau,
                           c10::string_view input_precision) {
  check_cos_lse_inputs(f_in, valid_in, at::kCPU);
  dot_precision_code(input_precision);  // checked; the CPU computes IEEE
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
                           const at::Tensor& lse_in, double inv_tau, c10::string_view input_precision) {
  check_cos_lse_bwd_inputs(grad_in, f_in, valid_in, lse_in, at::kCPU);
  dot_precision_code(input_precision);
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
