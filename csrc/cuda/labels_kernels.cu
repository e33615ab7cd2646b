// CUDA kernels for patch_label_ratios (SPEC §1). Three steps, all on `stream`, no host sync:
//  1. one warp per (b, class, row of the leading dims): warp-shuffle prefix count along the last dim
//     (coalesced reads of the labels, writes into the table shifted by one in every dim);
//  2. per remaining dim, one thread per (slab, inner cell) scanning along that dim (coalesced: adjacent
//     threads own adjacent inner cells);
//  3. one thread per (b, window, centre): the 2^ndim corner reads per class (affseg/labels_math.h).
// int64 indexing throughout; grid-stride loops so any size fits in the grid limits.
#include "labels_kernels.h"

#include "affseg/labels_math.h"

namespace affseg {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int64_t kMaxBlocks = 65535;

int64_t blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks);
}

__global__ void row_prefix_kernel(const int64_t* __restrict__ labels, int32_t* __restrict__ sat, LabelGeometry g,
                                  int64_t rows, int64_t cells, bool has_ignore, int64_t ignore_index) {
  const int64_t last = g.ndim == 2 ? g.size[1] : g.size[2];
  const int64_t lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const int64_t total = g.batch * g.classes * rows;
  for (int64_t item = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; item < total;
       item += warps) {
    const int64_t r = item % rows;
    const int64_t k = (item / rows) % g.classes;
    const int64_t b = item / (rows * g.classes);
    const int64_t* row = labels;
    row += (b * rows + r) * last;
    int64_t offset;
    if (g.ndim == 2) {
      offset = (r + 1) * (g.size[1] + 1) + 1;
    } else {
      offset = ((r / g.size[1] + 1) * (g.size[1] + 1) + (r % g.size[1] + 1)) * (g.size[2] + 1) + 1;
    }
    int32_t* out = sat + (b * g.classes + k) * cells + offset;
    int32_t carry = 0;
    for (int64_t x0 = 0; x0 < last; x0 += kWarp) {
      const int64_t x = x0 + lane;
      int32_t v = x < last ? (labels::counted_class(row[x], g.classes, has_ignore, ignore_index) == k) : 0;
#pragma unroll
      for (int step = 1; step < kWarp; step *= 2) {
        const int32_t up = __shfl_up_sync(0xffffffffu, v, step);
        if (lane >= step) v += up;
      }
      if (x < last) out[x] = carry + v;
      carry += __shfl_sync(0xffffffffu, v, kWarp - 1);
    }
  }
}

__global__ void scan_dim_kernel(int32_t* __restrict__ sat, int64_t slabs, int64_t n, int64_t inner) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < slabs * inner; t += stride) {
    int32_t* p = sat + (t / inner) * n * inner + t % inner;
    int32_t acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      acc += p[i * inner];
      p[i * inner] = acc;
    }
  }
}

__global__ void gather_kernel(const int32_t* __restrict__ sat, const int64_t* __restrict__ centers,
                              const int64_t* __restrict__ windows, int64_t num_windows, int64_t num_centers,
                              LabelGeometry g, int64_t cells, float* __restrict__ phi, bool* __restrict__ valid) {
  const int64_t K = g.classes;
  const int64_t s1 = g.size[1] + 1;
  const int64_t s2 = g.ndim == 3 ? g.size[2] + 1 : 1;
  const int64_t total = g.batch * num_windows * num_centers;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    const int64_t n = t % num_centers;
    const int64_t w = (t / num_centers) % num_windows;
    const int64_t b = t / (num_centers * num_windows);
    const int64_t* c = centers + (b * num_centers + n) * g.ndim;
    int64_t lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
#pragma unroll
    for (int d = 0; d < 3; ++d) {  // unrolled so lo/hi stay in registers
      if (d < g.ndim) labels::window_bounds(c[d], windows[w], g.size[d], &lo[d], &hi[d]);
    }
    float* out = phi + t * K;
    int32_t count_sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t* table = sat + (b * K + k) * cells;
      const int32_t count = g.ndim == 2 ? labels::box_count_2d(table, s1, lo[0], hi[0], lo[1], hi[1])
                                        : labels::box_count_3d(table, s1 * s2, s2, lo[0], hi[0], lo[1], hi[1],
                                                               lo[2], hi[2]);
      out[k] = static_cast<float>(count);
      count_sum += count;
    }
    for (int64_t k = 0; k < K; ++k) out[k] = labels::ratio_of_float(out[k], count_sum);
    valid[t] = count_sum > 0;
  }
}

}  // namespace

void patch_label_ratios_launch(const int64_t* labels, const int64_t* centers, const int64_t* windows,
                               int64_t num_windows, int64_t num_centers, LabelGeometry g, bool has_ignore,
                               int64_t ignore_index, int32_t* sat, float* phi, bool* valid, cudaStream_t stream) {
  int64_t cells = 1, pixels = 1;
  for (int64_t d = 0; d < g.ndim; ++d) {
    cells *= g.size[d] + 1;
    pixels *= g.size[d];
  }
  const int64_t last = g.size[g.ndim - 1];
  const int64_t rows = last > 0 ? pixels / last : 0;
  const int64_t row_warps = g.batch * g.classes * rows;
  if (row_warps > 0) {
    row_prefix_kernel<<<blocks_for(row_warps * kWarp), kThreads, 0, stream>>>(labels, sat, g, rows, cells,
                                                                              has_ignore, ignore_index);
  }
  for (int64_t d = 0; d + 1 < g.ndim; ++d) {
    int64_t outer = 1, inner = 1;
    for (int64_t e = 0; e < d; ++e) outer *= g.size[e] + 1;
    for (int64_t e = d + 1; e < g.ndim; ++e) inner *= g.size[e] + 1;
    const int64_t slabs = g.batch * g.classes * outer;
    scan_dim_kernel<<<blocks_for(slabs * inner), kThreads, 0, stream>>>(sat, slabs, g.size[d] + 1, inner);
  }
  const int64_t items = g.batch * num_windows * num_centers;
  if (items > 0) {
    gather_kernel<<<blocks_for(items), kThreads, 0, stream>>>(sat, centers, windows, num_windows, num_centers, g,
                                                              cells, phi, valid);
  }
}

}  // namespace cuda
}  // namespace affseg
