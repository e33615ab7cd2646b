// Torch glue of the CUDA PDCR kernels (SPEC §3): checks, allocation, current stream, launch.
// The kernels and their math live in pdcr_kernels.cu and affseg/pdcr_math.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "affseg/checks.h"
#include "affseg/glue_checks.h"
#include "pdcr_kernels.h"

namespace affseg {
namespace {

template <typename T>
cuda::PdcrArgs<T> make_args(const at::Tensor& fa, const at::Tensor& pa, const at::Tensor& fb, const at::Tensor& pb,
                            const at::Tensor& va, const at::Tensor& vb, double inv_tau, bool swapped, bool fg_l1,
                            bool exclude_self) {
  return cuda::PdcrArgs<T>{fa.data_ptr<T>(), pa.data_ptr<T>(), fb.data_ptr<T>(), pb.data_ptr<T>(),
                           va.data_ptr<bool>(), vb.data_ptr<bool>(), fa.size(0), fa.size(1),
                           fb.size(1), fa.size(2), pa.size(1), pa.size(3),
                           static_cast<T>(inv_tau), swapped, fg_l1, exclude_self};
}

void check_cuda_limits(const at::Tensor& fa, const at::Tensor& phia) {
  TORCH_CHECK(phia.size(1) <= cuda::kPdcrMaxWindows, "the CUDA pdcr kernel supports 1 to ", cuda::kPdcrMaxWindows,
              " windows, got ", phia.size(1));
  TORCH_CHECK(fa.size(0) <= cuda::kPdcrMaxBatch, "the CUDA pdcr kernel takes at most ", cuda::kPdcrMaxBatch,
              " batch items, got ", fa.size(0));
}

std::tuple<at::Tensor, at::Tensor> pdcr_fwd_cuda(const at::Tensor& fa, const at::Tensor& phia, const at::Tensor& fb,
                                                 const at::Tensor& phib, const at::Tensor& valid_a,
                                                 const at::Tensor& valid_b, double inv_tau, bool swapped, bool fg_l1,
                                                 bool exclude_self, c10::string_view input_precision) {
  check_pdcr_inputs(fa, phia, fb, phib, valid_a, valid_b, at::kCUDA);
  const auto prec = static_cast<cuda::DotPrecision>(dot_precision_code(input_precision));
  check_cuda_limits(fa, phia);
  const c10::cuda::CUDAGuard guard(fa.device());
  at::Tensor loss = at::zeros({fa.size(0), fa.size(1)}, fa.options());
  at::Tensor lse = at::full({fa.size(0), fa.size(1), phia.size(1)}, -std::numeric_limits<double>::infinity(),
                            fa.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err;
  if (fa.scalar_type() == at::kFloat) {
    err = cuda::launch_pdcr_forward(make_args<float>(fa, phia, fb, phib, valid_a, valid_b, inv_tau, swapped, fg_l1,
                                                     exclude_self),
                                    prec, loss.data_ptr<float>(), lse.data_ptr<float>(), stream);
  } else {
    err = cuda::launch_pdcr_forward(make_args<double>(fa, phia, fb, phib, valid_a, valid_b, inv_tau, swapped, fg_l1,
                                                      exclude_self),
                                    prec, loss.data_ptr<double>(), lse.data_ptr<double>(), stream);
  }
  TORCH_CHECK(err == cudaSuccess, "pdcr_fwd CUDA launch failed: ", cudaGetErrorString(err));
  return {loss, lse};
}

// Both backward ops: the two sweeps of pdcr_bwd (grad_fa, grad_fb), or with `intra` (fa is fb, ...)
// the one sweep of pdcr_intra_bwd, whose gradient of f in both roles is returned as grad_fa.
std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_row, const at::Tensor& fa,
                                                 const at::Tensor& phia, const at::Tensor& fb, const at::Tensor& phib,
                                                 const at::Tensor& valid_a, const at::Tensor& valid_b,
                                                 const at::Tensor& row_lse, double inv_tau, bool swapped, bool fg_l1,
                                                 bool exclude_self, c10::string_view input_precision, bool intra) {
  check_pdcr_inputs(fa, phia, fb, phib, valid_a, valid_b, at::kCUDA);
  const auto prec = static_cast<cuda::DotPrecision>(dot_precision_code(input_precision));
  check_cuda_limits(fa, phia);
  check_pdcr_bwd_inputs(grad_row, row_lse, fa, phia, at::kCUDA);
  const c10::cuda::CUDAGuard guard(fa.device());
  const at::Tensor g = grad_row.contiguous();
  const at::Tensor lse = row_lse.contiguous();
  at::Tensor grad_fa = at::empty_like(fa);
  at::Tensor grad_fb = intra ? at::Tensor() : at::empty_like(fb);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES(fa.scalar_type(), "pdcr_bwd_cuda", [&] {
    const auto args = make_args<scalar_t>(fa, phia, fb, phib, valid_a, valid_b, inv_tau, swapped, fg_l1, exclude_self);
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* lp = lse.data_ptr<scalar_t>();
    err = intra ? cuda::launch_pdcr_intra_backward(args, prec, gp, lp, grad_fa.data_ptr<scalar_t>(), stream)
                : cuda::launch_pdcr_backward(args, prec, gp, lp, grad_fa.data_ptr<scalar_t>(),
                                             grad_fb.data_ptr<scalar_t>(), stream);
  });
  TORCH_CHECK(err == cudaSuccess, "pdcr_bwd CUDA launch failed: ", cudaGetErrorString(err));
  return {grad_fa, grad_fb};
}

std::tuple<at::Tensor, at::Tensor> pdcr_bwd_cuda(const at::Tensor& grad_row, const at::Tensor& fa,
                                                 const at::Tensor& phia, const at::Tensor& fb, const at::Tensor& phib,
                                                 const at::Tensor& valid_a, const at::Tensor& valid_b,
                                                 const at::Tensor& row_lse, double inv_tau, bool swapped, bool fg_l1,
                                                 bool exclude_self, c10::string_view input_precision) {
  return backward_cuda(grad_row, fa, phia, fb, phib, valid_a, valid_b, row_lse, inv_tau, swapped, fg_l1, exclude_self,
                       input_precision, false);
}

// Intra-layer ops: one feature set as rows and columns; the backward is one sweep
// (csrc/cuda/pdcr_kernels.cu launch_pdcr_intra_backward).
std::tuple<at::Tensor, at::Tensor> pdcr_intra_fwd_cuda(const at::Tensor& f, const at::Tensor& phi,
                                                       const at::Tensor& valid, double inv_tau, bool swapped,
                                                       bool fg_l1, bool exclude_self,
                                                       c10::string_view input_precision) {
  return pdcr_fwd_cuda(f, phi, f, phi, valid, valid, inv_tau, swapped, fg_l1, exclude_self, input_precision);
}

at::Tensor pdcr_intra_bwd_cuda(const at::Tensor& grad_row, const at::Tensor& f, const at::Tensor& phi,
                               const at::Tensor& valid, const at::Tensor& row_lse, double inv_tau, bool swapped,
                               bool fg_l1, bool exclude_self, c10::string_view input_precision) {
  return std::get<0>(backward_cuda(grad_row, f, phi, f, phi, valid, valid, row_lse, inv_tau, swapped, fg_l1,
                                   exclude_self, input_precision, true));
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CUDA, m) {
  m.impl("pdcr_fwd", &affseg::pdcr_fwd_cuda);
  m.impl("pdcr_bwd", &affseg::pdcr_bwd_cuda);
  m.impl("pdcr_intra_fwd", &affseg::pdcr_intra_fwd_cuda);
  m.impl("pdcr_intra_bwd", &affseg::pdcr_intra_bwd_cuda);
}
