// Torch-free CUDA launchers for the soft SupCon denominator (SPEC §4); kernels in supcon_kernels.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dot_precision.h"

namespace affseg {
namespace cuda {

// Most batch items: the batch is the grid's y dimension.
constexpr int64_t kCosLseMaxBatch = 65535;

// f (B, N, C) unit rows, valid (B, N) bool -> lse (B, N). T is float or double.
template <typename T>
void cos_lse_fwd_launch(const T* f, const bool* valid, int64_t B, int64_t N, int64_t C, T inv_tau, DotPrecision prec,
                        T* lse, cudaStream_t stream);

// grad_f (B, N, C), overwritten, from grad_lse (B, N) and the forward's lse (B, N).
template <typename T>
void cos_lse_bwd_launch(const T* grad_lse, const T* f, const bool* valid, const T* lse, int64_t B, int64_t N,
                        int64_t C, T inv_tau, DotPrecision prec, T* grad_f, cudaStream_t stream);

}  // namespace cuda
}  // namespace affseg
