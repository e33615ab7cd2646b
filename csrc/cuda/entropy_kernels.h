// Torch-free CUDA launchers for patch_entropy (SPEC §5); kernels in entropy_kernels.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace affseg {
namespace cuda {

// 2D images use size[0] = patch[0] = 1; tiles[d] = ceil(size[d] / patch[d]).
struct EntropyGeometry {
  int64_t batch;
  int64_t classes;
  int64_t size[3];
  int64_t patch[3];
  int64_t tiles[3];
};

// Largest K the launcher's shared-memory layout takes (per-warp sums of K classes, 32 threads).
constexpr int64_t kEntropyMaxClasses = 2048;

// logits T (B, K, *S) contiguous; mask int64 (B, *S) or nullptr; entropy T (B, K or 1, *P),
// mean_conf T (B, K, *P), count int64 (B, K, *P).
template <typename T>
void patch_entropy_launch(const T* logits, const int64_t* mask, T* entropy, T* mean_conf, int64_t* count,
                          EntropyGeometry g, bool shannon, cudaStream_t stream);

}  // namespace cuda
}  // namespace affseg
