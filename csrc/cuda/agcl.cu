// CUDA torch glue of the Semi-AGCL ops (SPEC §7): checks (shared with the CPU, plus the limits of
// agcl_kernels.h), allocation, device guard and stream; kernels in agcl_kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "affseg/checks.h"
#include "affseg/glue_checks.h"
#include "agcl_kernels.h"

namespace affseg {
namespace {

void check_affinity_limits(const at::Tensor& y_t) {
  TORCH_CHECK(y_t.size(1) <= cuda::kAffinityMaxDim, "the CUDA affinity_matrix kernels take D <= ",
              cuda::kAffinityMaxDim, ", got D = ", y_t.size(1));
  TORCH_CHECK(y_t.size(0) <= cuda::kAffinityMaxRows, "the CUDA affinity_matrix kernels take N <= ",
              cuda::kAffinityMaxRows, " rows, got ", y_t.size(0));
}

void check_queue_limits(const at::Tensor& q, const at::Tensor& neg, const char* op) {
  TORCH_CHECK(q.size(1) <= cuda::kAgclMaxDim, "the CUDA ", op, " kernel takes C <= ", cuda::kAgclMaxDim,
              " channels, got ", q.size(1));
  TORCH_CHECK(neg.size(0) <= cuda::kAgclMaxQueue, "the CUDA ", op, " kernel takes Q <= ", cuda::kAgclMaxQueue,
              " negatives, got ", neg.size(0));
  TORCH_CHECK(q.size(0) <= std::numeric_limits<int32_t>::max(), "the CUDA ", op, " kernel takes B < 2^31 queries");
}

at::Tensor affinity_matrix_cuda(const at::Tensor& y_t_in, const at::Tensor& y_s_in, double k, bool l1) {
  check_affinity_inputs(y_t_in, y_s_in, at::kCUDA);
  check_affinity_limits(y_t_in);
  const c10::cuda::CUDAGuard guard(y_t_in.device());
  const at::Tensor y_t = y_t_in.contiguous(), y_s = y_s_in.contiguous();
  at::Tensor out = at::empty({y_t.size(0), y_s.size(0)}, y_t.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(y_t.scalar_type(), "affinity_matrix_cuda", [&] {
    cuda::affinity_fwd_launch<scalar_t>(y_t.data_ptr<scalar_t>(), y_s.data_ptr<scalar_t>(), y_t.size(0),
                                        y_s.size(0), y_t.size(1), static_cast<scalar_t>(k), l1,
                                        out.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor affinity_matrix_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& y_t_in, const at::Tensor& y_s_in,
                                    double k, bool l1) {
  check_affinity_bwd_inputs(grad_in, y_t_in, y_s_in, at::kCUDA);
  check_affinity_limits(y_t_in);
  const c10::cuda::CUDAGuard guard(y_t_in.device());
  const at::Tensor y_t = y_t_in.contiguous(), y_s = y_s_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor grad_s = at::zeros_like(y_s);
  if (grad_s.numel() == 0 || y_t.size(0) == 0) return grad_s;
  AT_DISPATCH_FLOATING_TYPES(y_t.scalar_type(), "affinity_matrix_bwd_cuda", [&] {
    cuda::affinity_bwd_launch<scalar_t>(grad.data_ptr<scalar_t>(), y_t.data_ptr<scalar_t>(),
                                        y_s.data_ptr<scalar_t>(), y_t.size(0), y_s.size(0), y_t.size(1),
                                        static_cast<scalar_t>(k), l1, grad_s.data_ptr<scalar_t>(),
                                        c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_negatives_cuda(const at::Tensor& q_in, const at::Tensor& neg_in,
                                                                   const at::Tensor& scale_in,
                                                                   const at::Tensor& q_cls_in,
                                                                   const at::Tensor& neg_cls_in, double inv_tau,
                                                                   int64_t n_hard, bool use_classes) {
  check_hard_inputs(q_in, neg_in, scale_in, q_cls_in, neg_cls_in, at::kCUDA, "hard_negatives");
  TORCH_CHECK(n_hard >= 0, "hard_negatives: n_hard must be >= 0, got ", n_hard);
  check_queue_limits(q_in, neg_in, "hard_negatives");
  const int64_t B = q_in.size(0), Q = neg_in.size(0), C = q_in.size(1);
  const int64_t H = std::min(n_hard, Q);
  TORCH_CHECK(H <= cuda::kAgclMaxHard, "the CUDA hard_negatives kernel takes min(n_hard, Q) <= ",
              cuda::kAgclMaxHard, ", got ", H);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), neg = neg_in.contiguous(), scale = scale_in.contiguous();
  const at::Tensor q_cls = q_cls_in.contiguous(), neg_cls = neg_cls_in.contiguous();
  at::Tensor lse = at::empty({B}, q.options());
  at::Tensor idx = at::empty({B, H}, q_cls.options());
  at::Tensor count = at::empty({B}, q_cls.options());
  if (B == 0) return {lse, idx, count};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hard_negatives_cuda", [&] {
    cuda::hard_negatives_launch<scalar_t>(q.data_ptr<scalar_t>(), neg.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                                          q_cls.data_ptr<int64_t>(), neg_cls.data_ptr<int64_t>(), B, Q, C, H,
                                          static_cast<scalar_t>(inv_tau), use_classes, lse.data_ptr<scalar_t>(),
                                          idx.data_ptr<int64_t>(), count.data_ptr<int64_t>(),
                                          c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {lse, idx, count};
}

at::Tensor queue_lse_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& neg_in,
                              const at::Tensor& scale_in, const at::Tensor& q_cls_in, const at::Tensor& neg_cls_in, const at::Tensor& lse_in,
                              double inv_tau, bool use_classes) {
  check_queue_lse_bwd_inputs(grad_in, q_in, neg_in, scale_in, q_cls_in, neg_cls_in, lse_in, at::kCUDA);
  check_queue_limits(q_in, neg_in, "queue_lse_bwd");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), neg = neg_in.contiguous(), grad = grad_in.contiguous();
  const at::Tensor q_cls = q_cls_in.contiguous(), neg_cls = neg_cls_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  at::Tensor grad_q = at::empty_like(q);  // the kernel writes every element
  if (grad_q.numel() == 0) return grad_q;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "queue_lse_bwd_cuda", [&] {
    cuda::queue_lse_bwd_launch<scalar_t>(grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), neg.data_ptr<scalar_t>(),
                                         scale.data_ptr<scalar_t>(), q_cls.data_ptr<int64_t>(), neg_cls.data_ptr<int64_t>(),
                                         lse.data_ptr<scalar_t>(), q.size(0), neg.size(0), q.size(1),
                                         static_cast<scalar_t>(inv_tau), use_classes, grad_q.data_ptr<scalar_t>(),
                                         c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_q;
}

at::Tensor mixed_logits_cuda(const at::Tensor& q_in, const at::Tensor& neg_in, const at::Tensor& scale_in,
                             const at::Tensor& alpha_in,
                             const at::Tensor& hard_idx_in, const at::Tensor& hard_count_in,
                             const at::Tensor& pairs_in, double inv_tau) {
  check_mixed_inputs(q_in, neg_in, scale_in, alpha_in, hard_idx_in, hard_count_in, pairs_in, at::kCUDA);
  check_queue_limits(q_in, neg_in, "mixed_logits");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), neg = neg_in.contiguous(), alpha = alpha_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor hard_idx = hard_idx_in.contiguous(), hard_count = hard_count_in.contiguous();
  const at::Tensor pairs = pairs_in.contiguous();
  at::Tensor out = at::empty({pairs.size(0), pairs.size(1)}, q.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mixed_logits_cuda", [&] {
    cuda::mixed_logits_launch<scalar_t>(q.data_ptr<scalar_t>(), neg.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                                        alpha.data_ptr<scalar_t>(),
                                        hard_idx.data_ptr<int64_t>(), hard_count.data_ptr<int64_t>(),
                                        pairs.data_ptr<int64_t>(), q.size(0), neg.size(0), q.size(1),
                                        hard_idx.size(1), pairs.size(1), static_cast<scalar_t>(inv_tau),
                                        out.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor mixed_logits_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& neg_in,
                                 const at::Tensor& scale_in, const at::Tensor& alpha_in, const at::Tensor& hard_idx_in,
                                 const at::Tensor& hard_count_in, const at::Tensor& pairs_in, double inv_tau) {
  check_mixed_bwd_inputs(grad_in, q_in, neg_in, scale_in, alpha_in, hard_idx_in, hard_count_in, pairs_in, at::kCUDA);
  check_queue_limits(q_in, neg_in, "mixed_logits_bwd");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), neg = neg_in.contiguous(), alpha = alpha_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor hard_idx = hard_idx_in.contiguous(), hard_count = hard_count_in.contiguous();
  const at::Tensor pairs = pairs_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor grad_q = at::empty_like(q);  // the kernel writes every element
  if (grad_q.numel() == 0) return grad_q;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mixed_logits_bwd_cuda", [&] {
    cuda::mixed_logits_bwd_launch<scalar_t>(
        grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), neg.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
        alpha.data_ptr<scalar_t>(),
        hard_idx.data_ptr<int64_t>(), hard_count.data_ptr<int64_t>(), pairs.data_ptr<int64_t>(), q.size(0),
        neg.size(0), q.size(1), hard_idx.size(1), pairs.size(1), static_cast<scalar_t>(inv_tau),
        grad_q.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_q;
}

}  // namespace
}  // namespace affseg

TORCH_LIBRARY_IMPL(affseg, CUDA, m) {
  m.impl("affinity_matrix", &affseg::affinity_matrix_cuda);
  m.impl("affinity_matrix_bwd", &affseg::affinity_matrix_bwd_cuda);
  m.impl("hard_negatives", &affseg::hard_negatives_cuda);
  m.impl("queue_lse_bwd", &affseg::queue_lse_bwd_cuda);
  m.impl("mixed_logits", &affseg::mixed_logits_cuda);
  m.impl("mixed_logits_bwd", &affseg::mixed_logits_bwd_cuda);
}
