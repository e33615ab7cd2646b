// CUDA torch glue for patch_label_ratios (SPEC §1): checks, allocation, stream; kernels in labels_kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "affseg/checks.h"
#include "labels_kernels.h"

namespace affseg {
namespace {

std::tuple<at::Tensor, at::Tensor> patch_label_ratios_cuda(const at::Tensor& labels_in, const at::Tensor& centers_in,
                                                            at::IntArrayRef window_sizes, int64_t num_classes,
                                                            std::optional<int64_t> ignore_index) {
  TORCH_CHECK(labels_in.scalar_type() == at::kLong, "labels must be int64, got ", labels_in.scalar_type());
  TORCH_CHECK(centers_in.scalar_type() == at::kLong, "centers must be int64, got ", centers_in.scalar_type());
  TORCH_CHECK(labels_in.dim() == 3 || labels_in.dim() == 4, "labels must be (B, H, W) or (B, D, H, W)");
  AFFSEG_CHECK_DIM(centers_in, 3);
  AFFSEG_CHECK_DEVICE(labels_in, at::kCUDA);
  TORCH_CHECK(centers_in.device() == labels_in.device(), "centers must be on the device of labels");
  const int64_t ndim = labels_in.dim() - 1;
  TORCH_CHECK(centers_in.size(0) == labels_in.size(0) && centers_in.size(2) == ndim, "centers must be (B, N, ",
              ndim, ") for labels of shape ", labels_in.sizes(), ", got ", centers_in.sizes());
  TORCH_CHECK(num_classes >= 1, "num_classes must be positive, got ", num_classes);
  for (int64_t L : window_sizes) TORCH_CHECK(L >= 1, "window sizes must be positive, got ", L);
  const c10::cuda::CUDAGuard guard(labels_in.device());
  const at::Tensor labels = labels_in.contiguous();
  const at::Tensor centers = centers_in.contiguous();

  cuda::LabelGeometry g{labels.size(0), num_classes, ndim, {0, 0, 0}};
  int64_t pixels = 1, cells = 1;
  for (int64_t d = 0; d < ndim; ++d) {
    g.size[d] = labels.size(d + 1);
    pixels *= g.size[d];
    cells *= g.size[d] + 1;
  }
  TORCH_CHECK(pixels < std::numeric_limits<int32_t>::max(),
              "patch_label_ratios counts in int32: an image must hold fewer than 2^31 pixels, got ", pixels);
  const int64_t W = static_cast<int64_t>(window_sizes.size());
  const int64_t N = centers.size(1);
  at::Tensor phi = at::empty({g.batch, W, N, num_classes}, labels.options().dtype(at::kFloat));
  at::Tensor valid = at::empty({g.batch, W, N}, labels.options().dtype(at::kBool));
  if (phi.numel() == 0 && valid.numel() == 0) return {phi, valid};

  at::Tensor sat = at::zeros({g.batch, num_classes, cells}, labels.options().dtype(at::kInt));
  // Host → device copy of the W window sizes (asynchronous on the current stream, no sync).
  const std::vector<int64_t> host_windows(window_sizes.begin(), window_sizes.end());
  const at::Tensor windows = at::tensor(host_windows, labels.options().device(at::kCPU)).to(labels.device(), true);
  cuda::patch_label_ratios_launch(labels.data_ptr<int64_t>(), centers.data_ptr<int64_t>(), windows.data_ptr<int64_t>(),
                                  W, N, g, ignore_index.has_value(), ignore_index.value_or(0), sat.data_ptr<int32_t>(),
                                  phi.data_ptr<float>(), valid.data_ptr<bool>(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {phi, valid};
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CUDA, m) { m.impl("patch_label_ratios", &affseg::patch_label_ratios_cuda); }
