// Torch-free CUDA launchers for patch_label_ratios (SPEC §1); kernels in labels_kernels.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace affseg {
namespace cuda {

struct LabelGeometry {
  int64_t batch;
  int64_t classes;
  int64_t ndim;     // 2 or 3
  int64_t size[3];  // spatial sizes S_d (first ndim used)
};

// labels int64 (B, *S) contiguous; centers int64 (B, N, ndim); windows int64 (W,) on the device;
// sat int32 (B, K, Π(S_d + 1)) zero-filled scratch; phi float (B, W, N, K); valid bool (B, W, N).
void patch_label_ratios_launch(const int64_t* labels, const int64_t* centers, const int64_t* windows,
                               int64_t num_windows, int64_t num_centers, LabelGeometry g, bool has_ignore,
                               int64_t ignore_index, int32_t* sat, float* phi, bool* valid, cudaStream_t stream);

}  // namespace cuda
}  // namespace affseg
