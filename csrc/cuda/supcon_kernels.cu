// CUDA kernels for the soft SupCon denominator (SPEC §4), per-element math in affseg/supcon_math.h.
//
// One thread per row i, kThreads rows per block. Columns are swept in tiles of TN; channels in chunks
// of CC: the block stages the (TN × CC) column chunk in shared memory (all threads read the same
// address, a broadcast), each thread keeps its CC row values and TN partial dots in registers.
// Forward: online LSE over each tile's TN logits. Backward: the pair weights of the tile, then
// grad f_i += Σ_k w_ik f_k chunk by chunk into the thread's own output row (read-modify-write of its
// own row only: deterministic, no atomics). Logits are recomputed, never stored.
// Work per call (e = element size): forward 2·B·N²·C FLOPs (scalar FMAs) and B·N² exps; backward
// 4·B·N²·C FLOPs (dots and the Σ w f product) and 2·B·N² exps. Compulsory bytes: B·N·(C·e + 1 + e)
// forward, B·N·(2·C·e + 1 + 2·e) backward; the column tiles are re-read from L2 by every row block.
// Limits: float32/float64 unit rows; B ≤ kCosLseMaxBatch = 65535 (grid y), N < 2^31·128 rows; int64
// indexing otherwise.
#include "supcon_kernels.h"

#include <cmath>

#include "affseg/supcon_math.h"

namespace affseg {
namespace cuda {
namespace {

constexpr int kThreads = 128;

template <typename T>
struct Tile;
template <>
struct Tile<float> {
  static constexpr int TN = 32, CC = 16;
};
template <>
struct Tile<double> {
  static constexpr int TN = 16, CC = 16;
};

// dots[t] = f_i · f_{k0 + t} for the tile's TN columns (0 past N); every thread of the block calls it.
template <typename T>
__device__ void tile_dots(const T* __restrict__ fb, int64_t i, bool row_live, int64_t k0, int64_t N, int64_t C,
                          T (*stage)[Tile<T>::CC], T* dots) {
  constexpr int TN = Tile<T>::TN, CC = Tile<T>::CC;
#pragma unroll
  for (int t = 0; t < TN; ++t) dots[t] = T(0);
  for (int64_t c0 = 0; c0 < C; c0 += CC) {
    __syncthreads();
    for (int e = threadIdx.x; e < TN * CC; e += blockDim.x) {
      const int t = e / CC, c = e % CC;
      const int64_t k = k0 + t, ch = c0 + c;
      stage[t][c] = (k < N && ch < C) ? fb[k * C + ch] : T(0);
    }
    __syncthreads();
    T row[CC];
#pragma unroll
    for (int c = 0; c < CC; ++c) row[c] = (row_live && c0 + c < C) ? fb[i * C + c0 + c] : T(0);
#pragma unroll
    for (int t = 0; t < TN; ++t) {
      T acc = dots[t];
#pragma unroll
      for (int c = 0; c < CC; ++c) acc += row[c] * stage[t][c];
      dots[t] = acc;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) cos_lse_fwd_kernel(const T* __restrict__ f, const bool* __restrict__ valid,
                                                               int64_t N, int64_t C, T inv_tau, T* __restrict__ lse) {
  constexpr int TN = Tile<T>::TN;
  __shared__ T stage[TN][Tile<T>::CC];
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool row_live = i < N;
  const T* fb = f + b * N * C;
  const bool* vb = valid + b * N;
  const T neg_inf = -INFINITY;
  T m = neg_inf, s = T(0);
  bool nan = false;
  for (int64_t k0 = 0; k0 < N; k0 += TN) {
    T dots[TN];
    tile_dots<T>(fb, i, row_live, k0, N, C, stage, dots);
    T tile_max = neg_inf;
#pragma unroll
    for (int t = 0; t < TN; ++t) {
      const int64_t k = k0 + t;
      dots[t] = (k < N && k != i && vb[k]) ? dots[t] * inv_tau : neg_inf;
      nan = nan || dots[t] != dots[t];
      tile_max = simd::nan_max(tile_max, dots[t]);
    }
    if (tile_max == neg_inf) continue;
    const T new_max = simd::nan_max(m, tile_max);
    T sum = T(0);
#pragma unroll
    for (int t = 0; t < TN; ++t) sum += simd::exp(dots[t] - new_max);
    s = s * supcon::rescale(m, new_max) + sum;
    m = new_max;
  }
  if (row_live) lse[b * N + i] = nan ? T(NAN) : supcon::lse_finish(m, s);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    cos_lse_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ f, const bool* __restrict__ valid,
                       const T* __restrict__ lse, int64_t N, int64_t C, T inv_tau, T* __restrict__ grad_f) {
  constexpr int TN = Tile<T>::TN, CC = Tile<T>::CC;
  __shared__ T stage[TN][CC];
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool row_live = i < N;
  const T* fb = f + b * N * C;
  const bool* vb = valid + b * N;
  const T* gb = grad + b * N;
  const T* lb = lse + b * N;
  T* out = grad_f + (b * N + i) * C;
  const T a_i = row_live ? supcon::row_coefficient(gb[i], lb[i]) : T(0);
  const T l_i = row_live ? lb[i] : T(0);
  const bool v_i = row_live && vb[i];
  if (row_live) {
    for (int64_t c = 0; c < C; ++c) out[c] = T(0);
  }
  for (int64_t k0 = 0; k0 < N; k0 += TN) {
    T w[TN];
    tile_dots<T>(fb, i, row_live, k0, N, C, stage, w);
#pragma unroll
    for (int t = 0; t < TN; ++t) {
      const int64_t k = k0 + t;
      const bool col = k < N && k != i;
      const T a_k = col ? supcon::row_coefficient(gb[k], lb[k]) : T(0);
      w[t] = col ? supcon::pair_weight(w[t] * inv_tau, a_i, l_i, vb[k], a_k, a_k != T(0) ? lb[k] : T(0), v_i) : T(0);
    }
    for (int64_t c0 = 0; c0 < C; c0 += CC) {
      __syncthreads();
      for (int e = threadIdx.x; e < TN * CC; e += blockDim.x) {
        const int t = e / CC, c = e % CC;
        const int64_t k = k0 + t, ch = c0 + c;
        stage[t][c] = (k < N && ch < C) ? fb[k * C + ch] : T(0);
      }
      __syncthreads();
      if (!row_live) continue;
#pragma unroll 4
      for (int c = 0; c < CC; ++c) {
        if (c0 + c >= C) break;
        T acc = T(0);
#pragma unroll
        for (int t = 0; t < TN; ++t) acc += w[t] * stage[t][c];
        out[c0 + c] += acc;
      }
    }
  }
  if (row_live) {
    for (int64_t c = 0; c < C; ++c) out[c] *= inv_tau;
  }
}

}  // namespace

template <typename T>
void cos_lse_fwd_launch(const T* f, const bool* valid, int64_t B, int64_t N, int64_t C, T inv_tau, T* lse,
                        cudaStream_t stream) {
  if (B == 0 || N == 0) return;
  const dim3 grid(static_cast<unsigned>((N + kThreads - 1) / kThreads), static_cast<unsigned>(B));
  cos_lse_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(f, valid, N, C, inv_tau, lse);
}

template <typename T>
void cos_lse_bwd_launch(const T* grad_lse, const T* f, const bool* valid, const T* lse, int64_t B, int64_t N,
                        int64_t C, T inv_tau, T* grad_f, cudaStream_t stream) {
  if (B == 0 || N == 0) return;
  const dim3 grid(static_cast<unsigned>((N + kThreads - 1) / kThreads), static_cast<unsigned>(B));
  cos_lse_bwd_kernel<T><<<grid, kThreads, 0, stream>>>(grad_lse, f, valid, lse, N, C, inv_tau, grad_f);
}

template void cos_lse_fwd_launch<float>(const float*, const bool*, int64_t, int64_t, int64_t, float, float*,
                                        cudaStream_t);
template void cos_lse_fwd_launch<double>(const double*, const bool*, int64_t, int64_t, int64_t, double, double*,
                                         cudaStream_t);
template void cos_lse_bwd_launch<float>(const float*, const float*, const bool*, const float*, int64_t, int64_t,
                                        int64_t, float, float*, cudaStream_t);
template void cos_lse_bwd_launch<double>(const double*, const double*, const bool*, const double*, int64_t, int64_t,
                                         int64_t, double, double*, cudaStream_t);

}  // namespace cuda
}  // namespace affseg
