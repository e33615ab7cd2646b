// CUDA kernels of the fused PDCR contrastive term (SPEC §3); torch-free, compiled by nvcc in every
// CUDA build and by tests/test_cuda_compile.py on machines without a GPU.
//
// Math (pair arithmetic shared with the CPU kernel in affseg/pdcr_math.h): for each valid row i and
// window w, lse_iw = LSE_j ŝ_ij·w⁻, pos_iw = Σ_j ŝ_ij·w⁺ over the n_i valid columns, the row loss
// is (1/W) Σ_w (lse_iw − pos_iw/n_i); backward recomputes every pair from lse:
// G_ij = g_i·inv_tau/W·Σ_w (exp(ŝ_ij·w⁻ − lse_iw)·w⁻ − w⁺/n_i), grad_fa = G·fb, grad_fb = Gᵀ·fa.
//
// Layout: one thread block of 128 threads per (batch, tile of 32 outer items); thread t owns outer
// item t/4 and every 4th inner item of each 32-wide inner tile (8 dot products in registers). The
// tiles of both sides are staged through shared memory in channel chunks; the epilogue forms the W
// windows' weights from the ratios (read through L1) for the one dot tile. Forward keeps an online
// (max, sum, pos) per thread and window in shared memory and merges the 4 lanes of a row at the end.
// Backward: the rows kernel (outer = rows) and the columns kernel (outer = columns, inner = rows,
// reading the rows' lse) write G to shared memory and add G·(inner features) into the outer items'
// gradient rows, which only this block owns: deterministic, no atomics.
// Memory: no N×M buffer; static shared memory 64·(CHUNK+1)·T + 32·33·T (backward) or 3·128·8·T (forward).
// Work per call (P = N·M pairs, e = element size): forward 2·P·C FLOPs on scalar FMAs + the epilogue,
// W·(3K + 20) per pair, and P·W exps; backward 8·P·C FLOPs (each kernel recomputes the dots and does
// one G·f product), 2 epilogues and 2·P·W exps. Compulsory bytes: B·(N + M)·(C + W·K)·e read and
// B·N·(1 + W)·e written forward; backward also reads B·N·(1 + W)·e and writes B·(N + M)·C·e. The
// intra-layer ops run these kernels with the same tensor as rows and columns and sum the gradients.
// Limits: W ≤ kPdcrMaxWindows = 8 (shared memory of the forward state), B ≤ 65535 (grid y), valid
// columns per batch < 2^31 (int counter); float32/float64; int64 indexing otherwise.
#include <cuda_runtime.h>

#include <cstdint>

#include "affseg/pdcr_math.h"
#include "pdcr_kernels.h"

namespace affseg {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kOuter = 32;                        // outer items per block
constexpr int kLanesPerItem = kThreads / kOuter;  // 4 threads share an outer item
constexpr int kInner = 32;                        // inner items per tile
constexpr int kPerThread = kInner / kLanesPerItem;
constexpr int kMaxWindows = static_cast<int>(kPdcrMaxWindows);

template <typename T>
struct Chunk {
  static constexpr int value = sizeof(T) == 4 ? 32 : 16;
};

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

// acc[q] = feat_outer(item) · feat_inner(inner0 + lane + 4q) over all C channels, through shared
// memory tiles of Chunk channels.
template <typename T>
__device__ void tile_dots(const T* outer_feat, int64_t outer0, int64_t n_outer, const T* inner_feat, int64_t inner0,
                          int64_t n_inner, int64_t C, T (&acc)[kPerThread]) {
  constexpr int CH = Chunk<T>::value;
  __shared__ T s_outer[kOuter][CH + 1];
  __shared__ T s_inner[kInner][CH + 1];
  const int item = threadIdx.x / kLanesPerItem, lane = threadIdx.x % kLanesPerItem;
#pragma unroll
  for (int q = 0; q < kPerThread; ++q) acc[q] = T(0);
  for (int64_t c0 = 0; c0 < C; c0 += CH) {
    for (int e = threadIdx.x; e < kOuter * CH; e += kThreads) {
      const int r = e / CH, c = e % CH;
      const bool in = outer0 + r < n_outer && c0 + c < C;
      s_outer[r][c] = in ? outer_feat[(outer0 + r) * C + c0 + c] : T(0);
    }
    for (int e = threadIdx.x; e < kInner * CH; e += kThreads) {
      const int r = e / CH, c = e % CH;
      const bool in = inner0 + r < n_inner && c0 + c < C;
      s_inner[r][c] = in ? inner_feat[(inner0 + r) * C + c0 + c] : T(0);
    }
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < CH; ++c) {
      const T a = s_outer[item][c];
#pragma unroll
      for (int q = 0; q < kPerThread; ++q) acc[q] += a * s_inner[lane + kLanesPerItem * q][c];
    }
    __syncthreads();
  }
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

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) pdcr_forward_kernel(PdcrArgs<T> a, T* loss, T* lse) {
  __shared__ T s_max[kMaxWindows][kThreads];
  __shared__ T s_sum[kMaxWindows][kThreads];
  __shared__ T s_pos[kMaxWindows][kThreads];
  __shared__ int s_count;
  const int64_t b = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kOuter;
  const int item = threadIdx.x / kLanesPerItem, lane = threadIdx.x % kLanesPerItem;
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
    tile_dots(fa, row0, a.N, fb, j0, a.M, a.C, acc);
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
        if (pair_terms(a, weights, vb, phi_i, pb + w * a.M * a.K, i, j0 + lane + kLanesPerItem * q, acc[q], neg, p)) {
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
          if (pair_terms(a, weights, vb, phi_i, pb + w * a.M * a.K, i, j0 + lane + kLanesPerItem * q, acc[q], neg, p))
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
// Backward: kRowsOuter → grad_fa (outer rows, inner columns); otherwise grad_fb (outer columns,
// inner rows).
// ---------------------------------------------------------------------------------------------
template <typename T, bool kRowsOuter>
__global__ void __launch_bounds__(kThreads, 1)
    pdcr_backward_kernel(PdcrArgs<T> a, const T* grad_row, const T* lse, T* grad) {
  __shared__ T s_g[kOuter][kInner + 1];
  __shared__ int s_count;
  const int64_t b = blockIdx.y;
  const int64_t n_outer = kRowsOuter ? a.N : a.M, n_inner = kRowsOuter ? a.M : a.N;
  const int64_t outer0 = static_cast<int64_t>(blockIdx.x) * kOuter;
  const int item = threadIdx.x / kLanesPerItem, lane = threadIdx.x % kLanesPerItem;
  const int64_t o = outer0 + item;
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
  const T scale = a.inv_tau / static_cast<T>(a.W);
  for (int64_t j0 = 0; j0 < n_inner; j0 += kInner) {
    T acc[kPerThread];
    tile_dots(outer_feat, outer0, n_outer, inner_feat, j0, n_inner, a.C, acc);
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) {
      const int64_t p = j0 + lane + kLanesPerItem * q;
      const int64_t i = kRowsOuter ? o : p, j = kRowsOuter ? p : o;
      T G = T(0);
      const bool pair_ok = outer_ok && p < n_inner && (kRowsOuter ? vb[p] : va[p]) && !(a.exclude_self && i == j);
      if (pair_ok) {
        const int64_t n_i = valid_cols - ((a.exclude_self && i < a.M && vb[i]) ? 1 : 0);
        const T g = g_rows[i];
        if (n_i > 0 && g != T(0)) {
          const T s = pdcr::scaled_logit(acc[q], a.inv_tau);
          const T inv_n = T(1) / static_cast<T>(n_i);
          T sum = T(0);
          for (int64_t w = 0; w < a.W; ++w) {
            const T d = pdcr::window_divergence(pa + (w * a.N + i) * a.K, pb + (w * a.M + j) * a.K, 1,
                                                static_cast<int>(a.K), a.fg_l1);
            T w_pos, w_neg;
            pdcr::pair_weights(d, weights, w_pos, w_neg);
            const T prob = simd::exp(s * w_neg - lse_b[i * a.W + w]);
            sum += pdcr::pair_grad_term(prob, w_pos, w_neg, inv_n);
          }
          G = g * scale * sum;
        }
      }
      s_g[item][lane + kLanesPerItem * q] = G;
    }
    __syncthreads();
    // grad[o][c] += Σ_p G[o][p]·inner[p][c]: the 4 lanes of an item split its channels.
    if (o < n_outer) {
      const int64_t tile = n_inner - j0 < kInner ? n_inner - j0 : kInner;
      for (int64_t c = lane; c < a.C; c += kLanesPerItem) {
        T sum = T(0);
        for (int64_t p = 0; p < tile; ++p) sum += s_g[item][p] * inner_feat[(j0 + p) * a.C + c];
        grad_b[o * a.C + c] += sum;
      }
    }
    __syncthreads();
  }
}

}  // namespace

template <typename T>
cudaError_t launch_pdcr_forward(const PdcrArgs<T>& args, T* loss, T* lse, cudaStream_t stream) {
  if (args.W > kMaxWindows || args.B > kPdcrMaxBatch) return cudaErrorInvalidValue;
  if (args.B == 0 || args.N == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((args.N + kOuter - 1) / kOuter), static_cast<unsigned>(args.B));
  pdcr_forward_kernel<T><<<grid, kThreads, 0, stream>>>(args, loss, lse);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_pdcr_backward(const PdcrArgs<T>& args, const T* grad_row, const T* lse, T* grad_fa, T* grad_fb,
                                 cudaStream_t stream) {
  if (args.W > kMaxWindows || args.B > kPdcrMaxBatch) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(grad_fa, 0, sizeof(T) * args.B * args.N * args.C, stream);
  if (err == cudaSuccess) err = cudaMemsetAsync(grad_fb, 0, sizeof(T) * args.B * args.M * args.C, stream);
  if (err != cudaSuccess || args.B == 0) return err;
  if (args.N > 0) {
    const dim3 grid(static_cast<unsigned>((args.N + kOuter - 1) / kOuter), static_cast<unsigned>(args.B));
    pdcr_backward_kernel<T, true><<<grid, kThreads, 0, stream>>>(args, grad_row, lse, grad_fa);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (args.M > 0) {
    const dim3 grid(static_cast<unsigned>((args.M + kOuter - 1) / kOuter), static_cast<unsigned>(args.B));
    pdcr_backward_kernel<T, false><<<grid, kThreads, 0, stream>>>(args, grad_row, lse, grad_fb);
    err = cudaGetLastError();
  }
  return err;
}

template cudaError_t launch_pdcr_forward<float>(const PdcrArgs<float>&, float*, float*, cudaStream_t);
template cudaError_t launch_pdcr_forward<double>(const PdcrArgs<double>&, double*, double*, cudaStream_t);
template cudaError_t launch_pdcr_backward<float>(const PdcrArgs<float>&, const float*, const float*, float*, float*,
                                                 cudaStream_t);
template cudaError_t launch_pdcr_backward<double>(const PdcrArgs<double>&, const double*, const double*, double*,
                                                  double*, cudaStream_t);

}  // namespace cuda
}  // namespace affseg
