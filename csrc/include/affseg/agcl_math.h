// Semi-AGCL arithmetic (SPEC §7), shared by the CPU kernels (csrc/cpu/agcl.cpp) and the CUDA kernels
// (csrc/cuda/agcl_kernels.cu): the affinity kernel and its derivative, the total order of the
// hard-negative ranking, and the mixed-negative logit and its gradient coefficients.
//
// Affinity (Eq. 2): A_ij = exp(−dist_ij·k), k = inv_two_sigma2, dist_ij = Σ_d φ(t_id − s_jd) with
// φ(x) = x² (squared L2) or |x| (L1). ∂A_ij/∂s_jd = A_ij · c · g(t_id − s_jd) with c = 2k, g(x) = x
// (squared L2) or c = k, g(x) = sign(x), sign(0) = 0 (L1; the subgradient torch's abs uses).
//
// Ranking of the hard negatives: candidate (dot a, index ia) ranks before (dot b, index ib) when a > b,
// or a == b and ia < ib (ties: lower index first). A NaN dot ranks before every number (as torch.topk
// and torch.sort(descending=True) place NaN first); NaNs among themselves by index. Index < 0 marks an
// empty slot, which ranks after everything. This is a strict total order on distinct indices, so the
// top list is deterministic whatever order candidates arrive in.
//
// Mixed negative (Eq. 6, MoCHi): m = α n_i + (1−α) n_j, ‖m‖² = α²‖n_i‖² + (1−α)²‖n_j‖² + 2α(1−α) n_i·n_j,
// logit = (α q·n_i + (1−α) q·n_j) / max(‖m‖, 1e-8) · inv_tau: no mixed vector is built.
// ∂logit/∂q = inv_tau · m / max(‖m‖, 1e-8) = ci n_i + cj n_j with ci = α·inv_tau/max(‖m‖, 1e-8),
// cj = (1−α)·inv_tau/max(‖m‖, 1e-8).
#pragma once
#include <cmath>

#include "affseg/macros.h"
#include "affseg/simd_math.h"
#include "affseg/supcon_math.h"

namespace affseg {
namespace agcl {

using supcon::neg_inf;

// φ(t − s): the per-dimension distance term.
template <typename T>
AFFSEG_HD T dist_term(T t, T s, bool l1) {
  const T x = t - s;
  return l1 ? (x < T(0) ? -x : x) : x * x;
}

// g(t − s): the per-dimension derivative factor (without the constant c). sign(0) = 0; NaN stays NaN.
template <typename T>
AFFSEG_HD T grad_term(T t, T s, bool l1) {
  const T x = t - s;
  const T sign = x > T(0) ? T(1) : (x < T(0) ? T(-1) : (x != x ? x : T(0)));
  return l1 ? sign : x;
}

// c: 2k (squared L2) or k (L1).
template <typename T>
AFFSEG_HD T grad_scale(T inv_two_sigma2, bool l1) {
  return l1 ? inv_two_sigma2 : T(2) * inv_two_sigma2;
}

template <typename T>
AFFSEG_HD T affinity(T dist, T inv_two_sigma2) {
  return simd::exp(-dist * inv_two_sigma2);
}

// The ranking above: true when (a, ia) comes before (b, ib) in a query's hard list.
template <typename T, typename I>
AFFSEG_HD bool ranks_before(T a, I ia, T b, I ib) {
  if (ib < 0) return ia >= 0;
  if (ia < 0) return false;
  const bool a_nan = a != a, b_nan = b != b;
  if (a_nan | b_nan) return a_nan && (!b_nan || ia < ib);
  return a > b || (a == b && ia < ib);
}

// Online log-sum-exp state (running max m, sum s of exp(x − m), NaN seen).
template <typename T>
struct Lse {
  T m, s;
  bool nan;
};

template <typename T>
AFFSEG_HD Lse<T> lse_empty() {
  return Lse<T>{neg_inf<T>(), T(0), false};
}

// Merge two partial states (either may be empty).
template <typename T>
AFFSEG_HD Lse<T> lse_merge(Lse<T> a, Lse<T> b) {
  const T m = a.m > b.m ? a.m : b.m;
  Lse<T> r;
  r.nan = a.nan || b.nan;
  r.m = m;
  r.s = (m == neg_inf<T>()) ? T(0) : a.s * supcon::rescale(a.m, m) + b.s * supcon::rescale(b.m, m);
  return r;
}

// Add one logit x (−inf: an invalid entry, ignored; NaN: recorded).
template <typename T>
AFFSEG_HD Lse<T> lse_push(Lse<T> a, T x) {
  if (x != x) {
    a.nan = true;
    return a;
  }
  if (x == neg_inf<T>()) return a;
  if (x > a.m) {
    a.s = a.s * supcon::rescale(a.m, x) + T(1);
    a.m = x;
  } else {
    a.s += simd::exp(x - a.m);
  }
  return a;
}

template <typename T>
AFFSEG_HD T lse_value(Lse<T> a) {
  return a.nan ? T(NAN) : supcon::lse_finish(a.m, a.s);
}

// Backward weight exp(x − lse) of a valid queue logit x; 0 when the row has no valid entry.
template <typename T>
AFFSEG_HD T queue_weight(T x, T lse) {
  return lse == neg_inf<T>() ? T(0) : simd::exp(x - lse);
}

constexpr double kMixNormEps = 1e-8;

// Pair (a, c) of positions into a hard list of `count` entries, stored length `len`: valid iff
// 0 ≤ a, c < min(count, len) and a ≠ c. (Positions past the stored list are invalid, not read.)
template <typename I>
AFFSEG_HD bool pair_valid(I a, I c, I count, I len) {
  const I lim = count < len ? count : len;
  return a >= 0 && c >= 0 && a < lim && c < lim && a != c;
}

// 1 / max(‖m‖, eps) from the pair's dots.
template <typename T>
AFFSEG_HD T mix_inv_norm(T alpha, T ni_ni, T nj_nj, T ni_nj) {
  const T beta = T(1) - alpha;
  T sq = alpha * alpha * ni_ni + beta * beta * nj_nj + T(2) * alpha * beta * ni_nj;
  sq = sq < T(0) ? T(0) : sq;  // rounding on nearly opposite negatives; NaN passes through
  const T norm = std::sqrt(sq);
  const T eps = static_cast<T>(kMixNormEps);
  return T(1) / (norm < eps ? eps : norm);
}

// The pair's five dots (q·n_i, q·n_j, n_i·n_j, ‖n_i‖², ‖n_j‖²) of the raw queue rows, turned into
// those of the unit rows n̂ = s·n (s_i = 1 / max(‖n_i‖, eps), one per queue entry): the queue is
// never copied normalised.
template <typename T>
AFFSEG_HD void unit_pair_dots(T d[5], T s_i, T s_j) {
  d[0] *= s_i;
  d[1] *= s_j;
  d[2] *= s_i * s_j;
  d[3] *= s_i * s_i;
  d[4] *= s_j * s_j;
}

template <typename T>
AFFSEG_HD T mixed_logit(T alpha, T q_ni, T q_nj, T inv_norm, T inv_tau) {
  return (alpha * q_ni + (T(1) - alpha) * q_nj) * inv_norm * inv_tau;
}

}  // namespace agcl
}  // namespace affseg
