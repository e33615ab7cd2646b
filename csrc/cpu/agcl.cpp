// CPU kernels of the Semi-AGCL ops (SPEC §7): affinity_matrix(_bwd), hard_negatives, queue_lse_bwd,
// mixed_logits(_bwd). Per-element math: affseg/agcl_math.h (shared with csrc/cuda/agcl_kernels.cu);
// reference: affseg.reference.affinity_matrix / hard_negatives / mixed_logits.
//
// affinity_matrix: A_ij = exp(−k·Σ_d φ(t_id − s_jd)), y_t (N, D), y_s (M, D). y_s is transposed once
//   to (D, M) so every inner loop runs over contiguous columns j (`omp simd`, the exp of simd_math.h);
//   OpenMP over (row, column tile). Reads (N + M)·D, writes N·M; ~3·N·M·D flops + N·M exps. No
//   N×M×D temporary. Bwd: grad_s_jd = c Σ_i gA_ij A_ij g(t_id − s_jd), A recomputed, never read: a
//   thread owns a block of kColBlock columns and sweeps all rows in a fixed order (deterministic, no
//   atomics). Reads N·M + (N + M)·D, writes M·D; ~6·N·M·D flops + N·M exps.
// hard_negatives: one streaming pass over the queue per group of up to kMaxGroup·kRows queries (each
//   chunk serves the whole group while cached, so the queue is read ⌈B / (group size)⌉ times): each chunk
//   of kChunk entries is packed, scaled to unit rows (neg_scale), into a thread-local (C, 64-byte)
//   panel buffer (the normalised queue is never materialised: O(kChunk·C) extra memory per thread,
//   not O(Q·C)); a register-blocked kRows × 2-vector dot micro-kernel fills a
//   (kRows, kChunk) tile; per row, an `omp simd` online log-sum-exp over the tile's valid logits, then
//   a scalar filter against the current H-th best pushes candidates into a buffer of 2H, cut back to
//   the H best by nth_element when it fills, sorted at the end (agcl::ranks_before: descending dot,
//   ties lower index first, NaN dots first). The B×Q matrix is never built. Reads B·C + Q·C·⌈B/(group·kRows)⌉
//   (cache permitting) plus Q (neg_scale), writes B·(H + 2); 2·B·Q·C flops + B·Q exps.
// queue_lse_bwd: the same sweep recomputing the dots; grad_q_b = g_b·inv_tau Σ_valid e^{x − lse} s_n·n,
//   accumulated over the chunk's raw row-major entries, kRows queries per load (fixed order: deterministic).
//   4·B·Q·C flops + B·Q exps. (0·NaN: a NaN queue row reaches every query's gradient, as in the
//   reference's (B, Q) @ (Q, C) product.)
// mixed_logits(_bwd): OpenMP over (query, pair) / queries: five C-long dots per pair (q·n_i, q·n_j,
//   n_i·n_j, ‖n_i‖², ‖n_j‖²) of the raw rows, scaled to the unit rows by agcl::unit_pair_dots, no mixed
//   vector; bwd accumulates ci s_i n_i + cj s_j n_j per query in pair
//   order (deterministic). Reads B·P·2·C, ~10·B·P·C flops.
//
// Limits: float32/float64 (one dtype for every float input), int64 indices; no size limits beyond
// int64 indexing. Invalid pair positions, and hard_idx entries outside [0, Q), give −inf / no gradient
// (never an out-of-bounds read). NaN in any input propagates to the values it touches: queue_lse is
// NaN when any valid logit is NaN; a NaN dot ranks first in the hard list (see agcl_math.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "affseg/checks.h"
#include "affseg/cpu_isa.h"
#include "affseg/glue_checks.h"

// See csrc/cpu/supcon.cpp: lets GCC if-convert the selects of the math headers so `omp simd` loops
// vectorise. Nothing here reads floating-point exception flags.
#pragma GCC optimize("no-trapping-math")
#pragma GCC diagnostic ignored "-Wpsabi"
#include "affseg/agcl_math.h"
#include "affseg/simd_math.h"

namespace affseg {
namespace {

constexpr int64_t kAffTile = 512;    // columns per affinity forward task
constexpr int64_t kColBlock = 64;    // columns owned by one affinity backward task
constexpr int kRows = 4;             // queries per dot micro-kernel (a micro-block)
constexpr int kMaxGroup = 8;         // micro-blocks sharing one sweep over the queue
constexpr int64_t kChunk = 256;      // queue entries per dot tile: kRows · kChunk dots stay in L1
constexpr int64_t kPadBytes = 64;    // queue panel width (one cache line of entries, two AVX2 vectors)

#define AFFSEG_ALWAYS_INLINE __attribute__((always_inline)) inline

template <typename T, int VB>
struct Vec {
  typedef T type __attribute__((vector_size(VB)));
};

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

template <typename T>
int64_t padded(int64_t n) {
  constexpr int64_t step = kPadBytes / sizeof(T);
  return (n + step - 1) / step * step;
}

// ---------------------------------------------------------------------------------------------------
// affinity

template <typename T>
struct AffArgs {
  const T* t;   // (N, D)
  const T* st;  // (D, M): y_s transposed
  int64_t N, M, D;
  T k;
  bool l1;
};

// dist[j] = Σ_d φ(t_d − s_{d, j0 + j}) for j < width.
template <typename T>
AFFSEG_ALWAYS_INLINE void column_dists(const AffArgs<T>& a, const T* t_row, int64_t j0, int64_t width, T* dist) {
  for (int64_t j = 0; j < width; ++j) dist[j] = T(0);
  for (int64_t d = 0; d < a.D; ++d) {
    const T td = t_row[d];
    const T* s = a.st + d * a.M + j0;
    if (a.l1) {
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) dist[j] += agcl::dist_term(td, s[j], true);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) dist[j] += agcl::dist_term(td, s[j], false);
    }
  }
}

template <typename T>
AFFSEG_ALWAYS_INLINE void affinity_tile(const AffArgs<T>& a, int64_t i, int64_t j0, T* out) {
  const int64_t width = std::min(kAffTile, a.M - j0);
  T* row = out + i * a.M + j0;
  column_dists(a, a.t + i * a.D, j0, width, row);
#pragma omp simd
  for (int64_t j = 0; j < width; ++j) row[j] = agcl::affinity(row[j], a.k);
}

// grad_s for columns j0 .. j0 + width − 1; acc is (D, kColBlock) scratch.
template <typename T>
AFFSEG_ALWAYS_INLINE void affinity_bwd_block(const AffArgs<T>& a, const T* grad_a, int64_t j0, T* acc, T* grad_s) {
  const int64_t width = std::min(kColBlock, a.M - j0);
  alignas(64) T w[kColBlock];
  std::fill(acc, acc + a.D * kColBlock, T(0));
  for (int64_t i = 0; i < a.N; ++i) {
    const T* t_row = a.t + i * a.D;
    column_dists(a, t_row, j0, width, w);
    const T* g = grad_a + i * a.M + j0;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) w[j] = g[j] * agcl::affinity(w[j], a.k);
    for (int64_t d = 0; d < a.D; ++d) {
      const T td = t_row[d];
      const T* s = a.st + d * a.M + j0;
      T* ad = acc + d * kColBlock;
      if (a.l1) {
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) ad[j] += w[j] * agcl::grad_term(td, s[j], true);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) ad[j] += w[j] * agcl::grad_term(td, s[j], false);
      }
    }
  }
  const T c = agcl::grad_scale(a.k, a.l1);
  for (int64_t j = 0; j < width; ++j) {
    for (int64_t d = 0; d < a.D; ++d) grad_s[(j0 + j) * a.D + d] = c * acc[d * kColBlock + j];
  }
}

// ---------------------------------------------------------------------------------------------------
// queue sweep (hard_negatives, queue_lse_bwd)

template <typename T>
struct QueueArgs {
  const T* q;      // (B, C)
  const T* neg;    // (Q, C) row-major, raw
  const T* scale;  // (Q,): 1 / max(‖n‖, eps), the unit rows are scale · neg
  const int64_t* q_cls;
  const int64_t* neg_cls;
  int64_t B, Q, C, H;
  T inv_tau;
  bool use_classes;
};

template <typename T>
struct Cand {
  T dot;
  int64_t idx;
};

template <typename T>
struct CandOrder {
  bool operator()(const Cand<T>& x, const Cand<T>& y) const { return agcl::ranks_before(x.dot, x.idx, y.dot, y.idx); }
};

// Entries j0 .. j0 + live − 1 as unit rows in panels (width / PW, C, PW), PW = 64 bytes of entries,
// zero past live (width = padded(live)).
template <typename T>
AFFSEG_ALWAYS_INLINE void pack_chunk(const QueueArgs<T>& a, int64_t j0, int64_t live, int64_t width, T* panel) {
  constexpr int64_t PW = kPadBytes / sizeof(T);
  const int64_t C = a.C;
  for (int64_t j = 0; j < width; ++j) {
    T* dst = panel + j / PW * C * PW + j % PW;
    if (j >= live) {
      for (int64_t c = 0; c < C; ++c) dst[c * PW] = T(0);
      continue;
    }
    const T* src = a.neg + (j0 + j) * C;
    const T sc = a.scale[j0 + j];
    for (int64_t c = 0; c < C; ++c) dst[c * PW] = src[c] * sc;
  }
}

// dots[r][j] = q_{row r} · n̂_j for j < width (a multiple of two vectors) from a packed chunk. The
// panel layout makes every load of the channel loop the next 2 vectors of one contiguous (C, PW)
// panel.
template <typename T, int VB>
AFFSEG_ALWAYS_INLINE void dot_chunk(const T* const rows[kRows], const T* panel, int64_t C, int64_t width,
                                    T (*dots)[kChunk]) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t L = VB / sizeof(T);
  constexpr int64_t PW = kPadBytes / sizeof(T);
  static_assert(PW % (2 * L) == 0 && kChunk % PW == 0, "panels hold whole vector pairs; chunks whole panels");
  for (int64_t j = 0; j < width; j += 2 * L) {
    V acc[kRows][2] = {};
    const T* col = panel + j / PW * C * PW + j % PW;
    for (int64_t c = 0; c < C; ++c) {
      const V b0 = load_vec<V>(col + c * PW);
      const V b1 = load_vec<V>(col + c * PW + L);
      for (int r = 0; r < kRows; ++r) {
        const T x = rows[r][c];
        acc[r][0] += x * b0;
        acc[r][1] += x * b1;
      }
    }
    for (int r = 0; r < kRows; ++r) {
      store_vec(dots[r] + j, acc[r][0]);
      store_vec(dots[r] + j + L, acc[r][1]);
    }
  }
}

// Per-row state of a hard_negatives task.
template <typename T>
struct HardRow {
  T m, s;
  bool nan;
  int64_t n_valid;
  Cand<T> thr;  // the current H-th best (idx −1: the list is not full, everything passes)
  std::vector<Cand<T>> buf;
};

template <typename T>
AFFSEG_ALWAYS_INLINE void prune(HardRow<T>& st, int64_t H) {
  std::nth_element(st.buf.begin(), st.buf.begin() + (H - 1), st.buf.end(), CandOrder<T>());
  st.buf.resize(static_cast<size_t>(H));
  st.thr = st.buf[H - 1];
}

// One chunk of one row: online LSE of the valid logits, then the top-H filter.
template <typename T>
AFFSEG_ALWAYS_INLINE void hard_chunk(const QueueArgs<T>& a, int64_t qcls, int64_t j0, int64_t live, const T* dot,
                                     T* logit, HardRow<T>& st) {
  const T neg_inf = agcl::neg_inf<T>();
  T tile_max = neg_inf;
  bool tile_nan = false;
  int64_t n_valid = 0;
  const int64_t* nc = a.neg_cls + j0;
  const bool use_classes = a.use_classes;
#pragma omp simd reduction(max : tile_max) reduction(| : tile_nan) reduction(+ : n_valid)
  for (int64_t j = 0; j < live; ++j) {
    const bool ok = !use_classes || nc[j] != qcls;
    const T v = ok ? dot[j] * a.inv_tau : neg_inf;
    tile_nan |= v != v;
    tile_max = v > tile_max ? v : tile_max;
    n_valid += ok ? 1 : 0;
    logit[j] = v;
  }
  st.nan = st.nan || tile_nan;
  st.n_valid += n_valid;
  if (tile_max != neg_inf) {
    const T new_max = tile_max > st.m ? tile_max : st.m;
    T sum = T(0);
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < live; ++j) sum += simd::exp(logit[j] - new_max);
    st.s = st.s * supcon::rescale(st.m, new_max) + sum;
    st.m = new_max;
  }
  if (a.H == 0) return;
  const size_t cap = static_cast<size_t>(2 * a.H);
  for (int64_t j = 0; j < live; ++j) {
    if (use_classes && nc[j] == qcls) continue;
    if (!agcl::ranks_before(dot[j], j0 + j, st.thr.dot, st.thr.idx)) continue;
    st.buf.push_back(Cand<T>{dot[j], j0 + j});
    if (st.buf.size() == cap) prune(st, a.H);
  }
}

// A micro-block of kRows queries (rows past B repeat the last one; their results are dropped).
template <typename T>
struct QueryBlock {
  const T* rows[kRows];
  int64_t cls[kRows];
  int nr;
};

template <typename T>
AFFSEG_ALWAYS_INLINE QueryBlock<T> query_block(const QueueArgs<T>& a, int64_t i0) {
  QueryBlock<T> qb;
  qb.nr = static_cast<int>(std::min<int64_t>(kRows, a.B - i0));
  for (int r = 0; r < kRows; ++r) {
    const int64_t b = std::min(i0 + r, a.B - 1);
    qb.rows[r] = a.q + b * a.C;
    qb.cls[r] = a.q_cls[b];
  }
  return qb;
}

// Queries of micro-blocks blk0 .. blk0 + nblk − 1 (nblk ≤ kMaxGroup): one sweep over the queue in which
// every chunk serves all the group's micro-blocks while it is in cache (the queue is read once per
// group, not once per micro-block).
template <typename T, int VB>
AFFSEG_ALWAYS_INLINE void hard_group(const QueueArgs<T>& a, int64_t blk0, int nblk, HardRow<T>* state, T* panel,
                                     T* lse, int64_t* hard_idx, int64_t* hard_count) {
  alignas(64) T dots[kRows][kChunk];
  alignas(64) T logit[kChunk];
  QueryBlock<T> blocks[kMaxGroup];
  for (int g = 0; g < nblk; ++g) {
    blocks[g] = query_block(a, (blk0 + g) * kRows);
    for (int r = 0; r < kRows; ++r) {
      HardRow<T>& st = state[g * kRows + r];
      st.m = agcl::neg_inf<T>();
      st.s = T(0);
      st.nan = false;
      st.n_valid = 0;
      st.thr = Cand<T>{T(0), -1};
      st.buf.clear();
    }
  }
  for (int64_t j0 = 0; j0 < a.Q; j0 += kChunk) {
    const int64_t live = std::min(kChunk, a.Q - j0);
    const int64_t width = padded<T>(live);
    pack_chunk(a, j0, live, width, panel);
    for (int g = 0; g < nblk; ++g) {
      dot_chunk<T, VB>(blocks[g].rows, panel, a.C, width, dots);
      for (int r = 0; r < blocks[g].nr; ++r) {
        hard_chunk(a, blocks[g].cls[r], j0, live, dots[r], logit, state[g * kRows + r]);
      }
    }
  }
  for (int g = 0; g < nblk; ++g) {
    for (int r = 0; r < blocks[g].nr; ++r) {
      HardRow<T>& st = state[g * kRows + r];
      const int64_t b = (blk0 + g) * kRows + r;
      lse[b] = st.nan ? std::numeric_limits<T>::quiet_NaN() : supcon::lse_finish(st.m, st.s);
      std::sort(st.buf.begin(), st.buf.end(), CandOrder<T>());
      const int64_t count = std::min<int64_t>(a.H, st.n_valid);
      int64_t* out = hard_idx + b * a.H;
      for (int64_t p = 0; p < a.H; ++p) out[p] = p < count ? st.buf[p].idx : -1;
      hard_count[b] = count;
    }
  }
}

// grad_q for the group's queries: coef_b Σ_valid exp(x − lse_b) n. acc: (nblk · kRows, C) scratch.
template <typename T, int VB>
AFFSEG_ALWAYS_INLINE void queue_bwd_group(const QueueArgs<T>& a, int64_t blk0, int nblk, const T* grad, const T* lse,
                                          T* panel, T* acc, T* grad_q) {
  alignas(64) T w[kRows][kChunk];
  QueryBlock<T> blocks[kMaxGroup];
  for (int g = 0; g < nblk; ++g) blocks[g] = query_block(a, (blk0 + g) * kRows);
  std::fill(acc, acc + nblk * kRows * a.C, T(0));
  const T neg_inf = agcl::neg_inf<T>();
  const bool use_classes = a.use_classes;
  for (int64_t j0 = 0; j0 < a.Q; j0 += kChunk) {
    const int64_t live = std::min(kChunk, a.Q - j0);
    const int64_t width = padded<T>(live);
    const int64_t* nc = a.neg_cls + j0;
    const T* sc = a.scale + j0;
    pack_chunk(a, j0, live, width, panel);
    for (int g = 0; g < nblk; ++g) {
      const QueryBlock<T>& qb = blocks[g];
      dot_chunk<T, VB>(qb.rows, panel, a.C, width, w);
      for (int r = 0; r < kRows; ++r) {
        T* x = w[r];
        const T l = lse[std::min((blk0 + g) * kRows + r, a.B - 1)];
        const int64_t qc = qb.cls[r];
#pragma omp simd
        for (int64_t j = 0; j < live; ++j) {
          const bool ok = (!use_classes || nc[j] != qc) & (l != neg_inf);
          // The raw row n is accumulated below, so its weight carries n's scale (n̂ = s·n); a NaN
          // scale (a NaN row) reaches every query through 0·NaN, as n̂'s NaN row does in the reference.
          const T e = agcl::queue_weight(x[j] * a.inv_tau, l);
          x[j] = (ok ? e : T(0)) * sc[j];
        }
      }
      // acc[r][:] += Σ_j w[r][j] n_{j0+j}: one pass over the chunk's contiguous raw rows, four queries per load.
      T* acc0 = acc + g * kRows * a.C;
      T* acc1 = acc0 + a.C;
      T* acc2 = acc0 + 2 * a.C;
      T* acc3 = acc0 + 3 * a.C;
      for (int64_t j = 0; j < live; ++j) {
        const T* v = a.neg + (j0 + j) * a.C;
        const T w0 = w[0][j], w1 = w[1][j], w2 = w[2][j], w3 = w[3][j];
#pragma omp simd
        for (int64_t c = 0; c < a.C; ++c) {
          acc0[c] += w0 * v[c];
          acc1[c] += w1 * v[c];
          acc2[c] += w2 * v[c];
          acc3[c] += w3 * v[c];
        }
      }
    }
  }
  for (int g = 0; g < nblk; ++g) {
    for (int r = 0; r < blocks[g].nr; ++r) {
      const int64_t b = (blk0 + g) * kRows + r;
      const T* ab = acc + (g * kRows + r) * a.C;
      const T coef = grad[b] * a.inv_tau;
      const bool live_row = lse[b] != neg_inf;
      for (int64_t c = 0; c < a.C; ++c) grad_q[b * a.C + c] = live_row ? coef * ab[c] : T(0);
    }
  }
}

// Micro-blocks per group: enough groups for two per thread, at most kMaxGroup micro-blocks each.
inline int group_size(int64_t blocks) {
#ifdef _OPENMP
  const int64_t threads = omp_get_max_threads();
#else
  const int64_t threads = 1;
#endif
  const int64_t g = blocks / (2 * threads);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxGroup, g)));
}

// ---------------------------------------------------------------------------------------------------
// mixed logits

template <typename T>
struct MixArgs {
  const T* q;      // (B, C)
  const T* neg;    // (Q, C), raw
  const T* scale;  // (Q,): the unit rows are scale · neg
  const T* alpha;  // (Q,)
  const int64_t* hard_idx;    // (B, H)
  const int64_t* hard_count;  // (B,)
  const int64_t* pairs;       // (B, P, 2)
  int64_t B, Q, C, H, P;
  T inv_tau;
};

// Resolves pair p of query b to queue rows (i, j); false when the pair is invalid.
template <typename T>
AFFSEG_ALWAYS_INLINE bool resolve_pair(const MixArgs<T>& a, int64_t b, int64_t p, int64_t& i, int64_t& j) {
  const int64_t pa = a.pairs[(b * a.P + p) * 2], pc = a.pairs[(b * a.P + p) * 2 + 1];
  if (!agcl::pair_valid<int64_t>(pa, pc, a.hard_count[b], a.H)) return false;
  i = a.hard_idx[b * a.H + pa];
  j = a.hard_idx[b * a.H + pc];
  return i >= 0 && i < a.Q && j >= 0 && j < a.Q;
}

// The pair's dots: q·n_i, q·n_j, n_i·n_j, ‖n_i‖², ‖n_j‖².
template <typename T>
AFFSEG_ALWAYS_INLINE void pair_dots(const T* qb, const T* ni, const T* nj, int64_t C, T out[5]) {
  T qi = T(0), qj = T(0), ij = T(0), ii = T(0), jj = T(0);
#pragma omp simd reduction(+ : qi, qj, ij, ii, jj)
  for (int64_t c = 0; c < C; ++c) {
    qi += qb[c] * ni[c];
    qj += qb[c] * nj[c];
    ij += ni[c] * nj[c];
    ii += ni[c] * ni[c];
    jj += nj[c] * nj[c];
  }
  out[0] = qi;
  out[1] = qj;
  out[2] = ij;
  out[3] = ii;
  out[4] = jj;
}

// ---------------------------------------------------------------------------------------------------
// The OpenMP loops, one build per ISA (affseg/cpu_isa.h).
#define AFFSEG_AGCL_LOOPS                                                                                       \
  constexpr int kVecBytes = kIsaLevel == ::affseg::cpu::kBaseline ? 16 : 32;                                    \
  struct Loops {                                                                                                \
    template <typename T>                                                                                       \
    static void affinity(const AffArgs<T>& a, T* out) {                                                         \
      const int64_t tiles = (a.M + kAffTile - 1) / kAffTile;                                                    \
      _Pragma("omp parallel for collapse(2) schedule(static)") for (int64_t i = 0; i < a.N; ++i) {              \
        for (int64_t t = 0; t < tiles; ++t) affinity_tile<T>(a, i, t * kAffTile, out);                          \
      }                                                                                                         \
    }                                                                                                           \
    template <typename T>                                                                                       \
    static void affinity_bwd(const AffArgs<T>& a, const T* grad_a, T* grad_s) {                                 \
      const int64_t blocks = (a.M + kColBlock - 1) / kColBlock;                                                 \
      _Pragma("omp parallel") {                                                                                 \
        std::vector<T> acc(static_cast<size_t>(a.D * kColBlock));                                               \
        _Pragma("omp for schedule(static)") for (int64_t blk = 0; blk < blocks; ++blk) {                        \
          affinity_bwd_block<T>(a, grad_a, blk * kColBlock, acc.data(), grad_s);                                \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
    template <typename T>                                                                                       \
    static void hard(const QueueArgs<T>& a, T* lse, int64_t* hard_idx, int64_t* hard_count) {                   \
      const int64_t blocks = (a.B + kRows - 1) / kRows;                                                         \
      const int group = group_size(blocks);                                                                     \
      const int64_t groups = (blocks + group - 1) / group;                                                      \
      _Pragma("omp parallel") {                                                                                 \
        std::vector<HardRow<T>> st(static_cast<size_t>(group * kRows));                                         \
        for (HardRow<T>& row : st) row.buf.reserve(static_cast<size_t>(2 * a.H));                               \
        std::vector<T> panel(static_cast<size_t>(kChunk * a.C));                                                \
        _Pragma("omp for schedule(dynamic, 1)") for (int64_t grp = 0; grp < groups; ++grp) {                    \
          const int n = static_cast<int>(std::min<int64_t>(group, blocks - grp * group));                       \
          hard_group<T, kVecBytes>(a, grp * group, n, st.data(), panel.data(), lse, hard_idx, hard_count);      \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
    template <typename T>                                                                                       \
    static void queue_bwd(const QueueArgs<T>& a, const T* grad, const T* lse, T* grad_q) {                      \
      const int64_t blocks = (a.B + kRows - 1) / kRows;                                                         \
      const int group = group_size(blocks);                                                                     \
      const int64_t groups = (blocks + group - 1) / group;                                                      \
      _Pragma("omp parallel") {                                                                                 \
        std::vector<T> acc(static_cast<size_t>(group * kRows * a.C));                                           \
        std::vector<T> panel(static_cast<size_t>(kChunk * a.C));                                                \
        _Pragma("omp for schedule(dynamic, 1)") for (int64_t grp = 0; grp < groups; ++grp) {                    \
          const int n = static_cast<int>(std::min<int64_t>(group, blocks - grp * group));                       \
          queue_bwd_group<T, kVecBytes>(a, grp * group, n, grad, lse, panel.data(), acc.data(), grad_q);        \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
    template <typename T>                                                                                       \
    static void mixed(const MixArgs<T>& a, T* out) {                                                            \
      _Pragma("omp parallel for collapse(2) schedule(static)") for (int64_t b = 0; b < a.B; ++b) {              \
        for (int64_t p = 0; p < a.P; ++p) {                                                                     \
          int64_t i = 0, j = 0;                                                                                 \
          T v = agcl::neg_inf<T>();                                                                             \
          if (resolve_pair(a, b, p, i, j)) {                                                                    \
            T d[5];                                                                                             \
            pair_dots(a.q + b * a.C, a.neg + i * a.C, a.neg + j * a.C, a.C, d);                                 \
            agcl::unit_pair_dots(d, a.scale[i], a.scale[j]);                                                    \
            const T al = a.alpha[i];                                                                            \
            v = agcl::mixed_logit(al, d[0], d[1], agcl::mix_inv_norm(al, d[3], d[4], d[2]), a.inv_tau);         \
          }                                                                                                     \
          out[b * a.P + p] = v;                                                                                 \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
    template <typename T>                                                                                       \
    static void mixed_bwd(const MixArgs<T>& a, const T* grad, T* grad_q) {                                      \
      _Pragma("omp parallel for schedule(static)") for (int64_t b = 0; b < a.B; ++b) {                          \
        T* g = grad_q + b * a.C;                                                                                \
        for (int64_t c = 0; c < a.C; ++c) g[c] = T(0);                                                          \
        for (int64_t p = 0; p < a.P; ++p) {                                                                     \
          int64_t i = 0, j = 0;                                                                                 \
          if (!resolve_pair(a, b, p, i, j)) continue;                                                           \
          const T* ni = a.neg + i * a.C;                                                                        \
          const T* nj = a.neg + j * a.C;                                                                        \
          T d[5];                                                                                               \
          pair_dots(a.q + b * a.C, ni, nj, a.C, d);                                                             \
          agcl::unit_pair_dots(d, a.scale[i], a.scale[j]);                                                      \
          const T al = a.alpha[i];                                                                              \
          const T scale = grad[b * a.P + p] * a.inv_tau * agcl::mix_inv_norm(al, d[3], d[4], d[2]);             \
          const T ci = scale * al * a.scale[i], cj = scale * (T(1) - al) * a.scale[j];                          \
          _Pragma("omp simd") for (int64_t c = 0; c < a.C; ++c) g[c] += ci * ni[c] + cj * nj[c];                \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  };
AFFSEG_FOR_EACH_ISA(AFFSEG_AGCL_LOOPS)
#undef AFFSEG_AGCL_LOOPS

// ---------------------------------------------------------------------------------------------------
// torch glue

template <typename T>
AffArgs<T> affinity_args(const at::Tensor& y_t, const at::Tensor& s_t, double k, bool l1) {
  return AffArgs<T>{y_t.data_ptr<T>(), s_t.data_ptr<T>(), y_t.size(0), s_t.size(1), y_t.size(1), static_cast<T>(k), l1};
}

at::Tensor affinity_matrix_cpu(const at::Tensor& y_t_in, const at::Tensor& y_s_in, double k, bool l1) {
  check_affinity_inputs(y_t_in, y_s_in, at::kCPU);
  const at::Tensor y_t = y_t_in.contiguous();
  const at::Tensor s_t = y_s_in.t().contiguous();  // (D, M)
  at::Tensor out = at::empty({y_t.size(0), y_s_in.size(0)}, y_t.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(y_t.scalar_type(), "affinity_matrix_cpu", [&] {
    const AffArgs<scalar_t> a = affinity_args<scalar_t>(y_t, s_t, k, l1);
    scalar_t* o = out.data_ptr<scalar_t>();
    AFFSEG_DISPATCH_ISA(isa::Loops::affinity<scalar_t>(a, o));
  });
  return out;
}

at::Tensor affinity_matrix_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& y_t_in, const at::Tensor& y_s_in,
                                   double k, bool l1) {
  check_affinity_bwd_inputs(grad_in, y_t_in, y_s_in, at::kCPU);
  const at::Tensor y_t = y_t_in.contiguous();
  const at::Tensor s_t = y_s_in.t().contiguous();
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor grad_s = at::zeros({y_s_in.size(0), y_s_in.size(1)}, y_t.options());
  if (grad_s.numel() == 0 || y_t.size(0) == 0) return grad_s;
  AT_DISPATCH_FLOATING_TYPES(y_t.scalar_type(), "affinity_matrix_bwd_cpu", [&] {
    const AffArgs<scalar_t> a = affinity_args<scalar_t>(y_t, s_t, k, l1);
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* o = grad_s.data_ptr<scalar_t>();
    AFFSEG_DISPATCH_ISA(isa::Loops::affinity_bwd<scalar_t>(a, g, o));
  });
  return grad_s;
}

template <typename T>
QueueArgs<T> queue_args(const at::Tensor& q, const at::Tensor& neg, const at::Tensor& scale, const at::Tensor& q_cls,
                        const at::Tensor& neg_cls, int64_t H, double inv_tau, bool use_classes) {
  return QueueArgs<T>{q.data_ptr<T>(), neg.data_ptr<T>(), scale.data_ptr<T>(), q_cls.data_ptr<int64_t>(),
                      neg_cls.data_ptr<int64_t>(), q.size(0), neg.size(0), q.size(1), H, static_cast<T>(inv_tau),
                      use_classes};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_negatives_cpu(const at::Tensor& q_in, const at::Tensor& neg_in,
                                                                  const at::Tensor& scale_in,
                                                                  const at::Tensor& q_cls_in,
                                                                  const at::Tensor& neg_cls_in, double inv_tau,
                                                                  int64_t n_hard, bool use_classes) {
  check_hard_inputs(q_in, neg_in, scale_in, q_cls_in, neg_cls_in, at::kCPU, "hard_negatives");
  TORCH_CHECK(n_hard >= 0, "hard_negatives: n_hard must be >= 0, got ", n_hard);
  const at::Tensor q = q_in.contiguous(), neg = neg_in.contiguous(), scale = scale_in.contiguous();
  const at::Tensor q_cls = q_cls_in.contiguous();
  const at::Tensor neg_cls = neg_cls_in.contiguous();
  const int64_t B = q.size(0), Q = neg.size(0);
  const int64_t H = std::min(n_hard, Q);
  at::Tensor lse = at::full({B}, -std::numeric_limits<double>::infinity(), q.options());
  at::Tensor idx = at::full({B, H}, -1, q_cls.options());
  at::Tensor count = at::zeros({B}, q_cls.options());
  if (B == 0 || Q == 0) return {lse, idx, count};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hard_negatives_cpu", [&] {
    const QueueArgs<scalar_t> a = queue_args<scalar_t>(q, neg, scale, q_cls, neg_cls, H, inv_tau, use_classes);
    scalar_t* l = lse.data_ptr<scalar_t>();
    int64_t* hi = idx.data_ptr<int64_t>();
    int64_t* hc = count.data_ptr<int64_t>();
    AFFSEG_DISPATCH_ISA(isa::Loops::hard<scalar_t>(a, l, hi, hc));
  });
  return {lse, idx, count};
}

at::Tensor queue_lse_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& neg_in,
                             const at::Tensor& scale_in, const at::Tensor& q_cls_in, const at::Tensor& neg_cls_in,
                             const at::Tensor& lse_in, double inv_tau, bool use_classes) {
  check_queue_lse_bwd_inputs(grad_in, q_in, neg_in, scale_in, q_cls_in, neg_cls_in, lse_in, at::kCPU);
  const at::Tensor q = q_in.contiguous(), neg = neg_in.contiguous(), scale = scale_in.contiguous();
  const at::Tensor q_cls = q_cls_in.contiguous();
  const at::Tensor neg_cls = neg_cls_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  at::Tensor grad_q = at::zeros_like(q);
  const int64_t Q = neg_in.size(0);
  if (grad_q.numel() == 0 || Q == 0) return grad_q;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "queue_lse_bwd_cpu", [&] {
    const QueueArgs<scalar_t> a = queue_args<scalar_t>(q, neg, scale, q_cls, neg_cls, 0, inv_tau, use_classes);
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* l = lse.data_ptr<scalar_t>();
    scalar_t* o = grad_q.data_ptr<scalar_t>();
    AFFSEG_DISPATCH_ISA(isa::Loops::queue_bwd<scalar_t>(a, g, l, o));
  });
  return grad_q;
}

template <typename T>
MixArgs<T> mix_args(const at::Tensor& q, const at::Tensor& neg, const at::Tensor& scale, const at::Tensor& alpha,
                    const at::Tensor& hard_idx, const at::Tensor& hard_count, const at::Tensor& pairs,
                    double inv_tau) {
  return MixArgs<T>{q.data_ptr<T>(), neg.data_ptr<T>(), scale.data_ptr<T>(), alpha.data_ptr<T>(), hard_idx.data_ptr<int64_t>(),
                    hard_count.data_ptr<int64_t>(), pairs.data_ptr<int64_t>(), q.size(0), neg.size(0), q.size(1),
                    hard_idx.size(1), pairs.size(1), static_cast<T>(inv_tau)};
}

at::Tensor mixed_logits_cpu(const at::Tensor& q_in, const at::Tensor& neg_in, const at::Tensor& scale_in,
                            const at::Tensor& alpha_in, const at::Tensor& hard_idx_in, const at::Tensor& hard_count_in,
                            const at::Tensor& pairs_in, double inv_tau) {
  check_mixed_inputs(q_in, neg_in, scale_in, alpha_in, hard_idx_in, hard_count_in, pairs_in, at::kCPU);
  const at::Tensor q = q_in.contiguous(), neg = neg_in.contiguous(), alpha = alpha_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor hard_idx = hard_idx_in.contiguous(), hard_count = hard_count_in.contiguous();
  const at::Tensor pairs = pairs_in.contiguous();
  at::Tensor out = at::empty({pairs.size(0), pairs.size(1)}, q.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mixed_logits_cpu", [&] {
    const MixArgs<scalar_t> a = mix_args<scalar_t>(q, neg, scale, alpha, hard_idx, hard_count, pairs, inv_tau);
    scalar_t* o = out.data_ptr<scalar_t>();
    AFFSEG_DISPATCH_ISA(isa::Loops::mixed<scalar_t>(a, o));
  });
  return out;
}

at::Tensor mixed_logits_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& neg_in,
                                const at::Tensor& scale_in, const at::Tensor& alpha_in, const at::Tensor& hard_idx_in,
                                const at::Tensor& hard_count_in, const at::Tensor& pairs_in, double inv_tau) {
  check_mixed_bwd_inputs(grad_in, q_in, neg_in, scale_in, alpha_in, hard_idx_in, hard_count_in, pairs_in, at::kCPU);
  const at::Tensor q = q_in.contiguous(), neg = neg_in.contiguous(), alpha = alpha_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor hard_idx = hard_idx_in.contiguous(), hard_count = hard_count_in.contiguous();
  const at::Tensor pairs = pairs_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor grad_q = at::zeros_like(q);
  if (grad_q.numel() == 0) return grad_q;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mixed_logits_bwd_cpu", [&] {
    const MixArgs<scalar_t> a = mix_args<scalar_t>(q, neg, scale, alpha, hard_idx, hard_count, pairs, inv_tau);
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* o = grad_q.data_ptr<scalar_t>();
    AFFSEG_DISPATCH_ISA(isa::Loops::mixed_bwd<scalar_t>(a, g, o));
  });
  return grad_q;
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CPU, m) {
  m.impl("affinity_matrix", &affseg::affinity_matrix_cpu);
  m.impl("affinity_matrix_bwd", &affseg::affinity_matrix_bwd_cpu);
  m.impl("hard_negatives", &affseg::hard_negatives_cpu);
  m.impl("queue_lse_bwd", &affseg::queue_lse_bwd_cpu);
  m.impl("mixed_logits", &affseg::mixed_logits_cpu);
  m.impl("mixed_logits_bwd", &affseg::mixed_logits_bwd_cpu);
}
