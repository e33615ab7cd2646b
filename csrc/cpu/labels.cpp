// CPU kernels for patch_label_ratios (SPEC §1): per-class summed-area tables built in one pass over
// the labels (a per-row prefix sum, then one in-place scan per remaining dim), then a gather of the
// 2^ndim corners of every (centre, window, class). Arithmetic in affseg/labels_math.h (math and
// memory traffic are stated there).
// Limits: labels int64 (B, H, W) or (B, D, H, W), centers int64 (B, N, ndim), num_classes ≥ 1, window
// sizes ≥ 1; counts are int32, so an image holds fewer than 2^31 − 1 pixels (checked below); the
// tables take 4·B·K·Π(S_d + 1) bytes. phi is float32 whatever the caller's feature dtype. No SIMD
// build: the scans are integer adds GCC vectorises on the baseline, and the gather is memory-bound.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "affseg/checks.h"
#include "affseg/labels_math.h"

namespace affseg {
namespace {

// Scan chunk of the inner (contiguous) extent handled by one OpenMP task.
constexpr int64_t kScanChunk = 1024;

struct Geometry {
  int64_t batch, classes, ndim;
  int64_t size[3];   // spatial sizes S_d
  int64_t table[3];  // table sizes S_d + 1
  int64_t pixels, cells;
};

Geometry geometry(const at::Tensor& labels, int64_t num_classes) {
  Geometry g{};
  g.batch = labels.size(0);
  g.classes = num_classes;
  g.ndim = labels.dim() - 1;
  g.pixels = 1;
  g.cells = 1;
  for (int64_t d = 0; d < g.ndim; ++d) {
    g.size[d] = labels.size(d + 1);
    g.table[d] = g.size[d] + 1;
    g.pixels *= g.size[d];
    g.cells *= g.table[d];
  }
  return g;
}

// Row pass: for every (b, row of the leading dims), per-class prefix counts along the last dim,
// written into the table shifted by one in every dim (the zero slices stay from the allocation).
void row_prefix_counts(const int64_t* labels, int32_t* sat, const Geometry& g, bool has_ignore, int64_t ignore) {
  const int64_t last = g.size[g.ndim - 1];
  const int64_t rows = g.pixels / std::max<int64_t>(last, 1);
  const int64_t total_rows = g.batch * rows;
#pragma omp parallel for schedule(static)
  for (int64_t br = 0; br < total_rows; ++br) {
    const int64_t b = br / rows, r = br % rows;
    const int64_t* row = labels + b * g.pixels + r * last;
    int64_t offset;  // offset of table cell (r_0 + 1, ..., 1) within one class table
    if (g.ndim == 2) {
      offset = (r + 1) * g.table[1] + 1;
    } else {
      offset = ((r / g.size[1] + 1) * g.table[1] + (r % g.size[1] + 1)) * g.table[2] + 1;
    }
    for (int64_t k = 0; k < g.classes; ++k) {
      int32_t* out = sat + (b * g.classes + k) * g.cells + offset;
      int32_t acc = 0;
      for (int64_t x = 0; x < last; ++x) {
        acc += labels::counted_class(row[x], g.classes, has_ignore, ignore) == k;
        out[x] = acc;
      }
    }
  }
}

// In-place inclusive scan of every class table along dim d (d < ndim - 1), viewing a table as
// (outer, T_d, inner): each slice adds the previous one, vectorised over the contiguous inner extent.
void scan_dim(int32_t* sat, const Geometry& g, int64_t d) {
  int64_t outer = 1, inner = 1;
  for (int64_t e = 0; e < d; ++e) outer *= g.table[e];
  for (int64_t e = d + 1; e < g.ndim; ++e) inner *= g.table[e];
  const int64_t n = g.table[d];
  const int64_t slabs = g.batch * g.classes * outer;
  const int64_t chunks = (inner + kScanChunk - 1) / kScanChunk;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t s = 0; s < slabs; ++s) {
    for (int64_t c = 0; c < chunks; ++c) {
      int32_t* base = sat + s * n * inner + c * kScanChunk;
      const int64_t len = std::min(kScanChunk, inner - c * kScanChunk);
      for (int64_t i = 1; i < n; ++i) {
        const int32_t* prev = base + (i - 1) * inner;
        int32_t* cur = base + i * inner;
        for (int64_t x = 0; x < len; ++x) cur[x] += prev[x];
      }
    }
  }
}

void gather_ratios(const int32_t* sat, const int64_t* centers, const int64_t* windows, int64_t num_windows,
                   int64_t n_centers, const Geometry& g, float* phi, bool* valid) {
  const int64_t K = g.classes;
  const int64_t items = g.batch * n_centers;
#pragma omp parallel for schedule(static)
  for (int64_t bn = 0; bn < items; ++bn) {
    const int64_t b = bn / n_centers, n = bn % n_centers;
    const int64_t* c = centers + bn * g.ndim;
    for (int64_t w = 0; w < num_windows; ++w) {
      int64_t lo[3], hi[3];
      for (int64_t d = 0; d < g.ndim; ++d) labels::window_bounds(c[d], windows[w], g.size[d], &lo[d], &hi[d]);
      float* out = phi + ((b * num_windows + w) * n_centers + n) * K;
      int32_t total = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t* table = sat + (b * K + k) * g.cells;
        const int32_t count =
            g.ndim == 2 ? labels::box_count_2d(table, g.table[1], lo[0], hi[0], lo[1], hi[1])
                        : labels::box_count_3d(table, g.table[1] * g.table[2], g.table[2], lo[0], hi[0], lo[1], hi[1],
                                               lo[2], hi[2]);
        out[k] = static_cast<float>(count);  // the reference also divides float(count)
        total += count;
      }
      for (int64_t k = 0; k < K; ++k) out[k] = labels::ratio_of_float(out[k], total);
      valid[(b * num_windows + w) * n_centers + n] = total > 0;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> patch_label_ratios_cpu(const at::Tensor& labels_in, const at::Tensor& centers_in,
                                                           at::IntArrayRef window_sizes, int64_t num_classes,
                                                           std::optional<int64_t> ignore_index) {
  TORCH_CHECK(labels_in.scalar_type() == at::kLong, "labels must be int64, got ", labels_in.scalar_type());
  TORCH_CHECK(centers_in.scalar_type() == at::kLong, "centers must be int64, got ", centers_in.scalar_type());
  TORCH_CHECK(labels_in.dim() == 3 || labels_in.dim() == 4, "labels must be (B, H, W) or (B, D, H, W), got ",
              labels_in.dim(), " dims");
  AFFSEG_CHECK_DIM(centers_in, 3);
  AFFSEG_CHECK_DEVICE(labels_in, at::kCPU);
  AFFSEG_CHECK_DEVICE(centers_in, at::kCPU);
  const int64_t ndim = labels_in.dim() - 1;
  TORCH_CHECK(centers_in.size(0) == labels_in.size(0) && centers_in.size(2) == ndim, "centers must be (B, N, ",
              ndim, ") for labels of shape ", labels_in.sizes(), ", got ", centers_in.sizes());
  TORCH_CHECK(num_classes >= 1, "num_classes must be positive, got ", num_classes);
  for (int64_t L : window_sizes) TORCH_CHECK(L >= 1, "window sizes must be positive, got ", L);
  const at::Tensor labels = labels_in.contiguous();
  const at::Tensor centers = centers_in.contiguous();
  const Geometry g = geometry(labels, num_classes);
  TORCH_CHECK(g.pixels < std::numeric_limits<int32_t>::max(),
              "patch_label_ratios counts in int32: an image must hold fewer than 2^31 pixels, got ", g.pixels);

  const int64_t W = static_cast<int64_t>(window_sizes.size());
  const int64_t N = centers.size(1);
  at::Tensor phi = at::empty({g.batch, W, N, num_classes}, labels.options().dtype(at::kFloat));
  at::Tensor valid = at::empty({g.batch, W, N}, labels.options().dtype(at::kBool));
  if (phi.numel() == 0 && valid.numel() == 0) return {phi, valid};

  at::Tensor sat = at::zeros({g.batch, num_classes, g.cells}, labels.options().dtype(at::kInt));
  row_prefix_counts(labels.data_ptr<int64_t>(), sat.data_ptr<int32_t>(), g, ignore_index.has_value(),
                    ignore_index.value_or(0));
  for (int64_t d = 0; d + 1 < ndim; ++d) scan_dim(sat.data_ptr<int32_t>(), g, d);
  const std::vector<int64_t> windows(window_sizes.begin(), window_sizes.end());
  gather_ratios(sat.data_ptr<int32_t>(), centers.data_ptr<int64_t>(), windows.data(), W, N, g,
                phi.data_ptr<float>(), valid.data_ptr<bool>());
  return {phi, valid};
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CPU, m) { m.impl("patch_label_ratios", &affseg::patch_label_ratios_cpu); }
