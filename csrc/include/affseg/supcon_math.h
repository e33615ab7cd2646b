// Soft SupCon denominator (SPEC §4): row log-sum-exp of cosine logits over the valid other columns.
//
// Math: s_ik = inv_tau · f_i·f_k on unit rows f. lse_i = LSE_{k≠i, valid_k} s_ik (−inf when row i has
// no such column), computed online over column tiles (running max m and rescaled sum). Backward with
// p_ik = exp(s_ik − lse_i) and a_i = g_i (0 when g_i == 0 or lse_i == −inf, so such rows add nothing):
//   grad f_j = inv_tau · Σ_{k≠j} w_jk f_k,  w_jk = [valid_k] a_j p_jk + [valid_j] a_k p_kj,
// using s_jk = s_kj: the column sum of the transposed term joins the row sweep of row j, so the
// backward is one deterministic sweep per row (no atomics) that recomputes the dot products.
//
// Memory traffic per call: O(N·C) inputs and outputs, O(N) per-row statistics; the N² logits are
// recomputed tile by tile (forward 2·N²·C flops, backward 4·N²·C) and never stored.
//
// Limits: rows must be unit vectors (|s| ≤ inv_tau), so exp never overflows after max-subtraction.
// NaN in f reaches the max (NaN-propagating compare) and the sums, so it propagates to lse and grads.
#pragma once
#include "affseg/macros.h"
#include "affseg/simd_math.h"

namespace affseg {
namespace supcon {

// −∞ usable in host and device code (std::numeric_limits is host-only under nvcc).
template <typename T>
AFFSEG_HD T neg_inf() {
  return -static_cast<T>(INFINITY);
}

// Merge a tile (its max `tile_max`, Σ exp(x − new_max) computed by the caller) into the running (m, s):
// returns the rescale factor of the old sum for the new max.
template <typename T>
AFFSEG_HD T rescale(T old_max, T new_max) {
  return old_max == neg_inf<T>() ? T(0) : simd::exp(old_max - new_max);
}

template <typename T>
AFFSEG_HD T lse_finish(T m, T s) {
  return m == neg_inf<T>() ? m : m + simd::log(s);
}

// Whether exp(s − inv_tau) for every |s| ≤ inv_tau (unit rows) is a normal number, so that the LSE
// can use the fixed shift inv_tau instead of a running maximum: 2·inv_tau below 80 (float) or 600
// (double), τ ≥ 0.025 in float32. (A sum of up to 2^31 terms ≤ 1 cannot overflow either.)
template <typename T>
AFFSEG_HD bool fixed_shift(T inv_tau) {
  return inv_tau <= (sizeof(T) == 4 ? T(40) : T(300));
}

// The backward coefficient a_i of row i: g_i, or 0 where the row contributes nothing.
template <typename T>
AFFSEG_HD T row_coefficient(T g, T lse) {
  return (g != T(0) && lse != neg_inf<T>()) ? g : T(0);
}

// w_jk of the backward for logit x = s_jk (k ≠ j): a_j p_jk over valid k, plus a_k p_kj over valid j.
// Branch-free (both exps always, then selects) so the CPU loop over k vectorises; a term that is not
// used is dropped by the select, never multiplied, so its possibly infinite exp cannot make a NaN.
template <typename T>
AFFSEG_HD T pair_weight(T x, T a_j, T lse_j, bool valid_k, T a_k, T lse_k, bool valid_j) {
  const T forward = simd::exp(x - lse_j);
  const T transposed = simd::exp(x - lse_k);
  const bool use_forward = valid_k & (a_j != T(0));
  const bool use_transposed = valid_j & (a_k != T(0));
  return (use_forward ? a_j * forward : T(0)) + (use_transposed ? a_k * transposed : T(0));
}

}  // namespace supcon
}  // namespace affseg
