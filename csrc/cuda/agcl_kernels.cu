// CUDA kernels of the Semi-AGCL ops (SPEC §7); per-element math in affseg/agcl_math.h, shared with
// csrc/cpu/agcl.cpp; reference: affseg.reference.affinity_matrix / hard_negatives / mixed_logits.
//
// affinity_fwd: A_ij = exp(−k·Σ_d φ(t_id − s_jd)). A block of 32 × 8 threads computes a 32 × 32 tile
//   (4 rows per thread) from the tile's y_t rows and y_s columns staged in shared memory; coalesced
//   row-major writes. Reads (N + M)·D·(tiles), writes N·M; ~3·N·M·D flops + N·M exps.
// affinity_bwd: grad_s_jd = c Σ_i gA_ij A_ij g(t_id − s_jd) with A recomputed (never read). A block owns
//   32 columns (deterministic, no atomics) and sweeps all rows in 32-row tiles: the tile's weights
//   w_ij = gA_ij·A_ij go to shared memory, then thread (j, lane) accumulates the dimensions d ≡ lane
//   (mod 8) of column j in registers. Reads N·M + (N + M)·D, writes M·D; ~6·N·M·D flops + N·M exps.
// hard_negatives: one block per query streams the raw queue in chunks of 256 entries: warp w computes
//   the dots of entries w·32 .. w·32 + 31 (lanes over channels, coalesced, then a butterfly reduction),
//   times neg_scale (the unit rows are s·n; no normalised copy of the queue exists),
//   each thread then owns one entry: an online log-sum-exp per thread (merged over the block at the
//   end), and entries that rank before the current H-th best are appended to a shared candidate
//   buffer behind the top list. When the buffer could overflow, the list + buffer (next_pow2(H + 256)
//   entries) is bitonic-sorted by agcl::ranks_before and cut to H. Reads B·Q·C + B·C, writes
//   B·(H + 2); 2·B·Q·C flops + B·Q exps. The B × Q matrix is never built.
// queue_lse_bwd: the same sweep recomputing the dots; weights exp(x − lse) of a chunk go to shared
//   memory and thread c accumulates Σ w_n n_nc in registers (one owner per output: deterministic).
//   Reads 2·B·Q·C, writes B·C; 4·B·Q·C flops + B·Q exps.
// mixed_logits(_bwd): one block per query, one warp per pair: five C-long dots (q·n_i, q·n_j, n_i·n_j,
//   ‖n_i‖², ‖n_j‖²) of the raw rows, scaled by agcl::unit_pair_dots, no mixed vector. The backward's per-pair coefficients go to shared memory and the
//   block accumulates ci n_i + cj n_j per channel in pair order (deterministic). ~10·B·P·C flops.
//
// Limits (agcl_kernels.h, checked by agcl.cu): D ≤ kAffinityMaxDim = 64, N ≤ kAffinityMaxRows;
// C ≤ kAgclMaxDim = 1024, H ≤ kAgclMaxHard = 1024, Q ≤ 2^31 − 1; float32/float64. Invalid pair
// positions and hard_idx entries outside [0, Q) give −inf / no gradient, never an out-of-bounds read.
// NaN: queue_lse is NaN when a valid logit is NaN; NaN dots rank first in the hard list.
#include "agcl_kernels.h"

#include <cmath>

#include "affseg/agcl_math.h"

namespace affseg {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;                 // every kernel's block
constexpr int kWarps = kThreads / kWarp;
constexpr int kAffTile = 32;                  // affinity tile side (rows and columns)
constexpr int kAffStride = kAffinityMaxDim + 1;  // padded shared row: no bank conflicts across columns
constexpr int kAffRowsPerThread = kAffTile / kWarps;  // 4
constexpr int kAffDimsPerThread = kAffinityMaxDim / kWarps;  // 8
constexpr int kSortMax = 2048;                // next_pow2(kAgclMaxHard + kThreads)
constexpr int kDimPerThread = kAgclMaxDim / kThreads;  // 4

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---------------------------------------------------------------------------------------------------
// affinity

template <typename T>
__global__ void __launch_bounds__(kThreads)
    affinity_fwd_kernel(const T* __restrict__ y_t, const T* __restrict__ y_s, int64_t N, int64_t M, int D, T k,
                        bool l1, T* __restrict__ out) {
  __shared__ T ts[kAffTile][kAffStride];
  __shared__ T ss[kAffTile][kAffStride];
  const int tx = threadIdx.x % kAffTile, ty = threadIdx.x / kAffTile;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kAffTile;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kAffTile;
  for (int e = threadIdx.x; e < kAffTile * D; e += kThreads) {
    const int r = e / D, d = e % D;
    ts[r][d] = i0 + r < N ? y_t[(i0 + r) * D + d] : T(0);
    ss[r][d] = j0 + r < M ? y_s[(j0 + r) * D + d] : T(0);
  }
  __syncthreads();
  T dist[kAffRowsPerThread];
#pragma unroll
  for (int r = 0; r < kAffRowsPerThread; ++r) dist[r] = T(0);
  for (int d = 0; d < D; ++d) {
    const T s = ss[tx][d];
#pragma unroll
    for (int r = 0; r < kAffRowsPerThread; ++r) dist[r] += agcl::dist_term(ts[ty + kWarps * r][d], s, l1);
  }
  const int64_t j = j0 + tx;
  if (j >= M) return;
#pragma unroll
  for (int r = 0; r < kAffRowsPerThread; ++r) {
    const int64_t i = i0 + ty + kWarps * r;
    if (i < N) out[i * M + j] = agcl::affinity(dist[r], k);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    affinity_bwd_kernel(const T* __restrict__ grad_a, const T* __restrict__ y_t, const T* __restrict__ y_s, int64_t N,
                        int64_t M, int D, T k, bool l1, T* __restrict__ grad_s) {
  __shared__ T ss[kAffTile][kAffStride];
  __shared__ T ts[kAffTile][kAffStride];
  __shared__ T w[kAffTile][kAffTile + 1];
  const int tx = threadIdx.x % kAffTile, ty = threadIdx.x / kAffTile;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kAffTile;
  const int64_t j = j0 + tx;
  for (int e = threadIdx.x; e < kAffTile * D; e += kThreads) {
    const int r = e / D, d = e % D;
    ss[r][d] = j0 + r < M ? y_s[(j0 + r) * D + d] : T(0);
  }
  __syncthreads();
  T acc[kAffDimsPerThread];
#pragma unroll
  for (int u = 0; u < kAffDimsPerThread; ++u) acc[u] = T(0);
  for (int64_t i0 = 0; i0 < N; i0 += kAffTile) {
    __syncthreads();  // the previous tile's ts and w are consumed
    for (int e = threadIdx.x; e < kAffTile * D; e += kThreads) {
      const int r = e / D, d = e % D;
      ts[r][d] = i0 + r < N ? y_t[(i0 + r) * D + d] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kAffRowsPerThread; ++r) {
      const int ii = ty + kWarps * r;
      T dist = T(0);
      for (int d = 0; d < D; ++d) dist += agcl::dist_term(ts[ii][d], ss[tx][d], l1);
      const int64_t i = i0 + ii;
      w[ii][tx] = (i < N && j < M) ? grad_a[i * M + j] * agcl::affinity(dist, k) : T(0);
    }
    __syncthreads();
    const int rows = N - i0 < kAffTile ? static_cast<int>(N - i0) : kAffTile;
    for (int ii = 0; ii < rows; ++ii) {
      const T wv = w[ii][tx];
#pragma unroll
      for (int u = 0; u < kAffDimsPerThread; ++u) {
        const int d = ty + kWarps * u;
        if (d < D) acc[u] += wv * agcl::grad_term(ts[ii][d], ss[tx][d], l1);
      }
    }
  }
  if (j >= M) return;
  const T c = agcl::grad_scale(k, l1);
#pragma unroll
  for (int u = 0; u < kAffDimsPerThread; ++u) {
    const int d = ty + kWarps * u;
    if (d < D) grad_s[j * D + d] = c * acc[u];
  }
}

// ---------------------------------------------------------------------------------------------------
// queue sweep

// Thread (warp w, lane l) gets q · n_{n0 + 32w + l} (0 past Q). qs: the query row in shared memory.
template <typename T>
__device__ __forceinline__ T chunk_dot(const T* __restrict__ neg, const T* qs, int64_t n0, int64_t Q, int C) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t base = n0 + static_cast<int64_t>(warp) * kWarp;
  T mine = T(0);
  for (int e = 0; e < kWarp; ++e) {
    const int64_t n = base + e;
    if (n >= Q) break;  // warp-uniform
    const T* row = neg + n * C;
    T part = T(0);
    for (int c = lane; c < C; c += kWarp) part += qs[c] * row[c];
    part = warp_sum(part);
    mine = lane == e ? part : mine;
  }
  return mine;
}

template <typename T>
__device__ __forceinline__ agcl::Lse<T> shfl_lse(agcl::Lse<T> a, int o) {
  agcl::Lse<T> b;
  b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
  b.s = __shfl_xor_sync(0xffffffffu, a.s, o);
  b.nan = __shfl_xor_sync(0xffffffffu, static_cast<int>(a.nan), o) != 0;
  return b;
}

// Bitonic sort of dot/idx[0, S) (S a power of two) into ranks_before order; every thread calls it.
template <typename T>
__device__ void bitonic_sort(T* dot, int* idx, int S) {
  for (int k = 2; k <= S; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int t = threadIdx.x; t < S; t += kThreads) {
        const int l = t ^ j;
        if (l > t) {
          const T dt = dot[t], dl = dot[l];
          const int it = idx[t], il = idx[l];
          const bool up = (t & k) == 0;
          const bool swap = up ? agcl::ranks_before(dl, il, dt, it) : agcl::ranks_before(dt, it, dl, il);
          if (swap) {
            dot[t] = dl;
            dot[l] = dt;
            idx[t] = il;
            idx[l] = it;
          }
        }
      }
      __syncthreads();
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    hard_negatives_kernel(const T* __restrict__ q, const T* __restrict__ neg, const T* __restrict__ neg_scale, const int64_t* __restrict__ q_cls,
                          const int64_t* __restrict__ neg_cls, int64_t Q, int C, int H, int S, T inv_tau,
                          bool use_classes, T* __restrict__ lse, int64_t* __restrict__ hard_idx,
                          int64_t* __restrict__ hard_count) {
  __shared__ T qs[kAgclMaxDim];
  __shared__ T list_dot[kSortMax];
  __shared__ int list_idx[kSortMax];
  __shared__ int count;
  __shared__ T warp_m[kWarps], warp_s[kWarps];
  __shared__ int warp_nan[kWarps];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  for (int c = tid; c < C; c += kThreads) qs[c] = q[b * C + c];
  for (int t = tid; t < S; t += kThreads) {
    list_dot[t] = T(0);
    list_idx[t] = -1;
  }
  if (tid == 0) count = 0;
  const int64_t qc = q_cls[b];
  __syncthreads();
  agcl::Lse<T> st = agcl::lse_empty<T>();
  for (int64_t n0 = 0; n0 < Q; n0 += kThreads) {
    const int64_t n = n0 + tid;
    // The dot with the unit row n̂ = s·n: the queue is never copied normalised.
    const T dot = chunk_dot(neg, qs, n0, Q, C) * (n < Q ? neg_scale[n] : T(0));
    const bool valid = n < Q && (!use_classes || neg_cls[n] != qc);
    st = agcl::lse_push(st, valid ? dot * inv_tau : agcl::neg_inf<T>());
    if (H == 0) continue;
    __syncthreads();  // the previous chunk's appends are done
    if (count > S - kThreads) {
      bitonic_sort(list_dot, list_idx, S);
      for (int t = H + tid; t < S; t += kThreads) list_idx[t] = -1;
      if (tid == 0) count = count < H ? count : H;
      __syncthreads();
    }
    const T thr_dot = list_dot[H - 1];
    const int thr_idx = list_idx[H - 1];
    __syncthreads();  // everyone has the threshold before any append can overwrite slot H − 1
    if (valid && agcl::ranks_before(dot, static_cast<int>(n), thr_dot, thr_idx)) {
      const int pos = atomicAdd(&count, 1);
      list_dot[pos] = dot;
      list_idx[pos] = static_cast<int>(n);
    }
  }
  // log-sum-exp over the block
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) st = agcl::lse_merge(st, shfl_lse(st, o));
  if (tid % kWarp == 0) {
    warp_m[tid / kWarp] = st.m;
    warp_s[tid / kWarp] = st.s;
    warp_nan[tid / kWarp] = st.nan;
  }
  __syncthreads();
  if (tid == 0) {
    agcl::Lse<T> all = agcl::lse_empty<T>();
    for (int w = 0; w < kWarps; ++w) all = agcl::lse_merge(all, agcl::Lse<T>{warp_m[w], warp_s[w], warp_nan[w] != 0});
    lse[b] = agcl::lse_value(all);
  }
  if (H == 0) {
    if (tid == 0) hard_count[b] = 0;
    return;
  }
  bitonic_sort(list_dot, list_idx, S);
  const int kept = count < H ? count : H;
  for (int t = tid; t < H; t += kThreads) hard_idx[b * H + t] = t < kept ? static_cast<int64_t>(list_idx[t]) : -1;
  if (tid == 0) hard_count[b] = kept;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    queue_lse_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ q, const T* __restrict__ neg, const T* __restrict__ neg_scale,
                         const int64_t* __restrict__ q_cls, const int64_t* __restrict__ neg_cls,
                         const T* __restrict__ lse, int64_t Q, int C, T inv_tau, bool use_classes,
                         T* __restrict__ grad_q) {
  __shared__ T qs[kAgclMaxDim];
  __shared__ T ws[kThreads];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  for (int c = tid; c < C; c += kThreads) qs[c] = q[b * C + c];
  const int64_t qc = q_cls[b];
  const T l = lse[b];
  const bool live = l != agcl::neg_inf<T>();
  T acc[kDimPerThread];
#pragma unroll
  for (int r = 0; r < kDimPerThread; ++r) acc[r] = T(0);
  __syncthreads();
  for (int64_t n0 = 0; live && n0 < Q; n0 += kThreads) {
    const int64_t n = n0 + tid;
    const T sc = n < Q ? neg_scale[n] : T(0);
    const T dot = chunk_dot(neg, qs, n0, Q, C) * sc;
    const bool valid = n < Q && (!use_classes || neg_cls[n] != qc);
    // The raw row is accumulated below, so its weight carries the row's scale.
    ws[tid] = (valid ? agcl::queue_weight(dot * inv_tau, l) : T(0)) * sc;  // 0·NaN as in the CPU kernel
    __syncthreads();
    const int width = Q - n0 < kThreads ? static_cast<int>(Q - n0) : kThreads;
    const T* rows = neg + n0 * C;
    for (int e = 0; e < width; ++e) {
      const T wv = ws[e];
      const T* row = rows + static_cast<int64_t>(e) * C;
#pragma unroll
      for (int r = 0; r < kDimPerThread; ++r) {
        const int c = tid + kThreads * r;
        if (c < C) acc[r] += wv * row[c];
      }
    }
    __syncthreads();  // ws is consumed
  }
  const T coef = live ? grad[b] * inv_tau : T(0);
#pragma unroll
  for (int r = 0; r < kDimPerThread; ++r) {
    const int c = tid + kThreads * r;
    if (c < C) grad_q[b * C + c] = live ? coef * acc[r] : T(0);
  }
}

// ---------------------------------------------------------------------------------------------------
// mixed logits

struct PairRows {
  int64_t i, j;
  bool ok;
};

__device__ __forceinline__ PairRows resolve_pair(const int64_t* __restrict__ hard_idx,
                                                 const int64_t* __restrict__ hard_count,
                                                 const int64_t* __restrict__ pairs, int64_t b, int64_t p, int64_t Q,
                                                 int64_t H, int64_t P) {
  PairRows r{0, 0, false};
  const int64_t pa = pairs[(b * P + p) * 2], pc = pairs[(b * P + p) * 2 + 1];
  if (!agcl::pair_valid<int64_t>(pa, pc, hard_count[b], H)) return r;
  r.i = hard_idx[b * H + pa];
  r.j = hard_idx[b * H + pc];
  r.ok = r.i >= 0 && r.i < Q && r.j >= 0 && r.j < Q;
  return r;
}

// The warp's five dots of a pair, summed over the lanes (every lane gets them).
template <typename T>
__device__ __forceinline__ void pair_dots(const T* __restrict__ qb, const T* __restrict__ ni,
                                          const T* __restrict__ nj, int C, T d[5]) {
  T qi = T(0), qj = T(0), ij = T(0), ii = T(0), jj = T(0);
  for (int c = threadIdx.x % kWarp; c < C; c += kWarp) {
    const T x = qb[c], a = ni[c], e = nj[c];
    qi += x * a;
    qj += x * e;
    ij += a * e;
    ii += a * a;
    jj += e * e;
  }
  d[0] = warp_sum(qi);
  d[1] = warp_sum(qj);
  d[2] = warp_sum(ij);
  d[3] = warp_sum(ii);
  d[4] = warp_sum(jj);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    mixed_logits_kernel(const T* __restrict__ q, const T* __restrict__ neg, const T* __restrict__ neg_scale, const T* __restrict__ alpha,
                        const int64_t* __restrict__ hard_idx, const int64_t* __restrict__ hard_count,
                        const int64_t* __restrict__ pairs, int64_t Q, int C, int64_t H, int64_t P, T inv_tau,
                        T* __restrict__ out) {
  const int64_t b = blockIdx.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (int64_t p = warp; p < P; p += kWarps) {
    const PairRows pr = resolve_pair(hard_idx, hard_count, pairs, b, p, Q, H, P);
    T v = agcl::neg_inf<T>();
    if (pr.ok) {  // warp-uniform
      T d[5];
      pair_dots(q + b * C, neg + pr.i * C, neg + pr.j * C, C, d);
      agcl::unit_pair_dots(d, neg_scale[pr.i], neg_scale[pr.j]);
      const T al = alpha[pr.i];
      v = agcl::mixed_logit(al, d[0], d[1], agcl::mix_inv_norm(al, d[3], d[4], d[2]), inv_tau);
    }
    if (lane == 0) out[b * P + p] = v;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    mixed_logits_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ q, const T* __restrict__ neg, const T* __restrict__ neg_scale,
                            const T* __restrict__ alpha, const int64_t* __restrict__ hard_idx,
                            const int64_t* __restrict__ hard_count, const int64_t* __restrict__ pairs, int64_t Q,
                            int C, int64_t H, int64_t P, T inv_tau, T* __restrict__ grad_q) {
  __shared__ T coef_i[kWarps], coef_j[kWarps];
  __shared__ int64_t row_i[kWarps], row_j[kWarps];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x, warp = tid / kWarp, lane = tid % kWarp;
  T acc[kDimPerThread];
#pragma unroll
  for (int r = 0; r < kDimPerThread; ++r) acc[r] = T(0);
  for (int64_t p0 = 0; p0 < P; p0 += kWarps) {
    const int64_t p = p0 + warp;
    const PairRows pr = p < P ? resolve_pair(hard_idx, hard_count, pairs, b, p, Q, H, P) : PairRows{0, 0, false};
    T ci = T(0), cj = T(0);
    if (pr.ok) {  // warp-uniform
      T d[5];
      pair_dots(q + b * C, neg + pr.i * C, neg + pr.j * C, C, d);
      const T s_i = neg_scale[pr.i], s_j = neg_scale[pr.j];
      agcl::unit_pair_dots(d, s_i, s_j);
      const T al = alpha[pr.i];
      const T scale = grad[b * P + p] * inv_tau * agcl::mix_inv_norm(al, d[3], d[4], d[2]);
      ci = scale * al * s_i;  // raw rows are accumulated below
      cj = scale * (T(1) - al) * s_j;
    }
    if (lane == 0) {
      coef_i[warp] = ci;
      coef_j[warp] = cj;
      row_i[warp] = pr.ok ? pr.i : -1;
      row_j[warp] = pr.j;
    }
    __syncthreads();
    for (int w = 0; w < kWarps; ++w) {
      const int64_t i = row_i[w];
      if (i < 0) continue;  // block-uniform
      const T* ni = neg + i * C;
      const T* nj = neg + row_j[w] * C;
      const T a = coef_i[w], e = coef_j[w];
#pragma unroll
      for (int r = 0; r < kDimPerThread; ++r) {
        const int c = tid + kThreads * r;
        if (c < C) acc[r] += a * ni[c] + e * nj[c];
      }
    }
    __syncthreads();  // the coefficients are consumed
  }
#pragma unroll
  for (int r = 0; r < kDimPerThread; ++r) {
    const int c = tid + kThreads * r;
    if (c < C) grad_q[b * C + c] = acc[r];
  }
}

int next_pow2(int64_t x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

}  // namespace

template <typename T>
void affinity_fwd_launch(const T* y_t, const T* y_s, int64_t N, int64_t M, int64_t D, T inv_two_sigma2, bool l1,
                         T* out, cudaStream_t stream) {
  if (N == 0 || M == 0) return;
  const dim3 grid(static_cast<unsigned>((M + kAffTile - 1) / kAffTile), static_cast<unsigned>((N + kAffTile - 1) / kAffTile));
  affinity_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(y_t, y_s, N, M, static_cast<int>(D), inv_two_sigma2, l1, out);
}

template <typename T>
void affinity_bwd_launch(const T* grad_a, const T* y_t, const T* y_s, int64_t N, int64_t M, int64_t D,
                         T inv_two_sigma2, bool l1, T* grad_s, cudaStream_t stream) {
  if (M == 0 || D == 0) return;
  const dim3 grid(static_cast<unsigned>((M + kAffTile - 1) / kAffTile));
  affinity_bwd_kernel<T><<<grid, kThreads, 0, stream>>>(grad_a, y_t, y_s, N, M, static_cast<int>(D), inv_two_sigma2,
                                                        l1, grad_s);
}

template <typename T>
void hard_negatives_launch(const T* q, const T* neg, const T* neg_scale, const int64_t* q_cls, const int64_t* neg_cls, int64_t B,
                           int64_t Q, int64_t C, int64_t H, T inv_tau, bool use_classes, T* lse, int64_t* hard_idx,
                           int64_t* hard_count, cudaStream_t stream) {
  if (B == 0) return;
  const int S = next_pow2(H + kThreads);
  hard_negatives_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
      q, neg, neg_scale, q_cls, neg_cls, Q, static_cast<int>(C), static_cast<int>(H), S, inv_tau, use_classes, lse, hard_idx,
      hard_count);
}

template <typename T>
void queue_lse_bwd_launch(const T* grad_lse, const T* q, const T* neg, const T* neg_scale, const int64_t* q_cls, const int64_t* neg_cls,
                          const T* lse, int64_t B, int64_t Q, int64_t C, T inv_tau, bool use_classes, T* grad_q,
                          cudaStream_t stream) {
  if (B == 0 || C == 0) return;
  queue_lse_bwd_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
      grad_lse, q, neg, neg_scale, q_cls, neg_cls, lse, Q, static_cast<int>(C), inv_tau, use_classes, grad_q);
}

template <typename T>
void mixed_logits_launch(const T* q, const T* neg, const T* neg_scale, const T* alpha, const int64_t* hard_idx, const int64_t* hard_count,
                         const int64_t* pairs, int64_t B, int64_t Q, int64_t C, int64_t H, int64_t P, T inv_tau,
                         T* out, cudaStream_t stream) {
  if (B == 0 || P == 0) return;
  mixed_logits_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(q, neg, neg_scale, alpha, hard_idx, hard_count,
                                                                             pairs, Q, static_cast<int>(C), H, P,
                                                                             inv_tau, out);
}

template <typename T>
void mixed_logits_bwd_launch(const T* grad, const T* q, const T* neg, const T* neg_scale, const T* alpha, const int64_t* hard_idx,
                             const int64_t* hard_count, const int64_t* pairs, int64_t B, int64_t Q, int64_t C,
                             int64_t H, int64_t P, T inv_tau, T* grad_q, cudaStream_t stream) {
  if (B == 0 || C == 0) return;
  mixed_logits_bwd_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
      grad, q, neg, neg_scale, alpha, hard_idx, hard_count, pairs, Q, static_cast<int>(C), H, P, inv_tau, grad_q);
}

#define AFFSEG_AGCL_INSTANTIATE(T)                                                                                  \
  template void affinity_fwd_launch<T>(const T*, const T*, int64_t, int64_t, int64_t, T, bool, T*, cudaStream_t);  \
  template void affinity_bwd_launch<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, T, bool, T*,       \
                                       cudaStream_t);                                                               \
  template void hard_negatives_launch<T>(const T*, const T*, const T*, const int64_t*, const int64_t*, int64_t, int64_t,     \
                                         int64_t, int64_t, T, bool, T*, int64_t*, int64_t*, cudaStream_t);          \
  template void queue_lse_bwd_launch<T>(const T*, const T*, const T*, const T*, const int64_t*, const int64_t*, const T*,    \
                                        int64_t, int64_t, int64_t, T, bool, T*, cudaStream_t);                      \
  template void mixed_logits_launch<T>(const T*, const T*, const T*, const T*, const int64_t*, const int64_t*,               \
                                       const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t, T, T*,          \
                                       cudaStream_t);                                                               \
  template void mixed_logits_bwd_launch<T>(const T*, const T*, const T*, const T*, const T*, const int64_t*, const int64_t*, \
                                           const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t, T, T*,      \
                                           cudaStream_t);
AFFSEG_AGCL_INSTANTIATE(float)
AFFSEG_AGCL_INSTANTIATE(double)
#undef AFFSEG_AGCL_INSTANTIATE

}  // namespace cuda
}  // namespace affseg
