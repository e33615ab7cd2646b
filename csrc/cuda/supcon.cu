// CUDA torch glue for cos_lse_fwd / cos_lse_bwd (SPEC §4): checks, allocation, stream; kernels in
// supcon_kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "affseg/checks.h"
#include "affseg/glue_checks.h"
#include "supcon_kernels.h"

namespace affseg {
namespace {

at::Tensor cos_lse_fwd_cuda(const at::Tensor& f_in, const at::Tensor& valid_in, double inv_tau,
                            c10::string_view input_precision) {
  check_cos_lse_inputs(f_in, valid_in, at::kCUDA);
  const auto prec = static_cast<cuda::DotPrecision>(dot_precision_code(input_precision));
  TORCH_CHECK(f_in.size(0) <= cuda::kCosLseMaxBatch, "the CUDA cos_lse kernels take at most ", cuda::kCosLseMaxBatch,
              " batch items, got ", f_in.size(0));
  const c10::cuda::CUDAGuard guard(f_in.device());
  const at::Tensor f = f_in.contiguous();
  const at::Tensor valid = valid_in.contiguous();
  at::Tensor lse = at::empty({f.size(0), f.size(1)}, f.options());
  if (lse.numel() == 0) return lse;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "cos_lse_fwd_cuda", [&] {
    cuda::cos_lse_fwd_launch<scalar_t>(f.data_ptr<scalar_t>(), valid.data_ptr<bool>(), f.size(0), f.size(1),
                                       f.size(2), static_cast<scalar_t>(inv_tau), prec, lse.data_ptr<scalar_t>(),
                                       c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return lse;
}

at::Tensor cos_lse_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& f_in, const at::Tensor& valid_in,
                            const at::Tensor& lse_in, double inv_tau, c10::string_view input_precision) {
  check_cos_lse_bwd_inputs(grad_in, f_in, valid_in, lse_in, at::kCUDA);
  const auto prec = static_cast<cuda::DotPrecision>(dot_precision_code(input_precision));
  TORCH_CHECK(f_in.size(0) <= cuda::kCosLseMaxBatch, "the CUDA cos_lse kernels take at most ", cuda::kCosLseMaxBatch,
              " batch items, got ", f_in.size(0));
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
                                       static_cast<scalar_t>(inv_tau), prec, grad_f.data_ptr<scalar_t>(),
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
