// Torch-free CUDA launchers for UAFS re-weighting (SPEC §6); kernels in uafs_kernels.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace affseg {
namespace cuda {

// x, y, grad, grad_x T (B, C, N) and att, grad_att T (B, M, N), all contiguous (N = Π S_d).
template <typename T>
void uafs_fwd_launch(const T* x, const T* att, T* y, int64_t B, int64_t C, int64_t M, int64_t N, cudaStream_t stream);

template <typename T>
void uafs_bwd_launch(const T* grad, const T* x, const T* att, T* grad_x, T* grad_att, int64_t B, int64_t C, int64_t M,
                     int64_t N, cudaStream_t stream);

}  // namespace cuda
}  // namespace affseg
