// CUDA torch glue for cos_lse_fwd / cos_lse_bwd (SPEC §4): checks, allocation, stream; kernels in
// supcon_kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "affseg/checks.h"
#include "supcon_kernels.h"

namespace affseg {
namespace {

void check_inputs(const at::Tensor& f, const at::Tensor& valid) {
  AFFSEG_CHECK_FLOAT(f);
  AFFSEG_CHECK_DIM(f, 3);
  AFFSEG_CHECK_DEVICE(f, at::kCUDA);
  TORCH_CHECK(valid.scalar_type() == at::kBool, "valid must be bool, got ", valid.scalar_type());
  TORCH_CHECK(valid.dim() == 2 && valid.size(0) == f.size(0) && valid.size(1) == f.size(1),
              "valid must be (B, N) matching f ", f.sizes(), ", got ", valid.sizes());
  TORCH_CHECK(valid.device() == f.device(), "valid must be on the device of f");
}

at::Tensor cos_lse_fwd_cuda(const at::Tensor& f_in, const at::Tensor& valid_in, double inv_tau) {
  check_inputs(f_in, valid_in);
  const c10::cuda::CUDAGuard guard(f_in.device());
  const at::Tensor f = f_in.contiguous();
  const at::Tensor valid = valid_in.contiguous();
  at::Tensor lse = at::empty({f.size(0), f.size(1)}, f.options());
  if (lse.numel() == 0) return lse;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "cos_lse_fwd_cuda", [&] {
    cuda::cos_lse_fwd_launch<scalar_t>(f.data_ptr<scalar_t>(), valid.data_ptr<bool>(), f.size(0), f.size(1),
                                       f.size(2), static_cast<scalar_t>(inv_tau), lse.data_ptr<scalar_t>(),
                                       c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return lse;
}

at::Tensor cos_lse_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& f_in, const at::Tensor& valid_in,
                            const at::Tensor& lse_in, double inv_tau) {
  check_inputs(f_in, valid_in);
  AFFSEG_CHECK_SAME_DTYPE(grad_in, f_in);
  AFFSEG_CHECK_SAME_DTYPE(lse_in, f_in);
  TORCH_CHECK(grad_in.sizes() == valid_in.sizes() && lse_in.sizes() == valid_in.sizes(),
              "grad_lse and lse must be (B, N) like valid");
  const c10::cuda::CUDAGuard guard(f_in.device());
  const at::Tensor f = f_in.contiguous();
  const at::Tensor valid = valid_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  at::Tensor grad_f = at::empty_like(f);  // the kernel writes every element
  if (grad_f.numel() == 0) return grad_f;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "cos_lse_bwd_cuda", [&] {
    cuda::cos_lse_bwd_launch<scalar_t>(grad.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(), valid.data_ptr<bool>(),
                                       lse.data_ptr<scalar_t>(), f.size(0), f.size(1), f.size(2),
                                       static_cast<scalar_t>(inv_tau), grad_f.data_ptr<scalar_t>(),
                                       c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_f;
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CUDA, m) {
  m.impl("cos_lse_fwd", &affseg::cos_lse_fwd_cuda);
  m.impl("cos_lse_bwd", &affseg::cos_lse_bwd_cuda);
}
