// CUDA torch glue for UAFS re-weighting (SPEC §6): checks, allocation, stream; kernels in uafs_kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "affseg/checks.h"
#include "uafs_kernels.h"

namespace affseg {
namespace {

void check_pair(const at::Tensor& x, const at::Tensor& att) {
  AFFSEG_CHECK_FLOAT(x);
  AFFSEG_CHECK_SAME_DTYPE(x, att);
  AFFSEG_CHECK_DEVICE(x, at::kCUDA);
  TORCH_CHECK(att.device() == x.device(), "att must be on the device of x");
  TORCH_CHECK(x.dim() >= 3 && x.dim() <= 5, "x must be (B, C, *S) with 1 to 3 spatial dims");
  AFFSEG_CHECK_DIM(att, x.dim());
  TORCH_CHECK(att.size(0) == x.size(0) && att.sizes().slice(2) == x.sizes().slice(2),
              "att must match x in batch and spatial dims");
  TORCH_CHECK(att.size(1) >= 2, "att needs M >= 2 channels");
}

at::Tensor uafs_fwd_cuda(const at::Tensor& x_in, const at::Tensor& att_in) {
  check_pair(x_in, att_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), att = att_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t B = x.size(0), C = x.size(1), M = att.size(1), N = att.numel() / std::max<int64_t>(B * M, 1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "uafs_fwd_cuda", [&] {
    cuda::uafs_fwd_launch<scalar_t>(x.data_ptr<scalar_t>(), att.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), B, C, M, N,
                                    c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::tuple<at::Tensor, at::Tensor> uafs_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                 const at::Tensor& att_in) {
  check_pair(x_in, att_in);
  AFFSEG_CHECK_SAME_DTYPE(grad_in, x_in);
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "grad_out must have the shape of x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor g = grad_in.contiguous(), x = x_in.contiguous(), att = att_in.contiguous();
  at::Tensor gx = at::empty_like(x);
  at::Tensor ga = at::empty_like(att);
  const int64_t B = x.size(0), C = x.size(1), M = att.size(1), N = att.numel() / std::max<int64_t>(B * M, 1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "uafs_bwd_cuda", [&] {
    cuda::uafs_bwd_launch<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data_ptr<scalar_t>(),
                                    gx.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(), B, C, M, N,
                                    c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gx, ga};
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CUDA, m) {
  m.impl("uafs_fwd", &affseg::uafs_fwd_cuda);
  m.impl("uafs_bwd", &affseg::uafs_bwd_cuda);
}
