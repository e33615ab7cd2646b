// CPU kernels of the fused PDCR contrastive term (SPEC §3): affseg::pdcr_fwd / pdcr_bwd (rows against
// columns) and affseg::pdcr_intra_fwd / pdcr_intra_bwd (one feature set as both).
//
// Math (per-pair arithmetic in affseg/pdcr_math.h): for each valid row i and window w,
//   lse_iw = LSE_j ŝ_ij·w⁻_ijw, pos_iw = Σ_j ŝ_ij·w⁺_ijw, r_i = (1/W) Σ_w (lse_iw − pos_iw/n_i),
// over the n_i valid columns j (j ≠ i with exclude_self); backward recomputes every pair from the
// saved lse: G_ij = g_i·inv_tau/W·Σ_w (exp(ŝ_ij·w⁻ − lse_iw)·w⁻ − w⁺/n_i), grad_fa = G·fb,
// grad_fb = Gᵀ·fa.
//
// Layout: the items of the inner sweep (valid columns; for grad_fb the rows that carry gradient)
// are first compacted per batch into a panel, features stored both c-major (for the dot-product
// tile) and row-major (for the gradient product), ratios class-major, all zero-padded to the
// micro-kernel width. One OpenMP task per (batch, block of 32 outer items) walks the panel in
// tiles of 256: a register-blocked micro-kernel (4 outer rows × 2 SIMD registers) computes the
// 32×256 dot tile in L1/L2, then vectorised loops over the tile's columns form the W windows'
// weights from the ratios and accumulate the per-window exp sums from that one similarity tile.
// The exp is affseg/simd_math.h's branch-free polynomial, so these loops vectorise without -ffast-math
// and NaN propagates. When the data bound |ŝ·w⁻| below pdcr::fixed_shift_limit (for ratios that
// sum to 1: τ ≥ 0.07 with tv, τ ≥ 0.11 with fg_l1) the exp sums need no running maximum; otherwise each tile
// rescales an online maximum. grad_fb is a second sweep with the roles swapped (column blocks,
// row tiles), so every output row is written by one task: deterministic, no atomics. The intra-layer
// backward is one sweep: ŝ and d are symmetric, so each pair's tile gives both its row's and its
// column's weight (intra_grad_body), with one exp per pair and window under the fixed shift.
// Memory: O(B·(N+M)·(C+W·K)) for the panels and 32×256 tiles per thread; never N×M.
// Work per call (P = N·M pairs; bytes are the compulsory ones, e = element size; the panels are
// re-read from cache once per 32-row task):
//   forward:        2·P·C dot FLOPs + P·W·(3K + 25) epilogue FLOPs, P·W exps;
//                   reads B·(N + M)·(C + W·K)·e, writes B·N·(1 + W)·e.
//   backward:       4·P·C dot + 4·P·C gradient-product FLOPs + 2·P·W·(3K + 25), 2·P·W exps;
//   intra backward: 2·P·C dot + 2·P·C product FLOPs + P·W·(3K + 30), P·W exps (2·P·W without the
//                   fixed shift); both read the forward's inputs and B·N·(1 + W)·e, write B·(N + M)·C·e.
// Limits: float32/float64 (one dtype for features and ratios), contiguous inputs, bool masks, W ≥ 1;
// no limit on W, K, C, N or M (int64 indexing; scratch per thread O(32·256 + 32·(C + W·K))).
// Hot loops are compiled per ISA (baseline, AVX2+FMA, AVX-512; affseg/cpu_isa.h), picked at run time.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "affseg/checks.h"
#include "affseg/cpu_isa.h"
#include "affseg/glue_checks.h"

// From here on (this file's kernels and the math header), FP operations may be assumed not to trap:
// that lets GCC if-convert the selects of the pair loops and vectorise them. NaN still propagates
// (this is not -ffast-math: no finite-math or reassociation assumptions).
#pragma GCC optimize("no-trapping-math")
#include "affseg/cpu_tiles.h"
#include "affseg/pdcr_math.h"
#include "affseg/simd_math.h"

namespace affseg {
namespace {

using namespace cpu::tiles;

constexpr int64_t kBlock = 32;  // outer items per task (a multiple of kMicroRows)
constexpr int64_t kTile = 256;  // inner items per tile (a multiple of kPad)

// Compacted items of one batch, zero-padded to np ≥ a multiple of kPad.
template <typename T>
struct Panel {
  int64_t n = 0, np = 0;
  std::vector<int64_t> idx;  // original index of each item
  std::vector<T> ft;         // (C, np) features, c-major
  std::vector<T> f;          // (np, ldf) features, channels zero-padded to cp
  std::vector<T> pt;         // (W·K, np) ratios, class-major
  std::vector<T> lse;        // (W, np) row statistics (row panels of the backward only)
  std::vector<T> coef;       // (np) g_i·inv_tau/W
  std::vector<T> inv_n;      // (np) 1/n_i
  // Intra-layer backward only, 0 at items that carry no row gradient: (W, np) c·exp(−lse) under a
  // fixed shift or lse otherwise (+inf there), (np) c = g_i·inv_tau/W and (np) c/n_i.
  std::vector<T> row_stat, row_coef, pos_coef;

  // feat (n_all, C) and phi (W, n_all, K) of one batch.
  void fill(const T* feat, const T* phi, int64_t n_all, std::vector<int64_t> items, int64_t C, int64_t ldf,
            int64_t W, int64_t K) {
    idx = std::move(items);
    n = static_cast<int64_t>(idx.size());
    np = odd_line_stride<T>(std::max<int64_t>(n, 1));
    ft.assign(C * np, T(0));
    f.assign(np * ldf, T(0));
    pt.assign(W * K * np, T(0));
    for (int64_t t = 0; t < n; ++t) {
      const T* src = feat + idx[t] * C;
      for (int64_t c = 0; c < C; ++c) {
        ft[c * np + t] = src[c];
        f[t * ldf + c] = src[c];
      }
      for (int64_t w = 0; w < W; ++w)
        for (int64_t k = 0; k < K; ++k) pt[(w * K + k) * np + t] = phi[(w * n_all + idx[t]) * K + k];
    }
  }
};

// One operand side of a sweep: the outer items of a batch are rows of `feat` (n_all, C) and
// `phi` (W, n_all, K), listed in `items`.
template <typename T>
struct Side {
  const T* feat;
  const T* phi;
  int64_t n_all;
};

struct Options {
  int64_t C, cp, ldf, W, K;  // cp: C rounded up to kPad; ldf: row stride of Panel::f
  bool swapped, fg_l1, exclude_self;
};

template <typename T>
struct Scratch {
  std::vector<T> dots, grads, div, logits, acc, zeros, ratios, sum_exp, run_max, pos;
  std::vector<const T*> outer_rows, grad_rows;
  std::vector<int64_t> self_pos;  // panel position of each outer item's own pair, or -1
  Scratch(const Options& o)
      : dots(kBlock * kTile),
        grads(kBlock * kTile, T(0)),
        div(kTile),
        logits(kTile),
        acc(kBlock * o.cp),
        zeros(std::max<int64_t>(o.C, 1), T(0)),
        ratios(kBlock * o.W * o.K),
        sum_exp(kBlock * o.W),
        run_max(kBlock * o.W),
        pos(kBlock * o.W),
        outer_rows(kBlock),
        grad_rows(kBlock),
        self_pos(kBlock) {
    for (int64_t r = 0; r < kBlock; ++r) grad_rows[r] = grads.data() + r * kTile;
  }
};

// A builtin rather than std::abs: the <cmath> function was compiled without this file's optimize
// pragma, so GCC would not inline it into the loops.
template <typename T>
AFFSEG_ALWAYS_INLINE T absolute(T x) {
  if constexpr (sizeof(T) == 4) {
    return __builtin_fabsf(x);
  } else {
    return __builtin_fabs(x);
  }
}

// div[j] = d(outer item, inner item j) of window w for j < n, from the outer item's K ratios and the
// inner panel's class-major ratios starting at `inner` (row stride `stride`).
template <typename T>
AFFSEG_ALWAYS_INLINE void tile_divergence(const T* outer, const T* inner, int64_t stride, int64_t n,
                                          const Options& o, T* __restrict__ div) {
  const int k0 = pdcr::first_class(o.fg_l1);
  const T scale = pdcr::divergence_scale<T>(o.fg_l1);
  if (k0 >= o.K) {
    std::fill(div, div + n, T(0));
    return;
  }
  {
    const T p = outer[k0];
    const T* __restrict__ q = inner + k0 * stride;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) div[j] = absolute(p - q[j]);
  }
  for (int64_t k = k0 + 1; k < o.K; ++k) {
    const T p = outer[k];
    const T* __restrict__ q = inner + k * stride;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) div[j] += absolute(p - q[j]);
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) div[j] *= scale;
}

// The outer items of one task, their (W, K) ratios and (under exclude_self) the position of their own
// index in the inner panel, gathered into scratch. The self pair is then cut out of the pair loops by
// splitting them around it, so that the loops carry no per-pair index test.
template <typename T>
void gather_outer(const Side<T>& side, const int64_t* items, int64_t count, const Panel<T>& inner, const Options& o,
                  Scratch<T>& s) {
  const int64_t WK = o.W * o.K;
  for (int64_t r = 0; r < count; ++r) {
    const auto it = std::lower_bound(inner.idx.begin(), inner.idx.end(), items[r]);
    s.self_pos[r] = (o.exclude_self && it != inner.idx.end() && *it == items[r]) ? it - inner.idx.begin() : -1;
  }
  for (int64_t r = 0; r < kBlock; ++r) s.outer_rows[r] = r < count ? side.feat + items[r] * o.C : s.zeros.data();
  for (int64_t r = 0; r < count; ++r)
    for (int64_t w = 0; w < o.W; ++w)
      for (int64_t k = 0; k < o.K; ++k) s.ratios[r * WK + w * o.K + k] = side.phi[(w * side.n_all + items[r]) * o.K + k];
}

// ---------------------------------------------------------------------------------------------
// Forward: rows outer, valid columns inner.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct ForwardTask {
  Side<T> rows;
  const Panel<T>* cols;
  const int64_t* items;  // rows of this task
  const T* inv_n;        // per item
  int64_t count;
  T inv_tau;
  T* loss;  // (n_all) of this batch
  T* lse;   // (n_all, W) of this batch
};

template <typename T, int kIsa, bool kFixedShift>
AFFSEG_ALWAYS_INLINE void forward_body(const ForwardTask<T>& t, const Options& o, Scratch<T>& s) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const Panel<T>& cols = *t.cols;
  const int64_t W = o.W, WK = o.W * o.K;
  gather_outer(t.rows, t.items, t.count, cols, o, s);
  const int64_t rows4 = round_up(t.count, kMicroRows);
  std::fill(s.sum_exp.begin(), s.sum_exp.end(), T(0));
  std::fill(s.run_max.begin(), s.run_max.end(), kNegInf);
  std::fill(s.pos.begin(), s.pos.end(), T(0));
  const T inv_tau = t.inv_tau;
  const pdcr::WeightMap<T> weights = pdcr::weight_map<T>(o.swapped);
  for (int64_t j0 = 0; j0 < cols.n; j0 += kTile) {
    const int64_t jn = std::min(kTile, cols.n - j0);
    const int64_t jw = round_up(jn, kPad<T>);
    tile_product<T, kIsa, false>(s.outer_rows.data(), rows4, o.C, cols.ft.data() + j0, cols.np, jw, s.dots.data(),
                                 kTile);
    for (int64_t r = 0; r < t.count; ++r) {
      T* __restrict__ logit = s.dots.data() + r * kTile;
#pragma omp simd
      for (int64_t j = 0; j < jn; ++j) logit[j] = pdcr::scaled_logit(logit[j], inv_tau);
      // The pairs [0, cut) and [cut + 1, jn): all of them unless the self pair lies in this tile.
      const int64_t self = s.self_pos[r] - j0;
      const int64_t cut = (self >= 0 && self < jn) ? self : jn;
      for (int64_t w = 0; w < W; ++w) {
        T* __restrict__ div = s.div.data();
        tile_divergence(s.ratios.data() + r * WK + w * o.K, cols.pt.data() + w * o.K * cols.np + j0, cols.np, jn, o,
                        div);
        T sum_exp = T(0), pos = T(0);
        if constexpr (kFixedShift) {
          for (int64_t part = 0; part < 2; ++part) {
            const int64_t begin = part == 0 ? 0 : cut + 1, end = part == 0 ? cut : jn;
#pragma omp simd reduction(+ : sum_exp, pos)
            for (int64_t j = begin; j < end; ++j) {
              T w_pos, w_neg;
              pdcr::pair_weights(div[j], weights, w_pos, w_neg);
              sum_exp += simd::exp(logit[j] * w_neg);
              pos += logit[j] * w_pos;
            }
          }
          s.sum_exp[r * W + w] += sum_exp;
        } else {
          T* __restrict__ v = s.logits.data();
          for (int64_t part = 0; part < 2; ++part) {
            const int64_t begin = part == 0 ? 0 : cut + 1, end = part == 0 ? cut : jn;
#pragma omp simd reduction(+ : pos)
            for (int64_t j = begin; j < end; ++j) {
              T w_pos, w_neg;
              pdcr::pair_weights(div[j], weights, w_pos, w_neg);
              v[j] = logit[j] * w_neg;
              pos += logit[j] * w_pos;
            }
          }
          if (cut < jn) v[cut] = kNegInf;
          // NaN-sticky maximum: a NaN logit must reach the sum instead of being skipped.
          T tile_max = kNegInf;
          for (int64_t j = 0; j < jn; ++j) tile_max = (v[j] > tile_max || v[j] != v[j]) ? v[j] : tile_max;
          const T old_max = s.run_max[r * W + w];
          const T new_max = (tile_max > old_max || tile_max != tile_max) ? tile_max : old_max;
          if (new_max != kNegInf) {
#pragma omp simd reduction(+ : sum_exp)
            for (int64_t j = 0; j < jn; ++j) sum_exp += simd::exp(v[j] - new_max);
            s.sum_exp[r * W + w] = s.sum_exp[r * W + w] * simd::exp(old_max - new_max) + sum_exp;
            s.run_max[r * W + w] = new_max;
          }
        }
        s.pos[r * W + w] += pos;
      }
    }
  }
  for (int64_t r = 0; r < t.count; ++r) {
    T loss = T(0);
    for (int64_t w = 0; w < W; ++w) {
      const T shift = kFixedShift ? T(0) : s.run_max[r * W + w];
      const T lse = shift + simd::log(s.sum_exp[r * W + w]);
      t.lse[t.items[r] * W + w] = lse;
      loss += lse - s.pos[r * W + w] * t.inv_n[r];
    }
    t.loss[t.items[r]] = loss / T(W);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: grad of the outer items against an inner panel. Rows outer (grad_fa, the row's own
// lse/coef/inv_n are scalars) or columns outer (grad_fb, the inner rows' statistics are vectors).
// ---------------------------------------------------------------------------------------------
template <typename T>
struct GradTask {
  Side<T> outer;
  const Panel<T>* inner;
  const int64_t* items;
  int64_t count;
  T inv_tau;
  // Rows outer only: per-item statistics, and the batch's lse (n_all, W).
  const T* coef;
  const T* inv_n;
  const T* lse;
  T* grad;  // (n_all, C) of this batch
};

// The sweep both backward kernels share: for each tile of the inner panel, the outer items' dot tile
// turned into logits, `row_weights(r, j0, jn, logit, g)` writing outer item r's gradient weights
// g[0, jn) from its logits (g[jn, jw) is padding, zeroed here), the self pair cut, and the gradient
// product Σ_j g_j·f_j into the task's accumulators; then the outer items' gradient rows.
template <typename T, int kIsa, typename RowWeights>
AFFSEG_ALWAYS_INLINE void grad_sweep(const Side<T>& outer, const int64_t* items, int64_t count, const Panel<T>& in,
                                     const Options& o, T inv_tau, Scratch<T>& s, T* grad, RowWeights&& row_weights) {
  const int64_t cp = o.cp;
  gather_outer(outer, items, count, in, o, s);
  const int64_t rows4 = round_up(count, kMicroRows);
  std::fill(s.acc.begin(), s.acc.begin() + rows4 * cp, T(0));
  std::fill(s.grads.begin() + count * kTile, s.grads.begin() + rows4 * kTile, T(0));
  for (int64_t j0 = 0; j0 < in.n; j0 += kTile) {
    const int64_t jn = std::min(kTile, in.n - j0);
    const int64_t jw = round_up(jn, kPad<T>);
    tile_product<T, kIsa, false>(s.outer_rows.data(), rows4, o.C, in.ft.data() + j0, in.np, jw, s.dots.data(), kTile);
    for (int64_t r = 0; r < count; ++r) {
      T* __restrict__ logit = s.dots.data() + r * kTile;
      T* __restrict__ g = s.grads.data() + r * kTile;
#pragma omp simd
      for (int64_t j = 0; j < jn; ++j) logit[j] = pdcr::scaled_logit(logit[j], inv_tau);
      for (int64_t j = jn; j < jw; ++j) g[j] = T(0);
      row_weights(r, j0, jn, logit, g);
      const int64_t self = s.self_pos[r] - j0;
      if (self >= 0 && self < jn) g[self] = T(0);
    }
    tile_product<T, kIsa, true>(s.grad_rows.data(), rows4, jw, in.f.data() + j0 * o.ldf, o.ldf, cp, s.acc.data(),
                                cp);
  }
  for (int64_t r = 0; r < count; ++r) std::copy_n(s.acc.data() + r * cp, o.C, grad + items[r] * o.C);
}

template <typename T, int kIsa, bool kRowsOuter>
AFFSEG_ALWAYS_INLINE void grad_body(const GradTask<T>& t, const Options& o, Scratch<T>& s) {
  const Panel<T>& in = *t.inner;
  const int64_t W = o.W, WK = o.W * o.K;
  const pdcr::WeightMap<T> weights = pdcr::weight_map<T>(o.swapped);
  const auto row_weights = [&](int64_t r, int64_t j0, int64_t jn, const T* __restrict__ logit, T* __restrict__ g)
      __attribute__((always_inline)) {
    std::fill(g, g + jn, T(0));
    for (int64_t w = 0; w < W; ++w) {
      T* __restrict__ div = s.div.data();
      tile_divergence(s.ratios.data() + r * WK + w * o.K, in.pt.data() + w * o.K * in.np + j0, in.np, jn, o, div);
      if constexpr (kRowsOuter) {
        const T lse = t.lse[t.items[r] * W + w];
        const T inv_n = t.inv_n[r];
#pragma omp simd
        for (int64_t j = 0; j < jn; ++j) {
          T w_pos, w_neg;
          pdcr::pair_weights(div[j], weights, w_pos, w_neg);
          const T p = simd::exp(logit[j] * w_neg - lse);
          g[j] += pdcr::pair_grad_term(p, w_pos, w_neg, inv_n);
        }
      } else {
        const T* __restrict__ lse = in.lse.data() + w * in.np + j0;
        const T* __restrict__ inv_n = in.inv_n.data() + j0;
#pragma omp simd
        for (int64_t j = 0; j < jn; ++j) {
          T w_pos, w_neg;
          pdcr::pair_weights(div[j], weights, w_pos, w_neg);
          const T p = simd::exp(logit[j] * w_neg - lse[j]);
          g[j] += pdcr::pair_grad_term(p, w_pos, w_neg, inv_n[j]);
        }
      }
    }
    if constexpr (kRowsOuter) {
      const T coef = t.coef[r];
#pragma omp simd
      for (int64_t j = 0; j < jn; ++j) g[j] *= coef;
    } else {
      const T* __restrict__ coef = in.coef.data() + j0;
#pragma omp simd
      for (int64_t j = 0; j < jn; ++j) g[j] *= coef[j];
    }
  };
  grad_sweep<T, kIsa>(t.outer, t.items, t.count, in, o, t.inv_tau, s, t.grad, row_weights);
}

// ---------------------------------------------------------------------------------------------
// Intra-layer backward (one feature set as rows and columns): one sweep. ŝ and d are symmetric, so
// the pair (k, j) gives both k's row term G_kj (k's statistics) and j's row term G_jk (j's), and
//   grad_f_k = Σ_j H_kj f_j,  H_kj = G_kj + G_jk
//            = Σ_w [w⁻·(c_k·p_kjw + c_j·p_jkw) − w⁺·(b_k + b_j)],  c = g·inv_tau/W, b = c/n,
// from one similarity tile and one gradient product; each output row is written by the one task
// that owns it (deterministic, no atomics). Under a fixed shift c_k·p_kjw + c_j·p_jkw =
// exp(ŝw⁻)·(a_kw + a_jw) with a = c·exp(−lse) per item and window: one exp per pair and window, as
// in the forward (exp(−lse) is a normal number there: |lse| ≤ 60 + ln n; a call whose a would
// overflow takes the other path). Otherwise two exps, exp(ŝw⁻ − lse) for each side.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct IntraTask {
  Side<T> side;
  const Panel<T>* panel;  // the batch's valid items and their row statistics
  int64_t start, count;   // outer items: panel positions start .. start + count − 1
  T inv_tau;
  T* grad;  // (n_all, C) of this batch
};

template <typename T, int kIsa, bool kFixedShift>
AFFSEG_ALWAYS_INLINE void intra_grad_body(const IntraTask<T>& t, const Options& o, Scratch<T>& s) {
  const Panel<T>& in = *t.panel;
  const int64_t W = o.W, WK = o.W * o.K, np = in.np;
  const pdcr::WeightMap<T> weights = pdcr::weight_map<T>(o.swapped);
  const auto row_weights = [&](int64_t r, int64_t j0, int64_t jn, const T* __restrict__ logit, T* __restrict__ h)
      __attribute__((always_inline)) {
    const int64_t q = t.start + r;
    const T c_row = in.row_coef[q];
    const T b_row = in.pos_coef[q];
    const T* __restrict__ c_col = in.row_coef.data() + j0;
    const T* __restrict__ b_col = in.pos_coef.data() + j0;
    for (int64_t w = 0; w < W; ++w) {
      T* __restrict__ div = s.div.data();
      tile_divergence(s.ratios.data() + r * WK + w * o.K, in.pt.data() + w * o.K * np + j0, np, jn, o, div);
      const T stat_row = in.row_stat[w * np + q];
      const T* __restrict__ stat_col = in.row_stat.data() + w * np + j0;
      const auto term = [&](int64_t j) __attribute__((always_inline)) {
        T w_pos, w_neg;
        pdcr::pair_weights(div[j], weights, w_pos, w_neg);
        const T x = logit[j] * w_neg;
        T both;
        if constexpr (kFixedShift) {
          both = simd::exp(x) * (stat_row + stat_col[j]);
        } else {
          both = simd::exp(x - stat_row) * c_row + simd::exp(x - stat_col[j]) * c_col[j];
        }
        return w_neg * both - w_pos * (b_row + b_col[j]);
      };
      // The first window starts the sum: h still holds the last tile's weights.
      if (w == 0) {
#pragma omp simd
        for (int64_t j = 0; j < jn; ++j) h[j] = term(j);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < jn; ++j) h[j] += term(j);
      }
    }
  };
  grad_sweep<T, kIsa>(t.side, in.idx.data() + t.start, t.count, in, o, t.inv_tau, s, t.grad, row_weights);
}

// The task entry points, one build per ISA (affseg/cpu_isa.h); the bodies above are forced inline
// into each, so they are compiled for its target. FMA from AVX2 up, two zmm per micro-kernel row
// with AVX-512.
#define AFFSEG_PDCR_LOOPS                                                                        \
  struct Loops {                                                                                 \
    template <typename T, bool kFixedShift>                                                      \
    static void forward(const ForwardTask<T>& t, const Options& o, Scratch<T>& s) {              \
      forward_body<T, kIsaLevel, kFixedShift>(t, o, s);                                          \
    }                                                                                            \
    template <typename T, bool kRowsOuter>                                                       \
    static void grad(const GradTask<T>& t, const Options& o, Scratch<T>& s) {                    \
      grad_body<T, kIsaLevel, kRowsOuter>(t, o, s);                                              \
    }                                                                                            \
    template <typename T, bool kFixedShift>                                                      \
    static void intra_grad(const IntraTask<T>& t, const Options& o, Scratch<T>& s) {             \
      intra_grad_body<T, kIsaLevel, kFixedShift>(t, o, s);                                       \
    }                                                                                            \
  };
AFFSEG_FOR_EACH_ISA(AFFSEG_PDCR_LOOPS)
#undef AFFSEG_PDCR_LOOPS

template <typename T>
using ForwardFn = void (*)(const ForwardTask<T>&, const Options&, Scratch<T>&);
template <typename T>
using GradFn = void (*)(const GradTask<T>&, const Options&, Scratch<T>&);
template <typename T>
using IntraGradFn = void (*)(const IntraTask<T>&, const Options&, Scratch<T>&);

// ---------------------------------------------------------------------------------------------
// Drivers.
// ---------------------------------------------------------------------------------------------
struct Dims {
  int64_t B, N, M;
};

std::vector<int64_t> valid_items(const bool* valid, int64_t n) {
  std::vector<int64_t> items;
  for (int64_t i = 0; i < n; ++i)
    if (valid[i]) items.push_back(i);
  return items;
}

// n_i per row: the batch's valid columns, less the row's own column under exclude_self.
int64_t column_count(const Options& o, const bool* valid_b, int64_t M, int64_t valid_cols, int64_t i) {
  return valid_cols - ((o.exclude_self && i < M && valid_b[i]) ? 1 : 0);
}

// Largest Σ_{k≥k0} |φ| over the rows of a (B, W, n, K) ratio tensor; NaN if any ratio is NaN.
template <typename T>
T max_ratio_sum(const T* phi, int64_t rows, int64_t K, bool fg_l1) {
  T best = T(0);
  for (int64_t r = 0; r < rows; ++r) {
    T sum = T(0);
    for (int64_t k = pdcr::first_class(fg_l1); k < K; ++k) sum += std::abs(phi[r * K + k]);
    best = (sum > best || sum != sum) ? sum : best;
  }
  return best;
}

// Whether the data bound every |ŝ·w⁻| below pdcr::fixed_shift_limit, so that the exp sums need no
// running maximum (the forward and the intra-layer backward decide it alike).
template <typename T>
bool uses_fixed_shift(const T* pa, const T* pb, const Options& o, Dims d, T inv_tau) {
  const T bound = pdcr::logit_bound(inv_tau, max_ratio_sum(pa, d.B * o.W * d.N, o.K, o.fg_l1),
                                    max_ratio_sum(pb, d.B * o.W * d.M, o.K, o.fg_l1), o.fg_l1);
  return bound <= pdcr::fixed_shift_limit<T>();
}

// Each task: one batch and up to kBlock consecutive entries of that batch's item list.
struct TaskRange {
  int64_t b, start, count;
};

std::vector<TaskRange> split(const std::vector<std::vector<int64_t>>& items) {
  std::vector<TaskRange> tasks;
  for (int64_t b = 0; b < static_cast<int64_t>(items.size()); ++b)
    for (int64_t s = 0; s < static_cast<int64_t>(items[b].size()); s += kBlock)
      tasks.push_back({b, s, std::min<int64_t>(kBlock, items[b].size() - s)});
  return tasks;
}

template <typename T>
void forward_impl(const at::Tensor& fa, const at::Tensor& pa, const at::Tensor& fb, const at::Tensor& pb,
                  const at::Tensor& va, const at::Tensor& vb, const Options& o, Dims d, T inv_tau, at::Tensor& loss,
                  at::Tensor& lse) {
  const T* fa_p = fa.data_ptr<T>();
  const T* pa_p = pa.data_ptr<T>();
  const T* fb_p = fb.data_ptr<T>();
  const T* pb_p = pb.data_ptr<T>();
  const bool* va_p = va.data_ptr<bool>();
  const bool* vb_p = vb.data_ptr<bool>();
  T* loss_p = loss.data_ptr<T>();
  T* lse_p = lse.data_ptr<T>();
  const int64_t C = o.C, W = o.W, K = o.K;

  std::vector<Panel<T>> cols(d.B);
  std::vector<std::vector<int64_t>> rows(d.B);
  std::vector<std::vector<T>> inv_n(d.B);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < d.B; ++b) {
    cols[b].fill(fb_p + b * d.M * C, pb_p + b * W * d.M * K, d.M, valid_items(vb_p + b * d.M, d.M), C, o.ldf, W, K);
    for (int64_t i = 0; i < d.N; ++i) {
      const int64_t n = column_count(o, vb_p + b * d.M, d.M, cols[b].n, i);
      if (va_p[b * d.N + i] && n > 0) {
        rows[b].push_back(i);
        inv_n[b].push_back(T(1) / T(n));
      }
    }
  }
  const bool fixed_shift = uses_fixed_shift(pa_p, pb_p, o, d, inv_tau);
  ForwardFn<T> forward = nullptr;
  AFFSEG_DISPATCH_ISA(forward = fixed_shift ? &isa::Loops::forward<T, true> : &isa::Loops::forward<T, false>);
  const std::vector<TaskRange> tasks = split(rows);
#pragma omp parallel
  {
    Scratch<T> scratch(o);
#pragma omp for schedule(dynamic, 1)
    for (int64_t ti = 0; ti < static_cast<int64_t>(tasks.size()); ++ti) {
      const TaskRange& tr = tasks[ti];
      const ForwardTask<T> task{{fa_p + tr.b * d.N * C, pa_p + tr.b * W * d.N * K, d.N},
                                &cols[tr.b],
                                rows[tr.b].data() + tr.start,
                                inv_n[tr.b].data() + tr.start,
                                tr.count,
                                inv_tau,
                                loss_p + tr.b * d.N,
                                lse_p + tr.b * d.N * W};
      forward(task, o, scratch);
    }
  }
}

template <typename T>
void backward_impl(const at::Tensor& grad_row, const at::Tensor& fa, const at::Tensor& pa, const at::Tensor& fb,
                   const at::Tensor& pb, const at::Tensor& va, const at::Tensor& vb, const at::Tensor& lse,
                   const Options& o, Dims d, T inv_tau, at::Tensor& grad_fa, at::Tensor& grad_fb) {
  const T* g_p = grad_row.data_ptr<T>();
  const T* fa_p = fa.data_ptr<T>();
  const T* pa_p = pa.data_ptr<T>();
  const T* fb_p = fb.data_ptr<T>();
  const T* pb_p = pb.data_ptr<T>();
  const bool* va_p = va.data_ptr<bool>();
  const bool* vb_p = vb.data_ptr<bool>();
  const T* lse_p = lse.data_ptr<T>();
  T* gfa_p = grad_fa.data_ptr<T>();
  T* gfb_p = grad_fb.data_ptr<T>();
  const int64_t C = o.C, W = o.W, K = o.K;

  // Rows that carry gradient (valid, n_i > 0, g_i != 0), with their coefficient and 1/n_i, and the
  // valid columns; both as panels (inner side of the other sweep) and as item lists (outer side).
  std::vector<Panel<T>> cols(d.B), rows(d.B);
  std::vector<std::vector<T>> coef(d.B), inv_n(d.B);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < d.B; ++b) {
    cols[b].fill(fb_p + b * d.M * C, pb_p + b * W * d.M * K, d.M, valid_items(vb_p + b * d.M, d.M), C, o.ldf, W, K);
    std::vector<int64_t> active;
    for (int64_t i = 0; i < d.N; ++i) {
      const int64_t n = column_count(o, vb_p + b * d.M, d.M, cols[b].n, i);
      const T g = g_p[b * d.N + i];
      if (va_p[b * d.N + i] && n > 0 && g != T(0)) {
        active.push_back(i);
        coef[b].push_back(g * inv_tau / T(W));
        inv_n[b].push_back(T(1) / T(n));
      }
    }
    Panel<T>& p = rows[b];
    p.fill(fa_p + b * d.N * C, pa_p + b * W * d.N * K, d.N, std::move(active), C, o.ldf, W, K);
    p.lse.assign(W * p.np, T(0));
    p.coef.assign(p.np, T(0));
    p.inv_n.assign(p.np, T(0));
    for (int64_t t = 0; t < p.n; ++t) {
      for (int64_t w = 0; w < W; ++w) p.lse[w * p.np + t] = lse_p[(b * d.N + p.idx[t]) * W + w];
      p.coef[t] = coef[b][t];
      p.inv_n[t] = inv_n[b][t];
    }
  }
  GradFn<T> grad_rows = nullptr, grad_cols = nullptr;
  AFFSEG_DISPATCH_ISA(grad_rows = &isa::Loops::grad<T, true>, grad_cols = &isa::Loops::grad<T, false>);
  std::vector<std::vector<int64_t>> row_items(d.B), col_items(d.B);
  for (int64_t b = 0; b < d.B; ++b) {
    row_items[b] = rows[b].idx;
    if (rows[b].n > 0) col_items[b] = cols[b].idx;  // no gradient reaches any column otherwise
  }
  const std::vector<TaskRange> row_tasks = split(row_items);
  const std::vector<TaskRange> col_tasks = split(col_items);
  const int64_t n_row_tasks = static_cast<int64_t>(row_tasks.size());
  const int64_t n_tasks = n_row_tasks + static_cast<int64_t>(col_tasks.size());
#pragma omp parallel
  {
    Scratch<T> scratch(o);
#pragma omp for schedule(dynamic, 1)
    for (int64_t ti = 0; ti < n_tasks; ++ti) {
      if (ti < n_row_tasks) {
        const TaskRange& tr = row_tasks[ti];
        const GradTask<T> task{{fa_p + tr.b * d.N * C, pa_p + tr.b * W * d.N * K, d.N},
                               &cols[tr.b],
                               row_items[tr.b].data() + tr.start,
                               tr.count,
                               inv_tau,
                               coef[tr.b].data() + tr.start,
                               inv_n[tr.b].data() + tr.start,
                               lse_p + tr.b * d.N * W,
                               gfa_p + tr.b * d.N * C};
        grad_rows(task, o, scratch);
      } else {
        const TaskRange& tr = col_tasks[ti - n_row_tasks];
        const GradTask<T> task{{fb_p + tr.b * d.M * C, pb_p + tr.b * W * d.M * K, d.M},
                               &rows[tr.b],
                               col_items[tr.b].data() + tr.start,
                               tr.count,
                               inv_tau,
                               nullptr,
                               nullptr,
                               nullptr,
                               gfb_p + tr.b * d.M * C};
        grad_cols(task, o, scratch);
      }
    }
  }
}

// Intra-layer backward: grad_f of Σ_i g_i·r_i with f, φ and valid as both rows and columns.
template <typename T>
void intra_backward_impl(const at::Tensor& grad_row, const at::Tensor& f, const at::Tensor& phi,
                         const at::Tensor& valid, const at::Tensor& lse, const Options& o, Dims d, T inv_tau,
                         at::Tensor& grad_f) {
  const T* g_p = grad_row.data_ptr<T>();
  const T* f_p = f.data_ptr<T>();
  const T* phi_p = phi.data_ptr<T>();
  const bool* v_p = valid.data_ptr<bool>();
  const T* lse_p = lse.data_ptr<T>();
  T* grad_p = grad_f.data_ptr<T>();
  const int64_t C = o.C, W = o.W, K = o.K, N = d.N;
  std::vector<Panel<T>> panels(d.B);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < d.B; ++b) {
    Panel<T>& p = panels[b];
    p.fill(f_p + b * N * C, phi_p + b * W * N * K, N, valid_items(v_p + b * N, N), C, o.ldf, W, K);
    p.row_coef.assign(p.np, T(0));
    p.pos_coef.assign(p.np, T(0));
    for (int64_t t = 0; t < p.n; ++t) {
      const int64_t i = p.idx[t];
      const int64_t n = column_count(o, v_p + b * N, N, p.n, i);
      const T g = g_p[b * N + i];
      if (n == 0 || g == T(0)) continue;
      p.row_coef[t] = g * inv_tau / T(W);
      p.pos_coef[t] = p.row_coef[t] / T(n);
    }
  }
  // Items without a row gradient contribute only as columns: c = 0 and a statistic that makes their
  // term exactly 0 (a = 0, or lse = +inf).
  const auto fill_stats = [&](bool fixed) {
    bool finite = true;
    for (int64_t b = 0; b < d.B; ++b) {
      Panel<T>& p = panels[b];
      p.row_stat.assign(W * p.np, fixed ? T(0) : std::numeric_limits<T>::infinity());
      for (int64_t t = 0; t < p.n; ++t) {
        if (p.row_coef[t] == T(0)) continue;
        for (int64_t w = 0; w < W; ++w) {
          const T l = lse_p[(b * N + p.idx[t]) * W + w];
          const T stat = fixed ? p.row_coef[t] * std::exp(-l) : l;
          finite = finite && std::isfinite(stat);
          p.row_stat[w * p.np + t] = stat;
        }
      }
    }
    return finite;
  };
  // A non-finite a from finite inputs (an overflowing |g|·inv_tau·e^60) must not reach the sums;
  // a NaN or infinite lse or g takes the two-exp path too, which propagates it as the reference does.
  bool fixed_shift = uses_fixed_shift(phi_p, phi_p, o, d, inv_tau);
  if (fixed_shift && !fill_stats(true)) fixed_shift = false;
  if (!fixed_shift) fill_stats(false);
  IntraGradFn<T> grad = nullptr;
  AFFSEG_DISPATCH_ISA(grad = fixed_shift ? &isa::Loops::intra_grad<T, true> : &isa::Loops::intra_grad<T, false>);
  std::vector<std::vector<int64_t>> items(d.B);
  for (int64_t b = 0; b < d.B; ++b) items[b] = panels[b].idx;
  const std::vector<TaskRange> tasks = split(items);
#pragma omp parallel
  {
    Scratch<T> scratch(o);
#pragma omp for schedule(dynamic, 1)
    for (int64_t ti = 0; ti < static_cast<int64_t>(tasks.size()); ++ti) {
      const TaskRange& tr = tasks[ti];
      const IntraTask<T> task{{f_p + tr.b * N * C, phi_p + tr.b * W * N * K, N}, &panels[tr.b], tr.start, tr.count,
                              inv_tau, grad_p + tr.b * N * C};
      grad(task, o, scratch);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Torch glue.
// ---------------------------------------------------------------------------------------------
Options make_options(const at::Tensor& fa, const at::Tensor& pa, bool swapped, bool fg_l1, bool exclude_self) {
  const int64_t C = fa.size(2);
  const bool f32 = fa.scalar_type() == at::kFloat;
  const int64_t cp = round_up(C, f32 ? kPad<float> : kPad<double>);
  const int64_t ldf = f32 ? odd_line_stride<float>(C) : odd_line_stride<double>(C);
  return Options{C, cp, ldf, pa.size(1), pa.size(3), swapped, fg_l1, exclude_self};
}

std::tuple<at::Tensor, at::Tensor> pdcr_fwd_cpu(const at::Tensor& fa, const at::Tensor& phia, const at::Tensor& fb,
                                                const at::Tensor& phib, const at::Tensor& valid_a,
                                                const at::Tensor& valid_b, double inv_tau, bool swapped, bool fg_l1,
                                                bool exclude_self, c10::string_view input_precision) {
  check_pdcr_inputs(fa, phia, fb, phib, valid_a, valid_b, at::kCPU);
  dot_precision_code(input_precision);  // checked; the CPU computes IEEE
  const Options o = make_options(fa, phia, swapped, fg_l1, exclude_self);
  const Dims d{fa.size(0), fa.size(1), fb.size(1)};
  at::Tensor loss = at::zeros({d.B, d.N}, fa.options());
  at::Tensor lse = at::full({d.B, d.N, o.W}, -std::numeric_limits<double>::infinity(), fa.options());
  if (fa.scalar_type() == at::kFloat) {
    forward_impl<float>(fa, phia, fb, phib, valid_a, valid_b, o, d, static_cast<float>(inv_tau), loss, lse);
  } else {
    forward_impl<double>(fa, phia, fb, phib, valid_a, valid_b, o, d, inv_tau, loss, lse);
  }
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> pdcr_bwd_cpu(const at::Tensor& grad_row, const at::Tensor& fa,
                                                const at::Tensor& phia, const at::Tensor& fb, const at::Tensor& phib,
                                                const at::Tensor& valid_a, const at::Tensor& valid_b,
                                                const at::Tensor& row_lse, double inv_tau, bool swapped, bool fg_l1,
                                                bool exclude_self, c10::string_view input_precision) {
  check_pdcr_inputs(fa, phia, fb, phib, valid_a, valid_b, at::kCPU);
  dot_precision_code(input_precision);
  const Options o = make_options(fa, phia, swapped, fg_l1, exclude_self);
  const Dims d{fa.size(0), fa.size(1), fb.size(1)};
  check_pdcr_bwd_inputs(grad_row, row_lse, fa, phia, at::kCPU);
  const at::Tensor g = grad_row.contiguous();
  const at::Tensor lse = row_lse.contiguous();
  at::Tensor grad_fa = at::zeros_like(fa);
  at::Tensor grad_fb = at::zeros_like(fb);
  if (fa.scalar_type() == at::kFloat) {
    backward_impl<float>(g, fa, phia, fb, phib, valid_a, valid_b, lse, o, d, static_cast<float>(inv_tau), grad_fa,
                         grad_fb);
  } else {
    backward_impl<double>(g, fa, phia, fb, phib, valid_a, valid_b, lse, o, d, inv_tau, grad_fa, grad_fb);
  }
  return {grad_fa, grad_fb};
}

std::tuple<at::Tensor, at::Tensor> pdcr_intra_fwd_cpu(const at::Tensor& f, const at::Tensor& phi,
                                                      const at::Tensor& valid, double inv_tau, bool swapped,
                                                      bool fg_l1, bool exclude_self,
                                                      c10::string_view input_precision) {
  return pdcr_fwd_cpu(f, phi, f, phi, valid, valid, inv_tau, swapped, fg_l1, exclude_self, input_precision);
}

at::Tensor pdcr_intra_bwd_cpu(const at::Tensor& grad_row, const at::Tensor& f, const at::Tensor& phi,
                              const at::Tensor& valid, const at::Tensor& row_lse, double inv_tau, bool swapped,
                              bool fg_l1, bool exclude_self, c10::string_view input_precision) {
  check_pdcr_inputs(f, phi, f, phi, valid, valid, at::kCPU);
  dot_precision_code(input_precision);
  check_pdcr_bwd_inputs(grad_row, row_lse, f, phi, at::kCPU);
  const Options o = make_options(f, phi, swapped, fg_l1, exclude_self);
  const Dims d{f.size(0), f.size(1), f.size(1)};
  const at::Tensor g = grad_row.contiguous();
  const at::Tensor lse = row_lse.contiguous();
  at::Tensor grad_f = at::zeros_like(f);
  if (f.scalar_type() == at::kFloat) {
    intra_backward_impl<float>(g, f, phi, valid, lse, o, d, static_cast<float>(inv_tau), grad_f);
  } else {
    intra_backward_impl<double>(g, f, phi, valid, lse, o, d, inv_tau, grad_f);
  }
  return grad_f;
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CPU, m) {
  m.impl("pdcr_fwd", &affseg::pdcr_fwd_cpu);
  m.impl("pdcr_bwd", &affseg::pdcr_bwd_cpu);
  m.impl("pdcr_intra_fwd", &affseg::pdcr_intra_fwd_cpu);
  m.impl("pdcr_intra_bwd", &affseg::pdcr_intra_bwd_cpu);
}
