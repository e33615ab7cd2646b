// CUDA kernels of the fused PDCR contrastive term (SPEC §3); torch-free, compiled by nvcc in every
// CUDA build and by tests/test_cuda_compile.py on machines without a GPU.
//
// Math (pair arithmetic shared with the CPU kernel in affseg/pdcr_math.h): for each valid row i and
// window w, lse_iw = LSE_j ŝ_ij·w⁻, pos_iw = Σ_j ŝ_ij·w⁺ over the n_i valid columns, the row loss
// is (1/W) Σ_w (lse_iw − pos_iw/n_i); backward recomputes every pair from lse:
// G_ij = g_i·inv_tau/W·Σ_w (exp(ŝ_ij·w⁻ − lse_iw)·w⁻ − w⁺/n_i), grad_fa = G·fb, grad_fb = Gᵀ·fa.
//
// Layout: one thread block of 128 threads per (batch, tile of 32 outer items) sweeping 32-wide inner
// tiles through the pair tile of block_tiles.cuh: thread t owns outer item t/4 and inner items
// t%4 + 4q (8 dot products in registers). The dots run on scalar FMAs (float64, float32 "highest")
// or on tensor cores (float32 with "tf32"/"bf16" dots on sm_80+: WMMA, fp32 accumulation; launchers
// fall back to IEEE where the device or its shared memory cannot take them). The epilogue forms the
// W windows' weights from the ratios (read through L1) for the one dot tile. Forward keeps an online
// (max, sum, pos) per thread and window in shared memory and merges the 4 lanes of a row at the end.
// Backward: the rows kernel (outer = rows) and the columns kernel (outer = columns, inner = rows,
// reading the rows' lse) put G into the tile and add G·(inner features) into the outer items'
// gradient rows, which only this block owns: deterministic, no atomics (IEEE: into the global rows
// per tile; tensor cores: into an fp32 accumulator in shared memory, written once).
// Memory: no N×M buffer; shared memory: the tile (block_tiles.cuh) + 3·128·8·T forward state; the
// tensor-core backward adds 32·(C + 36)·4 B of accumulator.
// Work per call (P = N·M pairs, e = element size): forward 2·P·C dot FLOPs + the epilogue,
// W·(3K + 20) per pair, and P·W exps; backward 8·P·C FLOPs (each kernel recomputes the dots and does
// one G·f product, both on tensor cores in the tf32/bf16 modes), 2 epilogues and 2·P·W exps (cross-layer).
// Compulsory bytes: B·(N + M)·(C + W·K)·e read and B·N·(1 + W)·e written forward; backward also
// reads B·N·(1 + W)·e and writes B·(N + M)·C·e. The intra-layer ops run these kernels with the same
// tensor as rows and columns; their backward is the rows sweep alone, each pair adding its column's own
// row term as well (ŝ and d are symmetric): 4·P·C FLOPs, one divergence and 2 exps per pair and window.
// Limits: W ≤ kPdcrMaxWindows = 8 (shared memory of the forward state), B ≤ 65535 (grid y), valid
// columns per batch < 2^31 (int counter); float32/float64; int64 indexing otherwise.
#include <cuda_runtime.h>

#include <cstdint>

#include "affseg/pdcr_math.h"
#include "block_tiles.cuh"
#include "pdcr_kernels.h"

namespace affseg {
namespace cuda {
namespace {

using tiles::BlockTile;
using tiles::inner_pos;
using tiles::kInner;
using tiles::kLanesPerItem;
using tiles::kOuter;
using tiles::kPerThread;
using tiles::kThreads;
constexpr int kMaxWindows = static_cast<int>(kPdcrMaxWindows);

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -static_cast<T>(INFINITY);
}

// Valid columns of batch b (every thread gets the count).
__device__ int64_t count_valid(const bool* vb, int64_t M, int* shared_count) {
  if (threadIdx.x == 0) *shared_count = 0;
  __syncthreads();
  int local = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) local += vb[j] ? 1 : 0;
  atomicAdd(shared_count, local);  // integer: order-independent
  __syncthreads();
  return *shared_count;
}

// ---------------------------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------------------------
// ŝ·w⁻ and ŝ·w⁺ of pair (i, j) in one window, from the logit ŝ; false when the pair does not count.
template <typename T>
__device__ __forceinline__ bool pair_terms(const PdcrArgs<T>& a, const pdcr::WeightMap<T>& weights, const bool* vb,
                                           const T* phi_i, const T* phi_w, int64_t i, int64_t j, T logit, T& neg,
                                           T& pos) {
  if (j >= a.M || !vb[j] || (a.exclude_self && j == i)) return false;
  const T d = pdcr::window_divergence(phi_i, phi_w + j * a.K, 1, static_cast<int>(a.K), a.fg_l1);
  T w_pos, w_neg;
  pdcr::pair_weights(d, weights, w_pos, w_neg);
  neg = logit * w_neg;
  pos = logit * w_pos;
  return true;
}

template <typename T, int kPrec>
__global__ void __launch_bounds__(kThreads, 1) pdcr_forward_kernel(PdcrArgs<T> a, T* loss, T* lse) {
  __shared__ BlockTile<T, kPrec> tile;
  __shared__ T s_max[kMaxWindows][kThreads];
  __shared__ T s_sum[kMaxWindows][kThreads];
  __shared__ T s_pos[kMaxWindows][kThreads];
  __shared__ int s_count;
  const int64_t b = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kOuter;
  const int item = tiles::item(), lane = tiles::lane();
  const int64_t i = row0 + item;
  const T* fa = a.fa + b * a.N * a.C;
  const T* fb = a.fb + b * a.M * a.C;
  const T* pa = a.pa + b * a.W * a.N * a.K;
  const T* pb = a.pb + b * a.W * a.M * a.K;
  const bool* vb = a.vb + b * a.M;
  const int64_t valid_cols = count_valid(vb, a.M, &s_count);
  const bool row_ok = i < a.N && a.va[b * a.N + i];
  const int64_t n_i = valid_cols - ((a.exclude_self && i < a.M && row_ok && vb[i]) ? 1 : 0);
  const pdcr::WeightMap<T> weights = pdcr::weight_map<T>(a.swapped);
  for (int64_t w = 0; w < a.W; ++w) {
    s_max[w][threadIdx.x] = neg_inf<T>();
    s_sum[w][threadIdx.x] = T(0);
    s_pos[w][threadIdx.x] = T(0);
  }
  for (int64_t j0 = 0; j0 < a.M; j0 += kInner) {
    T acc[kPerThread];
    tile.dots(fa, row0, a.N, fb, j0, a.M, a.C, acc);
    if (!row_ok || n_i <= 0) continue;  // after the block-wide tile load: no early exit before a barrier
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) acc[q] = pdcr::scaled_logit(acc[q], a.inv_tau);
    for (int64_t w = 0; w < a.W; ++w) {
      const T* phi_i = pa + (w * a.N + i) * a.K;
      // Two passes over the thread's pairs (maximum and w⁺ sum, then the exp sum), recomputing the
      // cheap weights instead of holding a second register array of logits.
      T tile_max = neg_inf<T>(), pos = T(0);
#pragma unroll
      for (int q = 0; q < kPerThread; ++q) {
        T neg, p;
        if (pair_terms(a, weights, vb, phi_i, pb + w * a.M * a.K, i, j0 + inner_pos(q), acc[q], neg, p)) {
          pos += p;
          tile_max = simd::nan_max(tile_max, neg);
        }
      }
      const T old_max = s_max[w][threadIdx.x];
      const T new_max = simd::nan_max(old_max, tile_max);
      if (new_max != neg_inf<T>()) {
        T sum = s_sum[w][threadIdx.x] * simd::exp(old_max - new_max);
#pragma unroll
        for (int q = 0; q < kPerThread; ++q) {
          T neg, p;
          if (pair_terms(a, weights, vb, phi_i, pb + w * a.M * a.K, i, j0 + inner_pos(q), acc[q], neg, p))
            sum += simd::exp(neg - new_max);
        }
        s_sum[w][threadIdx.x] = sum;
        s_max[w][threadIdx.x] = new_max;
      }
      s_pos[w][threadIdx.x] += pos;
    }
  }
  __syncthreads();
  if (lane != 0 || i >= a.N) return;
  if (!row_ok || n_i <= 0) {
    loss[b * a.N + i] = T(0);
    for (int64_t w = 0; w < a.W; ++w) lse[(b * a.N + i) * a.W + w] = neg_inf<T>();
    return;
  }
  T row_loss = T(0);
  for (int64_t w = 0; w < a.W; ++w) {
    T m = neg_inf<T>(), pos = T(0);
    for (int l = 0; l < kLanesPerItem; ++l) {
      m = simd::nan_max(m, s_max[w][threadIdx.x + l]);
      pos += s_pos[w][threadIdx.x + l];
    }
    T sum = T(0);
    for (int l = 0; l < kLanesPerItem; ++l) {
      const T lm = s_max[w][threadIdx.x + l];
      if (lm != neg_inf<T>()) sum += s_sum[w][threadIdx.x + l] * simd::exp(lm - m);
    }
    const T row_lse = m + simd::log(sum);
    lse[(b * a.N + i) * a.W + w] = row_lse;
    row_loss += row_lse - pos / static_cast<T>(n_i);
  }
  loss[b * a.N + i] = row_loss / static_cast<T>(a.W);
}

// ---------------------------------------------------------------------------------------------
// Backward. kRows → grad_fa (outer rows, inner columns); kCols → grad_fb (outer columns, inner
// rows); kIntra (one feature set as rows and columns) → the one gradient of f in both roles: ŝ and d
// are symmetric, so each pair of the rows sweep also adds the column's own row term,
// G_ij + G_ji, and the columns sweep is not needed.
// ---------------------------------------------------------------------------------------------
enum Sweep { kRows, kCols, kIntra };

// Row i's backward coefficients: coef = g_i·inv_tau/W and 1/n_i; false when the row carries no gradient.
template <typename T>
__device__ bool row_coefficients(const PdcrArgs<T>& a, const bool* vb, const T* g_rows, int64_t valid_cols, int64_t i,
                                 T& coef, T& inv_n) {
  const int64_t n_i = valid_cols - ((a.exclude_self && i < a.M && vb[i]) ? 1 : 0);
  const T g = g_rows[i];
  coef = g * (a.inv_tau / static_cast<T>(a.W));
  inv_n = n_i > 0 ? T(1) / static_cast<T>(n_i) : T(0);
  return n_i > 0 && g != T(0);
}

// G_ij of the header for row i and column j from the logit s, plus with kBoth (intra-layer: pa is pb,
// so d is symmetric) the column's own term G_ji from the same divergences.
template <typename T, bool kBoth>
__device__ T pair_gradient(const PdcrArgs<T>& a, const pdcr::WeightMap<T>& weights, const T* pa, const T* pb,
                           const bool* vb, const T* g_rows, const T* lse_b, int64_t valid_cols, int64_t i, int64_t j,
                           T s) {
  T coef_i, inv_n_i, coef_j = T(0), inv_n_j = T(0);
  const bool live_i = row_coefficients(a, vb, g_rows, valid_cols, i, coef_i, inv_n_i);
  const bool live_j = kBoth && row_coefficients(a, vb, g_rows, valid_cols, j, coef_j, inv_n_j);
  if (!live_i && !live_j) return T(0);
  T sum_i = T(0), sum_j = T(0);
  for (int64_t w = 0; w < a.W; ++w) {
    const T d = pdcr::window_divergence(pa + (w * a.N + i) * a.K, pb + (w * a.M + j) * a.K, 1, static_cast<int>(a.K),
                                        a.fg_l1);
    T w_pos, w_neg;
    pdcr::pair_weights(d, weights, w_pos, w_neg);
    const T logit = s * w_neg;
    if (live_i) sum_i += pdcr::pair_grad_term(simd::exp(logit - lse_b[i * a.W + w]), w_pos, w_neg, inv_n_i);
    if (live_j) sum_j += pdcr::pair_grad_term(simd::exp(logit - lse_b[j * a.W + w]), w_pos, w_neg, inv_n_j);
  }
  return (live_i ? coef_i * sum_i : T(0)) + (live_j ? coef_j * sum_j : T(0));
}

template <typename T, int kSweep, int kPrec>
__global__ void __launch_bounds__(kThreads, 1)
    pdcr_backward_kernel(PdcrArgs<T> a, const T* grad_row, const T* lse, T* grad) {
  constexpr bool kRowsOuter = kSweep != kCols;
  __shared__ BlockTile<T, kPrec> tile;
  __shared__ int s_count;
  const int64_t b = blockIdx.y;
  const int64_t n_outer = kRowsOuter ? a.N : a.M, n_inner = kRowsOuter ? a.M : a.N;
  const int64_t outer0 = static_cast<int64_t>(blockIdx.x) * kOuter;
  const int64_t o = outer0 + tiles::item();
  const T* fa = a.fa + b * a.N * a.C;
  const T* fb = a.fb + b * a.M * a.C;
  const T* pa = a.pa + b * a.W * a.N * a.K;
  const T* pb = a.pb + b * a.W * a.M * a.K;
  const bool* va = a.va + b * a.N;
  const bool* vb = a.vb + b * a.M;
  const T* g_rows = grad_row + b * a.N;
  const T* lse_b = lse + b * a.N * a.W;
  const T* outer_feat = kRowsOuter ? fa : fb;
  const T* inner_feat = kRowsOuter ? fb : fa;
  T* grad_b = grad + b * n_outer * a.C;
  const int64_t valid_cols = count_valid(vb, a.M, &s_count);
  const bool outer_ok = o < n_outer && (kRowsOuter ? va[o] : vb[o]);
  const pdcr::WeightMap<T> weights = pdcr::weight_map<T>(a.swapped);
  tile.begin_grad(a.C);
  for (int64_t j0 = 0; j0 < n_inner; j0 += kInner) {
    T acc[kPerThread];
    tile.dots(outer_feat, outer0, n_outer, inner_feat, j0, n_inner, a.C, acc);
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) {
      const int64_t p = j0 + inner_pos(q);
      const int64_t i = kRowsOuter ? o : p, j = kRowsOuter ? p : o;
      T G = T(0);
      // Intra-layer, va and vb are one mask, so this also admits the pair in its column's role.
      const bool pair_ok = outer_ok && p < n_inner && (kRowsOuter ? vb[p] : va[p]) && !(a.exclude_self && i == j);
      if (pair_ok) {
        const T s = pdcr::scaled_logit(acc[q], a.inv_tau);
        G = pair_gradient<T, kSweep == kIntra>(a, weights, pa, pb, vb, g_rows, lse_b, valid_cols, i, j, s);
      }
      tile.put_grad(q, G);
    }
    tile.accumulate(inner_feat, j0, n_inner, a.C, outer0, n_outer, grad_b);
  }
  tile.end_grad(outer0, n_outer, a.C, grad_b);
}

template <typename T, int kPrec>
cudaError_t forward(const PdcrArgs<T>& args, T* loss, T* lse, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((args.N + kOuter - 1) / kOuter), static_cast<unsigned>(args.B));
  pdcr_forward_kernel<T, kPrec><<<grid, kThreads, 0, stream>>>(args, loss, lse);
  return cudaGetLastError();
}

// One backward sweep into grad ((B, N, C) for kRows and kIntra, (B, M, C) for kCols).
template <typename T, int kSweep, int kPrec>
cudaError_t backward(const PdcrArgs<T>& args, const T* grad_row, const T* lse, T* grad, size_t dynamic_bytes,
                     cudaStream_t stream) {
  const int64_t n_outer = kSweep == kCols ? args.M : args.N;
  if (n_outer == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((n_outer + kOuter - 1) / kOuter), static_cast<unsigned>(args.B));
  pdcr_backward_kernel<T, kSweep, kPrec><<<grid, kThreads, dynamic_bytes, stream>>>(args, grad_row, lse, grad);
  return cudaGetLastError();
}

// The backward of one call: both sweeps (grad_fa, grad_fb), or the intra-layer one (grad_fa only).
template <typename T, int kPrec>
cudaError_t backward_sweeps(const PdcrArgs<T>& args, bool intra, const T* grad_row, const T* lse, T* grad_fa,
                            T* grad_fb, size_t dynamic_bytes, cudaStream_t stream) {
  if (intra) return backward<T, kIntra, kPrec>(args, grad_row, lse, grad_fa, dynamic_bytes, stream);
  cudaError_t err = backward<T, kRows, kPrec>(args, grad_row, lse, grad_fa, dynamic_bytes, stream);
  if (err == cudaSuccess) err = backward<T, kCols, kPrec>(args, grad_row, lse, grad_fb, dynamic_bytes, stream);
  return err;
}

// Whether the tensor-core kernels of `prec` run this call (float32, sm_80+, the accumulator fits): the
// forward asks for the backward's too, so both run in one mode.
template <int kPrec>
bool use_tensor_cores(int64_t C) {
  const size_t dynamic = tiles::accumulator_bytes(C);
  return tiles::tensor_cores_fit(pdcr_backward_kernel<float, kRows, kPrec>, dynamic) &&
         tiles::tensor_cores_fit(pdcr_backward_kernel<float, kCols, kPrec>, dynamic) &&
         tiles::tensor_cores_fit(pdcr_backward_kernel<float, kIntra, kPrec>, dynamic) &&
         tiles::tensor_cores_fit(pdcr_forward_kernel<float, kPrec>, 0);
}

template <typename T>
DotPrecision effective(DotPrecision prec, int64_t C) {
  return tiles::pick_precision<T>(prec, [C](auto p) { return use_tensor_cores<decltype(p)::value>(C); });
}

}  // namespace

template <typename T>
cudaError_t launch_pdcr_forward(const PdcrArgs<T>& args, DotPrecision prec, T* loss, T* lse, cudaStream_t stream) {
  if (args.W > kMaxWindows || args.B > kPdcrMaxBatch) return cudaErrorInvalidValue;
  if (args.B == 0 || args.N == 0) return cudaSuccess;
  if constexpr (sizeof(T) == 4) {
    switch (effective<T>(prec, args.C)) {
      case kDotTf32: return forward<T, kDotTf32>(args, loss, lse, stream);
      case kDotBf16: return forward<T, kDotBf16>(args, loss, lse, stream);
      default: break;
    }
  }
  return forward<T, kDotIeee>(args, loss, lse, stream);
}

namespace {

template <typename T>
cudaError_t backward_launch(const PdcrArgs<T>& args, DotPrecision prec, bool intra, const T* grad_row, const T* lse,
                            T* grad_fa, T* grad_fb, cudaStream_t stream) {
  if (args.W > kMaxWindows || args.B > kPdcrMaxBatch) return cudaErrorInvalidValue;
  if (args.B == 0) return cudaSuccess;
  if constexpr (sizeof(T) == 4) {
    // The tensor-core kernels write every gradient element once (from their on-chip accumulators).
    const size_t dynamic = tiles::accumulator_bytes(args.C);
    switch (effective<T>(prec, args.C)) {
      case kDotTf32:
        return backward_sweeps<T, kDotTf32>(args, intra, grad_row, lse, grad_fa, grad_fb, dynamic, stream);
      case kDotBf16:
        return backward_sweeps<T, kDotBf16>(args, intra, grad_row, lse, grad_fa, grad_fb, dynamic, stream);
      default:
        break;
    }
  }
  // The IEEE kernels add each inner tile's product into their rows.
  cudaError_t err = cudaMemsetAsync(grad_fa, 0, sizeof(T) * args.B * args.N * args.C, stream);
  if (err == cudaSuccess && !intra) err = cudaMemsetAsync(grad_fb, 0, sizeof(T) * args.B * args.M * args.C, stream);
  if (err != cudaSuccess) return err;
  return backward_sweeps<T, kDotIeee>(args, intra, grad_row, lse, grad_fa, grad_fb, 0, stream);
}

}  // namespace

template <typename T>
cudaError_t launch_pdcr_backward(const PdcrArgs<T>& args, DotPrecision prec, const T* grad_row, const T* lse,
                                 T* grad_fa, T* grad_fb, cudaStream_t stream) {
  return backward_launch(args, prec, false, grad_row, lse, grad_fa, grad_fb, stream);
}

template <typename T>
cudaError_t launch_pdcr_intra_backward(const PdcrArgs<T>& args, DotPrecision prec, const T* grad_row, const T* lse,
                                       T* grad_f, cudaStream_t stream) {
  if (args.N != args.M || args.fa != args.fb || args.pa != args.pb || args.va != args.vb) return cudaErrorInvalidValue;
  return backward_launch(args, prec, true, grad_row, lse, grad_f, static_cast<T*>(nullptr), stream);
}

template cudaError_t launch_pdcr_forward<float>(const PdcrArgs<float>&, DotPrecision, float*, float*, cudaStream_t);
template cudaError_t launch_pdcr_forward<double>(const PdcrArgs<double>&, DotPrecision, double*, double*,
                                                 cudaStream_t);
template cudaError_t launch_pdcr_backward<float>(const PdcrArgs<float>&, DotPrecision, const float*, const float*,
                                                 float*, float*, cudaStream_t);
template cudaError_t launch_pdcr_backward<double>(const PdcrArgs<double>&, DotPrecision, const double*,
                                                  const double*, double*, double*, cudaStream_t);
template cudaError_t launch_pdcr_intra_backward<float>(const PdcrArgs<float>&, DotPrecision, const float*,
                                                       const float*, float*, cudaStream_t);
template cudaError_t launch_pdcr_intra_backward<double>(const PdcrArgs<double>&, DotPrecision, const double*,
                                                        const double*, double*, cudaStream_t);

}  // namespace cuda
}  // namespace affseg
