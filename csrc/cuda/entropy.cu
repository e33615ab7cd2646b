// CUDA torch glue for patch_entropy (SPEC §5): checks, allocation, stream; kernels in entropy_kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "affseg/checks.h"
#include "entropy_kernels.h"

namespace affseg {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_entropy_cuda(const at::Tensor& logits_in,
                                                                    at::IntArrayRef patch_size, bool shannon,
                                                                    const std::optional<at::Tensor>& class_mask) {
  AFFSEG_CHECK_FLOAT(logits_in);
  AFFSEG_CHECK_DEVICE(logits_in, at::kCUDA);
  TORCH_CHECK(logits_in.dim() == 4 || logits_in.dim() == 5, "logits must be (B, K, *S) with 2 or 3 spatial dims");
  const int64_t nd = logits_in.dim() - 2;
  TORCH_CHECK(static_cast<int64_t>(patch_size.size()) == nd, "patch_size needs one entry per spatial dim");
  TORCH_CHECK(logits_in.size(1) >= 1 && logits_in.size(1) <= cuda::kEntropyMaxClasses,
              "the CUDA patch_entropy takes 1 to ", cuda::kEntropyMaxClasses, " classes, got ", logits_in.size(1));
  const bool has_mask = class_mask.has_value() && class_mask->defined();
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();

  cuda::EntropyGeometry g{logits.size(0), logits.size(1), {1, 1, 1}, {1, 1, 1}, {1, 1, 1}};
  std::vector<int64_t> mask_shape{g.batch}, shape_k{g.batch, g.classes}, shape_h{g.batch, (shannon && !has_mask) ? 1 : g.classes};
  for (int64_t d = 0; d < nd; ++d) {
    const int64_t slot = 3 - nd + d;
    TORCH_CHECK(patch_size[d] > 0, "patch_size entries must be positive");
    g.size[slot] = logits.size(2 + d);
    g.patch[slot] = patch_size[d];
    g.tiles[slot] = (g.size[slot] + g.patch[slot] - 1) / g.patch[slot];
    mask_shape.push_back(g.size[slot]);
    shape_k.push_back(g.tiles[slot]);
    shape_h.push_back(g.tiles[slot]);
  }
  at::Tensor mask;
  if (has_mask) {
    TORCH_CHECK(class_mask->scalar_type() == at::kLong, "class_mask must be int64");
    TORCH_CHECK(class_mask->device() == logits.device(), "class_mask must be on the device of logits");
    TORCH_CHECK(class_mask->sizes() == at::IntArrayRef(mask_shape), "class_mask must have shape (B, *S)");
    mask = class_mask->contiguous();
  }
  TORCH_CHECK(g.tiles[0] * g.tiles[1] * g.tiles[2] < (int64_t(1) << 31) && g.batch < 65536,
              "patch_entropy on CUDA takes fewer than 2^31 tiles and 65536 images");
  at::Tensor entropy = at::empty(shape_h, logits.options());
  at::Tensor mean_conf = at::empty(shape_k, logits.options());
  at::Tensor count = at::empty(shape_k, logits.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "patch_entropy_cuda", [&] {
    cuda::patch_entropy_launch<scalar_t>(logits.data_ptr<scalar_t>(), has_mask ? mask.data_ptr<int64_t>() : nullptr,
                                         entropy.data_ptr<scalar_t>(), mean_conf.data_ptr<scalar_t>(),
                                         count.data_ptr<int64_t>(), g, shannon, c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {entropy, mean_conf, count};
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CUDA, m) { m.impl("patch_entropy", &affseg::patch_entropy_cuda); }
