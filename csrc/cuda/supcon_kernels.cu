// CUDA kernels for the soft SupCon denominator (SPEC §4), per-element math in affseg/supcon_math.h.
//
// Layout: one block of 128 threads per (batch, 32 rows), sweeping 32-column tiles through the pair
// tile of block_tiles.cuh (thread t owns row t/4 and the tile's columns t%4 + 4q, 8 pairs), whose dot
// products run on scalar FMAs (float64, float32 "highest") or on tensor cores (float32 with tf32 or
// bf16 operands, sm_80+; DotPrecision). Forward: an online (max, sum) per thread, merged over the 4
// threads of a row by warp shuffles. Backward: w_ik of supcon_math.h per pair (row and transposed
// terms, so one sweep per row), G = inv_tau·w into the tile, G·f into the block's own gradient rows:
// deterministic, no atomics. Logits are recomputed, never stored.
// Work per call (e = element size): forward 2·B·N²·C FLOPs and B·N² exps; backward 4·B·N²·C FLOPs
// (dots and the G·f product) and 2·B·N² exps. Compulsory bytes: B·N·(C·e + 1 + e) forward,
// B·N·(2·C·e + 1 + 2·e) backward; the column tiles are re-read from L2 by every row block.
// Limits: float32/float64 unit rows; B ≤ kCosLseMaxBatch = 65535 (grid y), N/32 < 2^31 row blocks;
// int64 indexing otherwise. Tensor cores: see block_tiles.cuh (sm_80+, C up to about 1100 on sm_80).
#include "supcon_kernels.h"

#include <cmath>

#include "affseg/supcon_math.h"
#include "block_tiles.cuh"

namespace affseg {
namespace cuda {
namespace {

using tiles::BlockTile;
using tiles::inner_pos;
using tiles::kInner;
using tiles::kOuter;
using tiles::kPerThread;
using tiles::kThreads;

template <typename T, int kPrec>
__global__ void __launch_bounds__(kThreads, 1)
    cos_lse_fwd_kernel(const T* __restrict__ f, const bool* __restrict__ valid, int64_t N, int64_t C, T inv_tau,
                       T* __restrict__ lse) {
  __shared__ BlockTile<T, kPrec> tile;
  const int64_t b = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kOuter;
  const int64_t i = row0 + tiles::item();
  const T* fb = f + b * N * C;
  const bool* vb = valid + b * N;
  const T neg_inf = supcon::neg_inf<T>();
  T m = neg_inf, s = T(0);
  bool nan = false;
  for (int64_t k0 = 0; k0 < N; k0 += kInner) {
    T x[kPerThread];
    tile.dots(fb, row0, N, fb, k0, N, C, x);
    T tile_max = neg_inf;
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) {
      const int64_t k = k0 + inner_pos(q);
      x[q] = (i < N && k < N && k != i && vb[k]) ? x[q] * inv_tau : neg_inf;
      nan = nan || x[q] != x[q];
      tile_max = simd::nan_max(tile_max, x[q]);
    }
    if (tile_max == neg_inf) continue;  // the next tile's barriers are still reached by every thread
    const T new_max = simd::nan_max(m, tile_max);
    T sum = T(0);
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) sum += simd::exp(x[q] - new_max);
    s = s * supcon::rescale(m, new_max) + sum;
    m = new_max;
  }
  // The 4 threads of a row are adjacent lanes of one warp.
  for (int offset = 1; offset < tiles::kLanesPerItem; offset <<= 1) {
    const T other_m = __shfl_xor_sync(0xffffffffu, m, offset);
    const T other_s = __shfl_xor_sync(0xffffffffu, s, offset);
    nan = __shfl_xor_sync(0xffffffffu, static_cast<int>(nan), offset) != 0 || nan;
    const T new_max = simd::nan_max(m, other_m);
    s = s * supcon::rescale(m, new_max) + other_s * supcon::rescale(other_m, new_max);
    m = new_max;
  }
  if (tiles::lane() == 0 && i < N) lse[b * N + i] = nan ? T(NAN) : supcon::lse_finish(m, s);
}

template <typename T, int kPrec>
__global__ void __launch_bounds__(kThreads, 1)
    cos_lse_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ f, const bool* __restrict__ valid,
                       const T* __restrict__ lse, int64_t N, int64_t C, T inv_tau, T* __restrict__ grad_f) {
  __shared__ BlockTile<T, kPrec> tile;
  const int64_t b = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kOuter;
  const int64_t i = row0 + tiles::item();
  const bool row_live = i < N;
  const T* fb = f + b * N * C;
  const bool* vb = valid + b * N;
  const T* gb = grad + b * N;
  const T* lb = lse + b * N;
  T* grad_b = grad_f + b * N * C;
  const T a_i = row_live ? supcon::row_coefficient(gb[i], lb[i]) : T(0);
  const T l_i = row_live ? lb[i] : T(0);
  const bool v_i = row_live && vb[i];
  tile.begin_grad(C);
  for (int64_t k0 = 0; k0 < N; k0 += kInner) {
    T x[kPerThread];
    tile.dots(fb, row0, N, fb, k0, N, C, x);
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) {
      const int64_t k = k0 + inner_pos(q);
      const bool col = row_live && k < N && k != i;
      const T a_k = col ? supcon::row_coefficient(gb[k], lb[k]) : T(0);
      const T w =
          col ? supcon::pair_weight(x[q] * inv_tau, a_i, l_i, vb[k], a_k, a_k != T(0) ? lb[k] : T(0), v_i) : T(0);
      tile.put_grad(q, w * inv_tau);
    }
    tile.accumulate(fb, k0, N, C, row0, N, grad_b);
  }
  tile.end_grad(row0, N, C, grad_b);
}

template <typename T, int kPrec>
void forward(const T* f, const bool* valid, int64_t B, int64_t N, int64_t C, T inv_tau, T* lse, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((N + kOuter - 1) / kOuter), static_cast<unsigned>(B));
  cos_lse_fwd_kernel<T, kPrec><<<grid, kThreads, 0, stream>>>(f, valid, N, C, inv_tau, lse);
}

template <typename T, int kPrec>
void backward(const T* grad_lse, const T* f, const bool* valid, const T* lse, int64_t B, int64_t N, int64_t C,
              T inv_tau, T* grad_f, size_t dynamic_bytes, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((N + kOuter - 1) / kOuter), static_cast<unsigned>(B));
  cos_lse_bwd_kernel<T, kPrec><<<grid, kThreads, dynamic_bytes, stream>>>(grad_lse, f, valid, lse, N, C, inv_tau,
                                                                          grad_f);
}

// The precision this call runs: tensor cores for float32 on sm_80+ when the backward's accumulator
// fits (asked by the forward too, so both run in one mode), IEEE otherwise.
template <int kPrec>
bool use_tensor_cores(int64_t C) {
  return tiles::tensor_cores_fit(cos_lse_bwd_kernel<float, kPrec>, tiles::accumulator_bytes(C)) &&
         tiles::tensor_cores_fit(cos_lse_fwd_kernel<float, kPrec>, 0);
}

template <typename T>
DotPrecision effective(DotPrecision prec, int64_t C) {
  return tiles::pick_precision<T>(prec, [C](auto p) { return use_tensor_cores<decltype(p)::value>(C); });
}

}  // namespace

template <typename T>
void cos_lse_fwd_launch(const T* f, const bool* valid, int64_t B, int64_t N, int64_t C, T inv_tau, DotPrecision prec,
                        T* lse, cudaStream_t stream) {
  if (B == 0 || N == 0) return;
  if constexpr (sizeof(T) == 4) {
    switch (effective<T>(prec, C)) {
      case kDotTf32: return forward<T, kDotTf32>(f, valid, B, N, C, inv_tau, lse, stream);
      case kDotBf16: return forward<T, kDotBf16>(f, valid, B, N, C, inv_tau, lse, stream);
      default: break;
    }
  }
  forward<T, kDotIeee>(f, valid, B, N, C, inv_tau, lse, stream);
}

template <typename T>
void cos_lse_bwd_launch(const T* grad_lse, const T* f, const bool* valid, const T* lse, int64_t B, int64_t N,
                        int64_t C, T inv_tau, DotPrecision prec, T* grad_f, cudaStream_t stream) {
  if (B == 0 || N == 0) return;
  if constexpr (sizeof(T) == 4) {
    // The tensor-core kernels write every gradient element once (from their on-chip accumulators).
    const size_t dynamic = tiles::accumulator_bytes(C);
    switch (effective<T>(prec, C)) {
      case kDotTf32: return backward<T, kDotTf32>(grad_lse, f, valid, lse, B, N, C, inv_tau, grad_f, dynamic, stream);
      case kDotBf16: return backward<T, kDotBf16>(grad_lse, f, valid, lse, B, N, C, inv_tau, grad_f, dynamic, stream);
      default: break;
    }
  }
  // The IEEE kernel adds each column tile's product into its rows.
  if (cudaMemsetAsync(grad_f, 0, sizeof(T) * B * N * C, stream) != cudaSuccess) return;
  backward<T, kDotIeee>(grad_lse, f, valid, lse, B, N, C, inv_tau, grad_f, 0, stream);
}

template void cos_lse_fwd_launch<float>(const float*, const bool*, int64_t, int64_t, int64_t, float, DotPrecision,
                                        float*, cudaStream_t);
template void cos_lse_fwd_launch<double>(const double*, const bool*, int64_t, int64_t, int64_t, double, DotPrecision,
                                         double*, cudaStream_t);
template void cos_lse_bwd_launch<float>(const float*, const float*, const bool*, const float*, int64_t, int64_t,
                                        int64_t, float, DotPrecision, float*, cudaStream_t);
template void cos_lse_bwd_launch<double>(const double*, const double*, const bool*, const double*, int64_t, int64_t,
                                         int64_t, double, DotPrecision, double*, cudaStream_t);

}  // namespace cuda
}  // namespace affseg
