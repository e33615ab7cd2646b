// Torch-free CUDA launchers of the fused PDCR contrastive term (SPEC §3); kernels in pdcr_kernels.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dot_precision.h"

namespace affseg {
namespace cuda {

// Most windows the kernels take: the forward keeps (max, sum, pos) per thread and window in static
// shared memory, 3·kPdcrMaxWindows·128·sizeof(T) bytes (24 KiB for double).
constexpr int64_t kPdcrMaxWindows = 8;
// Most batch items: the batch is the grid's y dimension.
constexpr int64_t kPdcrMaxBatch = 65535;

// Unit rows fa (B,N,C) with ratios pa (B,W,N,K) and mask va (B,N); unit columns fb (B,M,C), pb
// (B,W,M,K), vb (B,M). Contiguous device memory; intra-layer callers pass the same pointers twice.
template <typename T>
struct PdcrArgs {
  const T* fa;
  const T* pa;
  const T* fb;
  const T* pb;
  const bool* va;
  const bool* vb;
  int64_t B, N, M, C, W, K;
  T inv_tau;
  bool swapped, fg_l1, exclude_self;
};

// loss (B,N): per-row loss, 0 where a row is invalid or has no valid column; lse (B,N,W): −inf there.
template <typename T>
cudaError_t launch_pdcr_forward(const PdcrArgs<T>& args, DotPrecision prec, T* loss, T* lse, cudaStream_t stream);

// grad_fa (B,N,C) and grad_fb (B,M,C), zeroed here, from grad_row (B,N) and the forward's lse.
template <typename T>
cudaError_t launch_pdcr_backward(const PdcrArgs<T>& args, DotPrecision prec, const T* grad_row, const T* lse,
                                 T* grad_fa, T* grad_fb, cudaStream_t stream);

// Intra-layer pairs (args with fa == fb, pa == pb, va == vb, N == M; else cudaErrorInvalidValue):
// grad_f (B,N,C), every element written here, the gradient of f in both roles, from one sweep (each
// pair adds its row's and its column's term).
template <typename T>
cudaError_t launch_pdcr_intra_backward(const PdcrArgs<T>& args, DotPrecision prec, const T* grad_row, const T* lse,
                                       T* grad_f, cudaStream_t stream);

}  // namespace cuda
}  // namespace affseg
