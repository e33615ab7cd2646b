// Argument checks of the C++ ops, shared by the CPU and the CUDA torch glue so both devices reject
// the same malformed direct `torch.ops.affseg.*` calls with the same messages. (The public Python
// API validates user input with ValueError/TypeError before it gets here.)
#pragma once
#include <ATen/ATen.h>

#include "affseg/checks.h"

namespace affseg {

// The similarity ops' `input_precision` option (SPEC §8) as csrc/cuda/dot_precision.h codes: "ieee" 0,
// "tf32" 1, "bf16" 2. The CPU kernels check it and compute in IEEE arithmetic whatever it says.
inline int dot_precision_code(c10::string_view precision) {
  if (precision == "ieee") return 0;
  if (precision == "tf32") return 1;
  if (precision == "bf16") return 2;
  TORCH_CHECK(false, "input_precision must be 'ieee', 'tf32' or 'bf16', got '", std::string(precision), "'");
}

inline void check_same_device(at::DeviceType device, std::initializer_list<const at::Tensor*> tensors,
                              const char* op) {
  const at::Tensor& first = **tensors.begin();
  for (const at::Tensor* t : tensors) {
    AFFSEG_CHECK_DEVICE(*t, device);
    TORCH_CHECK(t->device() == first.device(), op, ": every input must be on one device");
  }
}

// pdcr_fwd / pdcr_bwd: fa (B,N,C), phia (B,W,N,K), fb (B,M,C), phib (B,W,M,K), valid_a (B,N),
// valid_b (B,M); floating tensors of one dtype, contiguous.
inline void check_pdcr_inputs(const at::Tensor& fa, const at::Tensor& pa, const at::Tensor& fb, const at::Tensor& pb,
                              const at::Tensor& va, const at::Tensor& vb, at::DeviceType device) {
  AFFSEG_CHECK_FLOAT(fa);
  AFFSEG_CHECK_DIM(fa, 3);
  AFFSEG_CHECK_DIM(fb, 3);
  AFFSEG_CHECK_DIM(pa, 4);
  AFFSEG_CHECK_DIM(pb, 4);
  AFFSEG_CHECK_DIM(va, 2);
  AFFSEG_CHECK_DIM(vb, 2);
  AFFSEG_CHECK_SAME_DTYPE(fa, fb);
  AFFSEG_CHECK_SAME_DTYPE(fa, pa);
  AFFSEG_CHECK_SAME_DTYPE(fa, pb);
  TORCH_CHECK(va.scalar_type() == at::kBool && vb.scalar_type() == at::kBool, "valid_a and valid_b must be bool");
  check_same_device(device, {&fa, &pa, &fb, &pb, &va, &vb}, "pdcr");
  for (const at::Tensor* t : {&fa, &pa, &fb, &pb, &va, &vb}) {
    TORCH_CHECK(t->is_contiguous(), "pdcr: every input must be contiguous");
  }
  const int64_t B = fa.size(0), N = fa.size(1), C = fa.size(2), M = fb.size(1);
  TORCH_CHECK(fb.size(0) == B && fb.size(2) == C, "fb must be (B, M, C) with fa's B and C");
  TORCH_CHECK(pa.size(0) == B && pa.size(2) == N, "phia must be (B, W, N, K)");
  TORCH_CHECK(pb.size(0) == B && pb.size(1) == pa.size(1) && pb.size(2) == M && pb.size(3) == pa.size(3),
              "phib must be (B, W, M, K) with phia's W and K");
  TORCH_CHECK(va.size(0) == B && va.size(1) == N, "valid_a must be (B, N)");
  TORCH_CHECK(vb.size(0) == B && vb.size(1) == M, "valid_b must be (B, M)");
  TORCH_CHECK(pa.size(1) >= 1, "pdcr needs at least one window");
}

// The backward's extra inputs, against the forward's fa (B,N,C) and phia (B,W,N,K): grad_row (B,N)
// and row_lse (B,N,W), fa's dtype, on `device`.
inline void check_pdcr_bwd_inputs(const at::Tensor& grad_row, const at::Tensor& row_lse, const at::Tensor& fa,
                                  const at::Tensor& pa, at::DeviceType device) {
  AFFSEG_CHECK_SAME_DTYPE(fa, grad_row);
  AFFSEG_CHECK_SAME_DTYPE(fa, row_lse);
  AFFSEG_CHECK_DEVICE(grad_row, device);
  AFFSEG_CHECK_DEVICE(row_lse, device);
  TORCH_CHECK(grad_row.device() == fa.device() && row_lse.device() == fa.device(),
              "pdcr: every input must be on one device");
  TORCH_CHECK(grad_row.dim() == 2 && grad_row.size(0) == fa.size(0) && grad_row.size(1) == fa.size(1),
              "grad_row must be (B, N), got ", grad_row.sizes());
  TORCH_CHECK(row_lse.dim() == 3 && row_lse.size(0) == fa.size(0) && row_lse.size(1) == fa.size(1) &&
                  row_lse.size(2) == pa.size(1),
              "row_lse must be (B, N, W), got ", row_lse.sizes());
}

// cos_lse_fwd / cos_lse_bwd: f (B,N,C) floating, valid (B,N) bool.
inline void check_cos_lse_inputs(const at::Tensor& f, const at::Tensor& valid, at::DeviceType device) {
  AFFSEG_CHECK_FLOAT(f);
  AFFSEG_CHECK_DIM(f, 3);
  TORCH_CHECK(valid.scalar_type() == at::kBool, "valid must be bool, got ", valid.scalar_type());
  TORCH_CHECK(valid.dim() == 2 && valid.size(0) == f.size(0) && valid.size(1) == f.size(1),
              "valid must be (B, N) matching f ", f.sizes(), ", got ", valid.sizes());
  check_same_device(device, {&f, &valid}, "cos_lse");
}

inline void check_cos_lse_bwd_inputs(const at::Tensor& grad, const at::Tensor& f, const at::Tensor& valid,
                                     const at::Tensor& lse, at::DeviceType device) {
  check_cos_lse_inputs(f, valid, device);
  AFFSEG_CHECK_SAME_DTYPE(grad, f);
  AFFSEG_CHECK_SAME_DTYPE(lse, f);
  TORCH_CHECK(grad.sizes() == valid.sizes() && lse.sizes() == valid.sizes(), "grad_lse and lse must be (B, N) like valid");
  check_same_device(device, {&f, &grad, &lse}, "cos_lse");
}

// affinity_matrix / affinity_matrix_bwd: y_t (N, D), y_s (M, D) of one floating dtype; grad_a (N, M).
inline void check_affinity_inputs(const at::Tensor& y_t, const at::Tensor& y_s, at::DeviceType device) {
  AFFSEG_CHECK_FLOAT(y_t);
  AFFSEG_CHECK_SAME_DTYPE(y_t, y_s);
  AFFSEG_CHECK_DIM(y_t, 2);
  AFFSEG_CHECK_DIM(y_s, 2);
  TORCH_CHECK(y_t.size(1) == y_s.size(1), "affinity_matrix: y_t (N, D) and y_s (M, D) must share D, got ",
              y_t.sizes(), " and ", y_s.sizes());
  check_same_device(device, {&y_t, &y_s}, "affinity_matrix");
}

inline void check_affinity_bwd_inputs(const at::Tensor& grad_a, const at::Tensor& y_t, const at::Tensor& y_s,
                                      at::DeviceType device) {
  check_affinity_inputs(y_t, y_s, device);
  AFFSEG_CHECK_SAME_DTYPE(grad_a, y_t);
  TORCH_CHECK(grad_a.dim() == 2 && grad_a.size(0) == y_t.size(0) && grad_a.size(1) == y_s.size(0),
              "affinity_matrix_bwd: grad_a must be (N, M) = (", y_t.size(0), ", ", y_s.size(0), "), got ",
              grad_a.sizes());
  check_same_device(device, {&grad_a, &y_t}, "affinity_matrix_bwd");
}

// hard_negatives / queue_lse_bwd / mixed_logits: q (B, C), neg (Q, C) and neg_scale (Q,) of one
// floating dtype.
inline void check_query_queue(const at::Tensor& q, const at::Tensor& neg, const at::Tensor& neg_scale,
                              at::DeviceType device, const char* op) {
  AFFSEG_CHECK_FLOAT(q);
  AFFSEG_CHECK_SAME_DTYPE(q, neg);
  AFFSEG_CHECK_SAME_DTYPE(q, neg_scale);
  AFFSEG_CHECK_DIM(q, 2);
  AFFSEG_CHECK_DIM(neg, 2);
  TORCH_CHECK(q.size(1) == neg.size(1), op, ": q (B, C) and neg (Q, C) must share C, got ", q.sizes(), " and ",
              neg.sizes());
  TORCH_CHECK(neg_scale.dim() == 1 && neg_scale.size(0) == neg.size(0), op, ": neg_scale must be (Q,) = (",
              neg.size(0), ",), got ", neg_scale.sizes());
  check_same_device(device, {&q, &neg, &neg_scale}, op);
}

// q_cls (B,) and neg_cls (Q,) int64, always given (read only with use_classes).
inline void check_hard_inputs(const at::Tensor& q, const at::Tensor& neg, const at::Tensor& neg_scale,
                              const at::Tensor& q_cls, const at::Tensor& neg_cls, at::DeviceType device,
                              const char* op) {
  check_query_queue(q, neg, neg_scale, device, op);
  TORCH_CHECK(q_cls.scalar_type() == at::kLong && neg_cls.scalar_type() == at::kLong, op,
              ": q_cls and neg_cls must be int64");
  TORCH_CHECK(q_cls.dim() == 1 && q_cls.size(0) == q.size(0), op, ": q_cls must be (B,) = (", q.size(0), ",), got ",
              q_cls.sizes());
  TORCH_CHECK(neg_cls.dim() == 1 && neg_cls.size(0) == neg.size(0), op, ": neg_cls must be (Q,) = (", neg.size(0),
              ",), got ", neg_cls.sizes());
  check_same_device(device, {&q, &neg, &q_cls, &neg_cls}, op);
}

inline void check_queue_lse_bwd_inputs(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& neg,
                                       const at::Tensor& neg_scale, const at::Tensor& q_cls,
                                       const at::Tensor& neg_cls, const at::Tensor& lse, at::DeviceType device) {
  check_hard_inputs(q, neg, neg_scale, q_cls, neg_cls, device, "queue_lse_bwd");
  AFFSEG_CHECK_SAME_DTYPE(grad, q);
  AFFSEG_CHECK_SAME_DTYPE(lse, q);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == q.size(0) && lse.dim() == 1 && lse.size(0) == q.size(0),
              "queue_lse_bwd: grad_lse and queue_lse must be (B,)");
  check_same_device(device, {&q, &grad, &lse}, "queue_lse_bwd");
}

// mixed_logits / mixed_logits_bwd: alpha (Q,) of q's dtype; hard_idx (B, H), hard_count (B,), pairs
// (B, P, 2) int64; grad (B, P).
inline void check_mixed_inputs(const at::Tensor& q, const at::Tensor& neg, const at::Tensor& neg_scale,
                               const at::Tensor& alpha, const at::Tensor& hard_idx, const at::Tensor& hard_count,
                               const at::Tensor& pairs, at::DeviceType device) {
  check_query_queue(q, neg, neg_scale, device, "mixed_logits");
  AFFSEG_CHECK_SAME_DTYPE(alpha, q);
  TORCH_CHECK(alpha.dim() == 1 && alpha.size(0) == neg.size(0), "mixed_logits: alpha must be (Q,) = (",
              neg.size(0), ",), got ", alpha.sizes());
  TORCH_CHECK(hard_idx.scalar_type() == at::kLong && hard_count.scalar_type() == at::kLong &&
                  pairs.scalar_type() == at::kLong,
              "mixed_logits: hard_idx, hard_count and pairs must be int64");
  const int64_t B = q.size(0);
  TORCH_CHECK(hard_idx.dim() == 2 && hard_idx.size(0) == B, "mixed_logits: hard_idx must be (B, H), got ",
              hard_idx.sizes());
  TORCH_CHECK(hard_count.dim() == 1 && hard_count.size(0) == B, "mixed_logits: hard_count must be (B,), got ",
              hard_count.sizes());
  TORCH_CHECK(pairs.dim() == 3 && pairs.size(0) == B && pairs.size(2) == 2,
              "mixed_logits: pairs must be (B, P, 2), got ", pairs.sizes());
  check_same_device(device, {&q, &neg, &alpha, &hard_idx, &hard_count, &pairs}, "mixed_logits");
}

inline void check_mixed_bwd_inputs(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& neg,
                                   const at::Tensor& neg_scale, const at::Tensor& alpha, const at::Tensor& hard_idx,
                                   const at::Tensor& hard_count, const at::Tensor& pairs, at::DeviceType device) {
  check_mixed_inputs(q, neg, neg_scale, alpha, hard_idx, hard_count, pairs, device);
  AFFSEG_CHECK_SAME_DTYPE(grad, q);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == pairs.size(0) && grad.size(1) == pairs.size(1),
              "mixed_logits_bwd: grad_logits must be (B, P), got ", grad.sizes());
  check_same_device(device, {&q, &grad}, "mixed_logits_bwd");
}

}  // namespace affseg
